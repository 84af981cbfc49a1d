"""From one neuron to a network: the source texts' worked example, a perceptron, and XOR.

1. One neuron: inputs (0.5, 0.6), weights (0.5, 0.7), bias 0, step activation with threshold 0.5:
   the weighted sum is 0.25 + 0.42 = 0.67 >= 0.5, so the neuron fires 1.
2. A perceptron (one Dense(1) unit + step, trained with the straight-through estimator) learns AND
   and OR, which are linearly separable, and fails on XOR, which is not.
3. A two-layer MLP (Dense(8) + tanh + Dense(2)) solves XOR.

Run: python examples/neuron.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax
from nnjax import losses

INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
GATES = {"AND": np.array([0, 0, 0, 1]), "OR": np.array([0, 1, 1, 1]), "XOR": np.array([0, 1, 1, 0])}


def one_neuron(inputs=(0.5, 0.6), weights=(0.5, 0.7), bias=0.0, threshold=0.5) -> tuple[float, float]:
    """The source texts' neuron as an nnjax layer: returns (weighted sum, output)."""
    neuron = nnjax.Dense(1)
    params = {"w": jnp.asarray(weights, jnp.float32)[:, None], "b": jnp.asarray([bias], jnp.float32)}
    weighted_sum, _ = neuron.apply(params, {}, jnp.asarray([inputs], jnp.float32))
    fired = nnjax.activations.step(weighted_sum, threshold)
    return float(weighted_sum[0, 0]), float(fired[0, 0])


def train_perceptron(targets: np.ndarray, *, steps: int = 200, seed: int = 0) -> float:
    """Trains a step-activation perceptron (straight-through gradient); returns its accuracy."""
    model = nnjax.serial(nnjax.Dense(1), nnjax.StraightThroughStep(threshold=0.0))
    y = targets.astype(np.float32)[:, None]
    result = nnjax.fit(model, losses.half_mse, optax.sgd(0.1), INPUTS, y, epochs=steps, batch_size=4, seed=seed,
                       progress=False, fused="all")
    predictions = nnjax.predict(model, result.train_state, INPUTS)
    return float(np.mean(np.asarray(predictions) == y))


def train_mlp_xor(*, epochs: int = 300, seed: int = 0) -> float:
    """Trains Dense(8) + tanh + Dense(2) on XOR with Adam; returns its accuracy."""
    model = nnjax.serial(nnjax.Dense(8), nnjax.Tanh(), nnjax.Dense(2))
    x, y = nnjax.data.make_xor()
    result = nnjax.fit(model, losses.softmax_cross_entropy, optax.adam(0.05), x, y, epochs=epochs, batch_size=4,
                       seed=seed, progress=False, fused="all")
    return float(nnjax.metrics.accuracy(nnjax.predict(model, result.train_state, x), jnp.asarray(y)))


def train_and_evaluate(config: dict | None = None) -> dict[str, float]:
    """Runs the three parts and returns their results."""
    config = {"perceptron_steps": 200, "mlp_epochs": 300, "seed": 0, **(config or {})}
    weighted_sum, fired = one_neuron()
    results = {"weighted_sum": weighted_sum, "fired": fired}
    for gate, targets in GATES.items():
        results[f"perceptron_{gate}"] = train_perceptron(targets, steps=config["perceptron_steps"], seed=config["seed"])
    results["mlp_XOR"] = train_mlp_xor(epochs=config["mlp_epochs"], seed=config["seed"])
    return results


def main() -> None:
    nnjax.config.compilation_cache()  # a rerun loads its compiled programs instead of compiling them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    nnjax.keep_freed_memory()  # a process-wide choice: XLA's temporaries reuse freed memory
    results = train_and_evaluate({"seed": args.seed})
    print(f"one neuron: 0.5*0.5 + 0.6*0.7 + 0 = {results['weighted_sum']:.2f} -> step(threshold 0.5) = {results['fired']:.0f}")
    for gate in GATES:
        print(f"perceptron on {gate:3s}: accuracy {results[f'perceptron_{gate}']:.2f}")
    print(f"two-layer MLP on XOR: accuracy {results['mlp_XOR']:.2f}")
    print(f"devices: {jax.devices()}")


if __name__ == "__main__":
    main()
