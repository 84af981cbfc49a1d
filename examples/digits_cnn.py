"""A small convolutional network on the embedded 8x8 digits, or a LeNet-style one on MNIST.

    python examples/digits_cnn.py                                   # embedded digits, no download
    python examples/digits_cnn.py --dataset mnist --data-dir ~/data  # MNIST (downloads if missing)

The training code is ``train_and_evaluate(config) -> metrics``, importable from tests and notebooks;
``config`` is a dict of overrides of ``DEFAULT_CONFIG``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

import nnjax

DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": "digits",  # "digits" (embedded 8x8 images) or "mnist"
    "data_dir": None,  # MNIST: where the files are (or go); None: nnjax's default
    "epochs": None,  # None: 25 for digits, 3 for MNIST
    "batch_size": None,  # None: 32 for digits, 128 for MNIST
    "learning_rate": 2e-3,
    "seed": 0,
    "train_limit": None,  # keep only the first N training examples (quick runs and tests)
    "progress": True,  # progress bar and one line per epoch
}


def digits_model() -> nnjax.Layer:
    """8x8x1 -> 10 logits: three 3x3 convolutions with batch normalization and max pooling, then two dense layers."""
    return nnjax.serial(
        nnjax.Conv(32, (3, 3)), nnjax.BatchNorm(momentum=0.9), nnjax.Relu(),
        nnjax.Conv(32, (3, 3)), nnjax.BatchNorm(momentum=0.9), nnjax.Relu(), nnjax.MaxPool(2),  # (8, 8) -> (4, 4)
        nnjax.Conv(64, (3, 3)), nnjax.BatchNorm(momentum=0.9), nnjax.Relu(), nnjax.MaxPool(2),  # (4, 4) -> (2, 2)
        nnjax.Flatten(),
        nnjax.Dense(128), nnjax.Relu(), nnjax.Dropout(0.3),
        nnjax.Dense(10),
    )  # fmt: skip


def mnist_model() -> nnjax.Layer:
    """28x28x1 -> 10 logits: LeNet's layout (5x5 convolutions, 2x2 pooling) with wider layers."""
    return nnjax.serial(
        nnjax.Conv(32, (5, 5)), nnjax.Relu(), nnjax.MaxPool(2),  # (28, 28) -> (14, 14)
        nnjax.Conv(64, (5, 5)), nnjax.Relu(), nnjax.MaxPool(2),  # (14, 14) -> (7, 7)
        nnjax.Flatten(),
        nnjax.Dense(256), nnjax.Relu(), nnjax.Dropout(0.3),
        nnjax.Dense(10),
    )  # fmt: skip


def load_data(config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: float32 images ``(n, h, w, 1)`` in [0, 1], int32 labels."""
    if config["dataset"] == "digits":
        images, labels = nnjax.data.load_digits()
        x = images.reshape(-1, 8, 8, 1).astype(np.float32) / 16.0  # pixels are 0..16
        x_train, y_train, x_test, y_test = nnjax.data.train_test_split(
            x, labels, test_fraction=0.2, seed=0, stratify=True
        )
    elif config["dataset"] == "mnist":
        from nnjax.data import load_mnist  # imported here: only this branch needs it

        x_train, y_train, x_test, y_test = load_mnist(config["data_dir"])
        x_train = x_train.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
        x_test = x_test.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    else:
        raise ValueError(
            f"train_and_evaluate: config `dataset` expected 'digits' or 'mnist', given {config['dataset']!r}."
        )
    if config["train_limit"] is not None:
        x_train, y_train = x_train[: config["train_limit"]], y_train[: config["train_limit"]]
    return x_train, np.asarray(y_train, np.int32), x_test, np.asarray(y_test, np.int32)


def train_and_evaluate(config: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Trains the dataset's CNN with Adam (cosine-decayed learning rate) and returns the final metrics.

    Args:
      config: overrides of ``DEFAULT_CONFIG`` (unknown keys are an error).

    Returns:
      ``{"test_accuracy", "test_loss", "train_loss", "train_accuracy", "epochs", "train_seconds"}``;
      the train metrics are the last epoch's averages over its mini-batches (in training mode).
    """
    unknown = set(config or {}) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"train_and_evaluate: unknown config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}.")
    config = {**DEFAULT_CONFIG, **(config or {})}
    mnist = config["dataset"] == "mnist"
    epochs = config["epochs"] if config["epochs"] is not None else (3 if mnist else 25)
    batch_size = config["batch_size"] if config["batch_size"] is not None else (128 if mnist else 32)
    x_train, y_train, x_test, y_test = load_data(config)
    model = mnist_model() if mnist else digits_model()
    loss, metrics = nnjax.losses.softmax_cross_entropy, {"accuracy": nnjax.metrics.accuracy}
    if config["progress"]:
        print(f"{config['dataset']}: {len(x_train)} training and {len(x_test)} test images {x_train.shape[1:]}; "
              f"{jax.default_backend()} backend", flush=True)  # fmt: skip

    steps = epochs * (len(x_train) // min(batch_size, len(x_train)))
    schedule = optax.cosine_decay_schedule(config["learning_rate"], max(steps, 1))  # anneal to 0: a calm last epoch
    start = time.perf_counter()
    train_state, history = nnjax.fit(
        model,
        loss,
        optax.adam(schedule),
        x_train,
        y_train,
        epochs=epochs,
        batch_size=batch_size,
        seed=config["seed"],
        metrics=metrics,
        validation_data=(x_test, y_test),
        progress=config["progress"],
    )
    seconds = time.perf_counter() - start
    test = nnjax.evaluate(model, train_state, x_test, y_test, loss=loss, metrics=metrics)
    result = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_loss": history["loss"][-1] if epochs else float("nan"),
        "train_accuracy": history["accuracy"][-1] if epochs else float("nan"),
        "epochs": epochs,
        "train_seconds": seconds,
    }
    if config["progress"]:
        print(f"test accuracy {100 * result['test_accuracy']:.2f}%  (test loss {result['test_loss']:.4f}; "
              f"{epochs} epochs in {seconds:.1f}s)", flush=True)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    nnjax.config.compilation_cache()  # a rerun loads its compiled programs instead of compiling them
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits", "mnist"], default=DEFAULT_CONFIG["dataset"])
    parser.add_argument("--data-dir", default=DEFAULT_CONFIG["data_dir"], help="MNIST directory (default: nnjax's)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 25 for digits, 3 for MNIST")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 for digits, 128 for MNIST")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_CONFIG["learning_rate"])
    parser.add_argument("--seed", type=int, default=DEFAULT_CONFIG["seed"])
    args = parser.parse_args(argv)
    nnjax.keep_freed_memory()  # a process-wide choice: XLA's temporaries reuse freed memory
    return train_and_evaluate({key: value for key, value in vars(args).items()})


if __name__ == "__main__":
    main()
