"""House-price regression from the source texts' four features, against a linear baseline.

Features: square footage, bedrooms, distance to the city centre, house age (a synthetic set from
``nnjax.data.make_house_prices``, documented formula plus noise). Inputs and the target are
standardized on the training split only; the MLP is trained with the ½-MSE cost of the source texts
(``nnjax.losses.half_mse``) and Adam; the baseline is the same pipeline with a single Dense(1) layer
(linear regression). Reports held-out RMSE (in $1000s) and R².

Run: python examples/house_prices.py
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import optax

import nnjax
from nnjax import losses, metrics

DEFAULTS = {"n": 2000, "hidden": 64, "epochs": 150, "batch_size": 64, "learning_rate": 3e-3, "seed": 0,
            "progress": False}


def _train(model: nnjax.Layer, x_train, y_train, config) -> nnjax.TrainState:
    result = nnjax.fit(model, losses.half_mse, optax.adam(config["learning_rate"]), x_train, y_train,
                       epochs=config["epochs"], batch_size=config["batch_size"], seed=config["seed"],
                       progress=config["progress"])
    return result.train_state


def train_and_evaluate(config: dict | None = None) -> dict[str, float]:
    """Trains the MLP and the linear baseline; returns held-out RMSE and R² of both."""
    config = {**DEFAULTS, **(config or {})}
    x, y = nnjax.data.make_house_prices(config["n"], seed=config["seed"])
    x_train, y_train, x_test, y_test = nnjax.data.train_test_split(x, y[:, None], seed=config["seed"])
    x_scaler, y_scaler = nnjax.data.standardizer(x_train), nnjax.data.standardizer(y_train)
    x_train, x_test = x_scaler.transform(x_train), x_scaler.transform(x_test)
    h = config["hidden"]
    models = {
        "mlp": nnjax.serial(nnjax.Dense(h), nnjax.Relu(), nnjax.Dense(h), nnjax.Relu(), nnjax.Dense(1)),
        "linear": nnjax.Dense(1),
    }
    results = {}
    for name, model in models.items():
        train_state = _train(model, x_train, y_scaler.transform(y_train), config)
        predictions = jnp.asarray(y_scaler.inverse(nnjax.predict(model, train_state, x_test)))
        targets = jnp.asarray(y_test)
        results[f"{name}_rmse"] = float(metrics.rmse(predictions, targets))
        results[f"{name}_r2"] = float(metrics.r2_score(predictions, targets))
    return results


def main() -> None:
    nnjax.config.compilation_cache()  # a rerun loads its compiled programs instead of compiling them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in DEFAULTS.items():
        if name != "progress":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    nnjax.keep_freed_memory()  # a process-wide choice: XLA's temporaries reuse freed memory
    results = train_and_evaluate({**vars(args), "progress": True})
    print(f"held-out RMSE ($1000s): MLP {results['mlp_rmse']:.2f}   linear baseline {results['linear_rmse']:.2f}")
    print(f"held-out R²:            MLP {results['mlp_r2']:.4f}  linear baseline {results['linear_r2']:.4f}")


if __name__ == "__main__":
    main()
