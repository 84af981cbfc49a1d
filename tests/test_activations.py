"""Activation functions against NumPy formulas, their gradients, and the straight-through step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nnjax import activations as act

X = np.linspace(-3, 3, 13)

REFERENCES = [
    (act.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    (act.tanh, np.tanh),
    (act.relu, lambda x: np.maximum(0, x)),
    (lambda x: act.leaky_relu(x, 0.1), lambda x: np.where(x >= 0, x, 0.1 * x)),
    (act.elu, lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    (act.silu, lambda x: x / (1 + np.exp(-x))),
    (act.softplus, lambda x: np.log1p(np.exp(x))),
    (lambda x: act.gelu(x, approximate=False), lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))),
    (act.softmax, lambda x: np.exp(x) / np.exp(x).sum()),
    (act.log_softmax, lambda x: x - np.log(np.exp(x).sum())),
]


@pytest.mark.parametrize("fn, reference", REFERENCES)
def test_activation_matches_numpy(fn, reference):
    np.testing.assert_allclose(fn(jnp.asarray(X, jnp.float32)), reference(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [f for f, _ in REFERENCES if f is not act.relu])
def test_activation_gradients_float64(fn, x64):
    check_grads(jax.jit(fn), (jnp.asarray(X + 0.05, jnp.float64),), order=2)


def test_step_fires_at_and_above_threshold_with_zero_gradient():
    x = jnp.array([0.4, 0.5, 0.67, -1.0])
    np.testing.assert_array_equal(act.step(x, threshold=0.5), [0.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(jax.grad(lambda x: act.step(x, 0.5).sum())(x), np.zeros(4))


def test_straight_through_step_is_step_forward_identity_backward():
    x = jnp.array([0.4, 0.5, 0.67, -1.0])
    np.testing.assert_array_equal(act.straight_through_step(x, 0.5), act.step(x, 0.5))
    np.testing.assert_array_equal(jax.grad(lambda x: act.straight_through_step(x, 0.5).sum())(x), np.ones(4))
