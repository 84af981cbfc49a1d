"""The main job: an MLP on the embedded UCI 8x8 handwritten digits (1,797 images, no download).

Pixels (0..16) are scaled to [0, 1] and flattened to 64 inputs; a stratified 80/20 split holds out
360 test images. The MLP (64 -> 128 -> 128 -> 10, ReLU, softmax cross-entropy) is trained with any
Optax optimizer; ``--batch-size`` picks the flavour of gradient descent: the whole training set
(batch), 1 (stochastic) or anything between (mini-batch).

Run:   python examples/digits_mlp.py [--optimizer sgd|momentum|adagrad|rmsprop|adam] [--batch-size N]
Speed: python examples/digits_mlp.py --benchmark   (nnjax's step vs a hand-written JAX step, one run)
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax
from nnjax import losses, metrics

DEFAULTS = {"optimizer": "adam", "learning_rate": None, "batch_size": 32, "epochs": 30, "hidden": 128, "seed": 0,
            "progress": True}
LEARNING_RATES = {"sgd": 0.1, "momentum": 0.05, "adagrad": 0.05, "rmsprop": 1e-3, "adam": 1e-3}


def make_optimizer(name: str, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The source texts' optimizers, all from Optax."""
    lr = learning_rate or LEARNING_RATES[name]
    factories = {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9),
        "adagrad": lambda: optax.adagrad(lr),
        "rmsprop": lambda: optax.rmsprop(lr),
        "adam": lambda: optax.adam(lr),
    }
    if name not in factories:
        raise ValueError(f"digits_mlp: argument `optimizer` expected one of {sorted(factories)}, given {name!r}.")
    return factories[name]()


def make_model(hidden: int = 128) -> nnjax.Layer:
    return nnjax.serial(nnjax.Dense(hidden), nnjax.Relu(), nnjax.Dense(hidden), nnjax.Relu(), nnjax.Dense(10))


def load_data(seed: int = 0):
    """(x_train, y_train, x_test, y_test): float32 pixels in [0, 1], shape (n, 64); int32 labels."""
    images, labels = nnjax.data.load_digits()
    x = images.reshape(len(images), 64).astype(np.float32) / 16.0
    return nnjax.data.train_test_split(x, labels, test_fraction=0.2, seed=seed, stratify=True)


def train_and_evaluate(config: dict | None = None) -> dict[str, float]:
    """Trains the MLP and returns final train/test loss and accuracy and the training time."""
    config = {**DEFAULTS, **(config or {})}
    x_train, y_train, x_test, y_test = load_data(config["seed"])
    model = make_model(config["hidden"])
    start = time.perf_counter()
    result = nnjax.fit(
        model, losses.softmax_cross_entropy, make_optimizer(config["optimizer"], config["learning_rate"]),
        x_train, y_train, epochs=config["epochs"], batch_size=config["batch_size"], seed=config["seed"],
        metrics={"accuracy": metrics.accuracy}, validation_data=(x_test, y_test), progress=config["progress"],
    )
    seconds = time.perf_counter() - start
    history = result.history
    return {
        "train_loss": history["loss"][-1], "train_accuracy": history["accuracy"][-1],
        "test_loss": history["val_loss"][-1], "test_accuracy": history["val_accuracy"][-1], "seconds": seconds,
    }


def benchmark_step(batch_size: int = 32, hidden: int = 128, repeats: int = 7, steps: int = 500) -> dict[str, float]:
    """Median microseconds per jitted train step: nnjax's ``make_train_step`` vs hand-written JAX.

    Same model, batch, Adam, donation; interleaved repeats of ``steps`` steps each, medians.
    """
    x_train, y_train, _, _ = load_data()
    x, y = jnp.asarray(x_train[:batch_size]), jnp.asarray(y_train[:batch_size])
    model, optimizer = make_model(hidden), optax.adam(1e-3)
    nnjax_step = nnjax.make_train_step(model, losses.softmax_cross_entropy, optimizer)
    nnjax_state = nnjax.init_train_state(model, optimizer, jax.random.key(0), (64,))

    def raw_loss(params, x, y):
        (w1, b1), (w2, b2), (w3, b3) = params
        h = jax.nn.relu(x @ w1 + b1)
        h = jax.nn.relu(h @ w2 + b2)
        return optax.losses.softmax_cross_entropy_with_integer_labels(h @ w3 + b3, y).mean()

    @jax.jit
    def raw_step_impl(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(raw_loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    raw_step = jax.jit(raw_step_impl, donate_argnums=(0, 1))
    keys = jax.random.split(jax.random.key(0), 3)
    sizes = [(64, hidden), (hidden, hidden), (hidden, 10)]
    raw_params = [(jax.random.normal(k, s) * 0.1, jnp.zeros(s[1])) for k, s in zip(keys, sizes)]
    raw_state = (raw_params, optimizer.init(raw_params))

    def run_nnjax():
        nonlocal nnjax_state
        for _ in range(steps):
            nnjax_state, m = nnjax_step(nnjax_state, (x, y))
        m["loss"].block_until_ready()

    def run_raw():
        nonlocal raw_state
        params, opt_state = raw_state
        for _ in range(steps):
            params, opt_state, loss = raw_step(params, opt_state, x, y)
        loss.block_until_ready()
        raw_state = (params, opt_state)

    times = {"nnjax": [], "jax": []}
    for fn in (run_nnjax, run_raw):
        fn()  # compile and warm up
    for _ in range(repeats):
        for name, fn in (("nnjax", run_nnjax), ("jax", run_raw)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / steps * 1e6)
    medians = {f"{name}_us_per_step": float(np.median(t)) for name, t in times.items()}
    medians["ratio"] = medians["nnjax_us_per_step"] / medians["jax_us_per_step"]
    return medians


def main() -> None:
    nnjax.config.compilation_cache()  # a rerun loads its compiled programs instead of compiling them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default=DEFAULTS["optimizer"], choices=sorted(LEARNING_RATES))
    parser.add_argument("--learning-rate", type=float, default=None, help="default: per optimizer")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="1: SGD, 1437: batch GD")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--hidden", type=int, default=DEFAULTS["hidden"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--benchmark", action="store_true", help="time nnjax's step against hand-written JAX")
    args = parser.parse_args()
    nnjax.keep_freed_memory()  # a process-wide choice: XLA's temporaries reuse freed memory
    print(f"devices: {jax.devices()}")
    if args.benchmark:
        result = benchmark_step(args.batch_size, args.hidden)
        print(f"train step, batch {args.batch_size}: nnjax {result['nnjax_us_per_step']:.1f} us, hand-written JAX "
              f"{result['jax_us_per_step']:.1f} us, ratio {result['ratio']:.3f}")
        return
    config = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    results = train_and_evaluate({**config, "progress": not args.no_progress})
    print(f"test accuracy {results['test_accuracy']:.4f}  test loss {results['test_loss']:.4f}  "
          f"({results['seconds']:.1f}s, {args.optimizer}, batch size {args.batch_size})")


if __name__ == "__main__":
    main()
