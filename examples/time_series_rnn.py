"""Forecasting a noisy seasonal series with a GRU or an LSTM, against the naive last-value forecast.

The series (generated, seeded): a linear trend, two seasonal cycles (periods 12 and 50 steps) and
Gaussian noise, the shape of the daily sales / temperature / price series of the source texts. Each
example is a window of ``window`` past values; the target is the next value. Windows are made
relative to their last value (the model predicts the change from it, which also carries the trend
past the training range) and scaled by the training set's standard deviation of changes. The first
80% of the series trains, the last 20% is held out. Reports held-out RMSE of the RNN and of the
naive forecast ``y[t+1] = y[t]``.

Run: python examples/time_series_rnn.py [--cell gru|lstm]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax
from nnjax._src.recurrent import GRU, LSTM

DEFAULTS = {
    "cell": "gru",
    "length": 3000,
    "noise": 0.3,
    "window": 48,
    "hidden": 32,
    "steps": 600,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "seed": 0,
}


def make_series(length: int, noise: float, seed: int) -> np.ndarray:
    """``y[t] = 0.002 t + 2 sin(2 pi t / 12) + sin(2 pi t / 50) + noise * N(0, 1)``, shape ``(length,)``."""
    t = np.arange(length, dtype=np.float64)
    seasonal = 2.0 * np.sin(2 * np.pi * t / 12) + np.sin(2 * np.pi * t / 50)
    return (0.002 * t + seasonal + noise * np.random.default_rng(seed).standard_normal(length)).astype(np.float32)


def make_windows(series: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows ``(n, window)``, next values ``(n,)`` and each window's last value ``(n,)``."""
    idx = np.arange(len(series) - window)[:, None] + np.arange(window)
    windows = series[idx]
    return windows, series[window:], windows[:, -1]


def train_and_evaluate(config: dict | None = None) -> dict:
    """Trains the RNN forecaster; returns held-out RMSE of it and of the naive forecast."""
    config = {**DEFAULTS, **(config or {})}
    start = time.perf_counter()
    series = make_series(config["length"], config["noise"], config["seed"])
    windows, targets, last = make_windows(series, config["window"])
    n_train = int(0.8 * len(series)) - config["window"]  # training targets lie in the first 80%
    scale = float(np.std(targets[:n_train] - last[:n_train]))
    x = ((windows - last[:, None]) / scale)[..., None]  # (n, window, 1): values relative to the last one
    y = ((targets - last) / scale)[:, None]  # (n, 1): the change to predict
    x_train, y_train, x_test = jnp.asarray(x[:n_train]), jnp.asarray(y[:n_train]), jnp.asarray(x[n_train:])

    rnn = {"gru": GRU, "lstm": LSTM}[config["cell"]]
    model = nnjax.serial(rnn(config["hidden"], return_sequences=False), nnjax.Dense(1))
    tx = optax.adam(config["learning_rate"])
    train_state = nnjax.init_train_state(model, tx, jax.random.key(config["seed"]), x_train.shape[1:])
    step = nnjax.make_train_step(model, nnjax.losses.mse, tx, jit=False)

    def train(train_state, key):  # every step on a random mini-batch, all steps as one compiled scan
        def body(ts, k):
            idx = jax.random.randint(k, (config["batch_size"],), 0, n_train)
            return step(ts, (x_train[idx], y_train[idx]))

        return jax.lax.scan(body, train_state, jax.random.split(key, config["steps"]))

    train_state, metrics = jax.jit(train)(train_state, jax.random.key(config["seed"] + 1))
    predicted_change = np.asarray(model.apply(train_state.params, train_state.state, x_test)[0][:, 0]) * scale
    forecast = last[n_train:] + predicted_change
    truth = targets[n_train:]
    rnn_rmse = float(np.sqrt(np.mean((forecast - truth) ** 2)))
    naive_rmse = float(np.sqrt(np.mean((last[n_train:] - truth) ** 2)))
    return {
        "rnn_rmse": rnn_rmse,
        "naive_rmse": naive_rmse,
        "improvement": 1.0 - rnn_rmse / naive_rmse,
        "noise_floor": config["noise"],
        "final_train_loss": float(metrics["loss"][-1]),
        "test_points": len(truth),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    nnjax.config.compilation_cache()  # a rerun loads its compiled programs instead of compiling them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in DEFAULTS.items():
        kwargs = {"choices": ["gru", "lstm"]} if name == "cell" else {}
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, **kwargs)
    args = parser.parse_args()
    nnjax.keep_freed_memory()  # a process-wide choice: XLA's temporaries reuse freed memory
    r = train_and_evaluate(vars(args))
    print(f"held-out RMSE over {r['test_points']} steps: {args.cell.upper()} {r['rnn_rmse']:.3f}   "
          f"naive last value {r['naive_rmse']:.3f}   ({100 * r['improvement']:.0f}% lower; noise std {r['noise_floor']})")
    print(f"trained in {r['seconds']:.1f}s")


if __name__ == "__main__":
    main()
