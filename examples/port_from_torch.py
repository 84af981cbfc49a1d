"""Port a PyTorch CNN to nnjax and back, on the embedded 8x8 digits (needs torch: pip install torch).

    python examples/port_from_torch.py                       # a few epochs in torch, a few in nnjax
    python examples/port_from_torch.py --torch-epochs 1 --nnjax-epochs 1

1. A small PyTorch CNN (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear) trains a little in torch.
2. Its ``state_dict`` goes into the equivalent nnjax model with ``nnjax.interop.from_torch_state_dict``;
   the two predict the same logits (the max abs difference is printed).
3. The nnjax model fine-tunes with ``nnjax.fit`` (BatchNorm's running statistics as torch would keep them).
4. ``to_torch_state_dict`` exports it back; torch loads it with ``strict=True`` and predicts nnjax's logits.

The nnjax model is the torch model written channels-last: images are ``(n, 8, 8, 1)`` (torch: ``(n, 1, 8,
8)``), ``TorchBatchNorm`` keeps PyTorch's momentum and unbiased running variance, and ``TorchFlatten``
flattens feature maps in torch's ``(C, H, W)`` order, which the imported ``nn.Linear`` weights expect. The
code is ``port_and_fine_tune(config) -> metrics``, importable from tests.
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
from nnjax import interop

DEFAULT_CONFIG: dict[str, Any] = {
    "torch_epochs": 3,
    "nnjax_epochs": 3,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "seed": 0,
    "train_limit": None,  # keep only the first N training images (quick runs and tests)
    "progress": True,
}


def torch_model():
    """The PyTorch CNN: (n, 1, 8, 8) -> 10 logits."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (8, 8) -> (4, 4)
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (4, 4) -> (2, 2)
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )  # fmt: skip


def nnjax_model() -> nnjax.Layer:
    """The same network in nnjax, layer for layer (so the units pair with the torch modules in order)."""
    same = ((1, 1), (1, 1))  # torch's padding=1
    return nnjax.serial(
        nnjax.Conv(16, (3, 3), padding=same), interop.TorchBatchNorm(), nnjax.Relu(), nnjax.MaxPool(2),
        nnjax.Conv(32, (3, 3), padding=same), interop.TorchBatchNorm(), nnjax.Relu(), nnjax.MaxPool(2),
        interop.TorchFlatten(), nnjax.Dense(10),
    )  # fmt: skip


def load_data(config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: channels-last float32 images ``(n, 8, 8, 1)`` in [0, 1]."""
    images, labels = nnjax.data.load_digits()
    x = images.reshape(-1, 8, 8, 1).astype(np.float32) / 16.0
    x_train, y_train, x_test, y_test = nnjax.data.train_test_split(x, labels, test_fraction=0.2, seed=0, stratify=True)
    if config["train_limit"] is not None:
        x_train, y_train = x_train[: config["train_limit"]], y_train[: config["train_limit"]]
    return x_train, np.asarray(y_train, np.int32), x_test, np.asarray(y_test, np.int32)


def torch_logits(module, x: np.ndarray) -> np.ndarray:
    """Evaluation-mode logits of the torch model for channels-last images."""
    import torch

    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def train_torch(module, x: np.ndarray, y: np.ndarray, config: Mapping[str, Any]) -> None:
    """A few epochs of Adam in torch (channels-first batches)."""
    import torch

    torch.manual_seed(config["seed"])
    optimizer = torch.optim.Adam(module.parameters(), lr=config["learning_rate"])
    images, labels = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y).long()
    module.train()
    for _ in range(config["torch_epochs"]):
        for batch in torch.randperm(len(images)).split(config["batch_size"]):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()


def port_and_fine_tune(config: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Trains in torch, imports into nnjax, fine-tunes there, exports back to torch; returns the metrics.

    Args:
      config: overrides of ``DEFAULT_CONFIG`` (unknown keys are an error).

    Returns:
      ``{"torch_accuracy", "import_max_abs_diff", "nnjax_accuracy", "export_max_abs_diff", "seconds"}``:
      test accuracies before and after fine-tuning, and the largest logit differences between torch and
      nnjax after the import and after the export.
    """
    import torch

    unknown = set(config or {}) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"port_and_fine_tune: unknown config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}.")
    config = {**DEFAULT_CONFIG, **(config or {})}
    say = print if config["progress"] else (lambda *args, **kwargs: None)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_data(config)

    torch.manual_seed(config["seed"])
    module = torch_model()
    train_torch(module, x_train, y_train, config)
    reference = torch_logits(module, x_test)
    torch_accuracy = float((reference.argmax(-1) == y_test).mean())
    say(f"torch: {config['torch_epochs']} epochs, test accuracy {100 * torch_accuracy:.2f}%")

    model = nnjax_model()
    params, state = interop.from_torch_state_dict(model, module.state_dict(), input_shape=x_train.shape[1:])
    optimizer = optax.adam(config["learning_rate"])
    train_state = nnjax.init_train_state(model, optimizer, jax.random.key(config["seed"]), x_train.shape[1:])
    train_state = train_state.replace(params=params, state=state, opt_state=optimizer.init(params))
    imported = np.asarray(nnjax.predict(model, train_state, x_test))
    import_diff = float(np.abs(imported - reference).max())
    say(f"imported into nnjax: max |logits_nnjax - logits_torch| = {import_diff:.2e}")

    loss, metrics = nnjax.losses.softmax_cross_entropy, {"accuracy": nnjax.metrics.accuracy}
    train_state, _ = nnjax.fit(
        model, loss, optimizer, x_train, y_train, epochs=config["nnjax_epochs"], batch_size=config["batch_size"],
        train_state=train_state, metrics=metrics, progress=config["progress"],
    )  # fmt: skip
    tuned = np.asarray(nnjax.predict(model, train_state, x_test))
    nnjax_accuracy = float((tuned.argmax(-1) == y_test).mean())
    say(f"nnjax: fine-tuned {config['nnjax_epochs']} epochs, test accuracy {100 * nnjax_accuracy:.2f}%")

    exported = interop.to_torch_state_dict(model, train_state.params, train_state.state, template=module.state_dict())
    ported_back = torch_model()
    ported_back.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    export_diff = float(np.abs(torch_logits(ported_back, x_test) - tuned).max())
    say(f"exported to torch: max |logits_torch - logits_nnjax| = {export_diff:.2e}")
    return {
        "torch_accuracy": torch_accuracy,
        "import_max_abs_diff": import_diff,
        "nnjax_accuracy": float(nnjax_accuracy),
        "export_max_abs_diff": export_diff,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    nnjax.config.compilation_cache()  # a rerun loads its compiled programs instead of compiling them
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-epochs", type=int, default=DEFAULT_CONFIG["torch_epochs"])
    parser.add_argument("--nnjax-epochs", type=int, default=DEFAULT_CONFIG["nnjax_epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULT_CONFIG["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_CONFIG["learning_rate"])
    parser.add_argument("--train-limit", type=int, default=None, help="keep only the first N training images")
    parser.add_argument("--seed", type=int, default=DEFAULT_CONFIG["seed"])
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    config = {key: value for key, value in vars(args).items() if key != "quiet"}
    return port_and_fine_tune({**config, "progress": not args.quiet})


if __name__ == "__main__":
    main()
