"""Learning the learning rate and weight decay of a digits MLP by gradient descent on the validation loss.

``nnjax.training_run`` turns a whole fused training run (``epochs`` epochs of AdamW on the 8x8 digits,
64 -> 64 -> 64 -> 10) into one pure function ``(hyperparameters, key) -> (train_state, history)``.
Its validation loss after the last epoch is differentiated with respect to ``log(learning_rate)`` and
``log(weight_decay)`` (``jax.grad`` through every step: a hypergradient), and an outer Adam walks
them downhill. The baseline is a grid of 8 fixed learning rates (log-spaced, 1e-4 .. 3e-1; the same
weight decay as the start of the search). Equal budget: 8 training runs each, every run ``epochs``
epochs from the same seed (the search: 7 steps, each a run and its backward pass, then the run of the
last setting); the backward passes cost extra time, which the output reports next to the grid's.

The validation set is carved out of the training split; the test split only reports the result.

Run:   python examples/hypergradient.py [--epochs 5] [--meta-steps 7]

Result (CPU, seed 0, the defaults): the grid's best learning rate, 3.05e-2, reaches a validation loss
of 0.0937 (test 0.1804); the search climbs from 0.7201 at learning rate 1e-3 to 0.1462 at learning rate
8.91e-3 and weight decay 8.0e-6 (test 0.1946), 0.0525 above the grid's best. Which of the two ends lower
at this budget depends on the seed: for seeds 1-3 the search ends below the grid's best (0.0872 against
0.1031, 0.1048 against 0.1288, 0.1413 against 0.1507); before the initialization change of 2026-12-06
(``Dense`` weights drawn from the layer's key unsplit) it ended below for seeds 0 and 2, above for 1
and 3, each time within 0.005. The grid's 8 runs took 0.1 s, the search's 0.8 s (its 7 backward
passes), compilation excluded (2 CPU cores).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax

DEFAULTS = {
    "epochs": 5,
    "batch_size": 64,
    "hidden": 64,
    "meta_steps": 7,
    "meta_learning_rate": 0.5,
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "seed": 0,
}
GRID = np.logspace(-4, np.log10(0.3), 8)


def load_data(seed: int = 0):
    """(train, validation, test) pairs: pixels scaled to [0, 1] and flattened to 64, int32 labels."""
    images, labels = nnjax.data.load_digits()
    x = images.reshape(len(images), 64).astype(np.float32) / 16.0
    x_train, y_train, x_test, y_test = nnjax.data.train_test_split(
        x, labels, test_fraction=0.2, seed=seed, stratify=True
    )
    x_train, y_train, x_val, y_val = nnjax.data.train_test_split(
        x_train, y_train, test_fraction=0.25, seed=seed, stratify=True
    )
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def make_model(hidden: int) -> nnjax.Layer:
    return nnjax.serial(nnjax.Dense(hidden), nnjax.Relu(), nnjax.Dense(hidden), nnjax.Relu(), nnjax.Dense(10))


def adamw(h):
    """The inner optimizer from the hyperparameters: AdamW with ``eps_root`` (safe second derivatives)."""
    return optax.adamw(jnp.exp(h["log_learning_rate"]), weight_decay=jnp.exp(h["log_weight_decay"]), eps_root=1e-8)


def setting(learning_rate, weight_decay) -> dict:
    """The searched hyperparameters: float32 logs of the learning rate and weight decay."""
    return {
        "log_learning_rate": jnp.float32(np.log(learning_rate)),
        "log_weight_decay": jnp.float32(np.log(weight_decay)),
    }


def train_and_evaluate(config: dict | None = None) -> dict[str, float]:
    """Runs the grid and the hypergradient search; returns their validation and test losses and times."""
    config = {**DEFAULTS, **(config or {})}
    (x, y), (x_val, y_val), (x_test, y_test) = load_data(config["seed"])
    model = make_model(config["hidden"])
    loss = nnjax.losses.softmax_cross_entropy
    run = nnjax.training_run(
        model,
        loss,
        adamw,
        x,
        y,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        validation_data=(x_val, y_val),
    )
    key = jax.random.key(config["seed"])

    def val_loss(h):
        train_state, history = run(h, key)
        return history["val_loss"][-1], train_state

    def test_loss(train_state):
        return float(nnjax.evaluate(model, train_state, x_test, y_test, loss=loss)["loss"])

    h = setting(config["learning_rate"], config["weight_decay"])
    # compiled before the clocks start: the times below are the runs' own
    forward = jax.jit(val_loss).lower(h).compile()
    value_and_grad = jax.jit(jax.value_and_grad(lambda h: val_loss(h)[0])).lower(h).compile()

    # the grid: 8 runs, one per learning rate
    start = time.perf_counter()
    grid = [forward(setting(lr, config["weight_decay"])) for lr in GRID]
    grid_losses = [float(v) for v, _ in grid]
    grid_seconds = time.perf_counter() - start
    best = int(np.argmin(grid_losses))

    # the hypergradient search: 7 runs with their backward passes, Adam on the log hyperparameters, and
    # the run of the last setting: 8 runs
    meta = optax.adam(config["meta_learning_rate"])
    meta_state = meta.init(h)
    start = time.perf_counter()
    trace = []
    for _ in range(config["meta_steps"]):
        value, grads = value_and_grad(h)
        trace.append((float(value), float(jnp.exp(h["log_learning_rate"])), float(jnp.exp(h["log_weight_decay"]))))
        updates, meta_state = meta.update(grads, meta_state, h)
        h = jax.tree.map(jnp.float32, optax.apply_updates(h, updates))
    # the learned setting's run (every search step's value was before its update: this is the last one's)
    hyper_val, hyper_state = forward(h)
    hyper_seconds = time.perf_counter() - start
    visited = [t[0] for t in trace] + [float(hyper_val)]
    chosen = int(np.argmin(visited))
    if chosen < len(trace):  # keep the best setting visited, as the grid keeps its best (a rerun to report it)
        h = setting(trace[chosen][1], trace[chosen][2])
        hyper_val, hyper_state = forward(h)
    return {
        "grid_best_learning_rate": float(GRID[best]),
        "grid_best_val_loss": grid_losses[best],
        "grid_best_test_loss": test_loss(grid[best][1]),
        "grid_seconds": grid_seconds,
        "hyper_learning_rate": float(jnp.exp(h["log_learning_rate"])),
        "hyper_weight_decay": float(jnp.exp(h["log_weight_decay"])),
        "hyper_val_loss": float(hyper_val),
        "hyper_test_loss": test_loss(hyper_state),
        "hyper_seconds": hyper_seconds,
        "grid_val_losses": grid_losses,
        "trace": trace,
    }


def main() -> None:
    nnjax.config.compilation_cache()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--meta-steps", type=int, default=DEFAULTS["meta_steps"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    args = parser.parse_args()
    r = train_and_evaluate({"epochs": args.epochs, "meta_steps": args.meta_steps, "seed": args.seed})
    print("grid of 8 learning rates (validation loss after the run):")
    for lr, v in zip(GRID, r["grid_val_losses"], strict=True):
        print(f"  lr {lr:.2e}: {v:.4f}")
    print("hypergradient search (validation loss, learning rate, weight decay per step):")
    for v, lr, wd in r["trace"]:
        print(f"  {v:.4f}  lr {lr:.2e}  wd {wd:.2e}")
    print(
        f"best of grid:  lr {r['grid_best_learning_rate']:.2e}  val {r['grid_best_val_loss']:.4f}  "
        f"test {r['grid_best_test_loss']:.4f}  ({r['grid_seconds']:.1f} s)"
    )
    print(
        f"hypergradient: lr {r['hyper_learning_rate']:.2e} wd {r['hyper_weight_decay']:.2e}  "
        f"val {r['hyper_val_loss']:.4f}  test {r['hyper_test_loss']:.4f}  ({r['hyper_seconds']:.1f} s)"
    )
    gap = r["grid_best_val_loss"] - r["hyper_val_loss"]
    verdict = "below" if gap > 0 else "above"
    print(f"the learned setting's validation loss is {abs(gap):.4f} {verdict} the best grid point's")


if __name__ == "__main__":
    main()
