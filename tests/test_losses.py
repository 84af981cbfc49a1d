"""Losses against hand-computed and NumPy values, gradients in float64, and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nnjax import losses

RNG = np.random.default_rng(0)
P = RNG.normal(size=(6, 3)).astype(np.float32)
T = RNG.normal(size=(6, 3)).astype(np.float32)
LABELS = np.array([0, 2, 1, 1, 0, 2], np.int32)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_source_texts_loss_as_distance():
    # a prediction of 0.92 against a label of 1 is a loss of 0.08; 0.35 is a loss of 0.65
    np.testing.assert_allclose(losses.mae(jnp.array([0.92]), jnp.array([1.0])), 0.08, rtol=1e-5)
    np.testing.assert_allclose(losses.mae(jnp.array([0.35]), jnp.array([1.0])), 0.65, rtol=1e-5)
    np.testing.assert_allclose(losses.half_mse(jnp.array([0.35]), jnp.array([1.0])), 0.5 * 0.65**2, rtol=1e-5)


@pytest.mark.parametrize(
    "loss, reference",
    [
        (losses.mse, lambda p, t: np.mean((p - t) ** 2)),
        (losses.half_mse, lambda p, t: np.mean(0.5 * (p - t) ** 2)),
        (losses.mae, lambda p, t: np.mean(np.abs(p - t))),
        (losses.huber, lambda p, t: np.mean(np.where(np.abs(p - t) <= 1, 0.5 * (p - t) ** 2, np.abs(p - t) - 0.5))),
    ],
)
def test_regression_losses_match_numpy(loss, reference):
    np.testing.assert_allclose(loss(jnp.asarray(P), jnp.asarray(T)), reference(P, T), rtol=1e-5)


def test_classification_losses_match_numpy():
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(jnp.asarray(P), jnp.asarray(LABELS)),
        -np.mean(_log_softmax(P)[np.arange(6), LABELS]), rtol=1e-5)
    soft = np.exp(_log_softmax(T))
    np.testing.assert_allclose(
        losses.softmax_cross_entropy_soft(jnp.asarray(P), jnp.asarray(soft)),
        -np.mean((soft * _log_softmax(P)).sum(-1)), rtol=1e-5)
    y = (T > 0).astype(np.float32)
    prob = 1 / (1 + np.exp(-P))
    bce = -np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob))
    np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(jnp.asarray(P), jnp.asarray(y)), bce, rtol=1e-5)
    np.testing.assert_allclose(losses.binary_cross_entropy(jnp.asarray(prob), jnp.asarray(y)), bce, rtol=1e-4)
    signs = np.where(T > 0, 1.0, -1.0).astype(np.float32)
    np.testing.assert_allclose(losses.hinge(jnp.asarray(P), jnp.asarray(signs)), np.mean(np.maximum(0, 1 - signs * P)), rtol=1e-5)


def test_weights_are_per_example_and_a_zero_weight_masks():
    w = np.array([1, 0, 2, 0, 1, 1], np.float32)
    per_example = np.mean((P - T) ** 2, axis=1)
    np.testing.assert_allclose(losses.mse(jnp.asarray(P), jnp.asarray(T), jnp.asarray(w)),
                               (w * per_example).sum() / w.sum(), rtol=1e-5)
    masked = losses.softmax_cross_entropy(jnp.asarray(P), jnp.asarray(LABELS), jnp.asarray(w))
    kept = w > 0
    reference = -(w[kept] * _log_softmax(P)[np.arange(6), LABELS][kept]).sum() / w.sum()
    np.testing.assert_allclose(masked, reference, rtol=1e-5)


@pytest.mark.parametrize(
    "loss, targets",
    [
        (losses.mse, T), (losses.half_mse, T), (losses.mae, T + 0.5), (losses.huber, T),
        (losses.softmax_cross_entropy_soft, np.exp(_log_softmax(T))),
        (losses.binary_cross_entropy_with_logits, (T > 0).astype(np.float32)),
    ],
)
def test_loss_gradients_float64(loss, targets, x64):
    check_grads(jax.jit(lambda p: loss(p, jnp.asarray(targets, jnp.float64))), (jnp.asarray(P, jnp.float64),), order=2)


def test_integer_label_loss_gradient_float64(x64):
    loss = jax.jit(lambda p: losses.softmax_cross_entropy(p, jnp.asarray(LABELS)))
    check_grads(loss, (jnp.asarray(P, jnp.float64),), order=2)


def test_float_labels_fail_at_trace_time_even_under_jit():
    with pytest.raises(TypeError, match="softmax_cross_entropy: argument `labels` expected integer class indices"):
        jax.jit(losses.softmax_cross_entropy)(jnp.asarray(P), jnp.asarray(LABELS, jnp.float32))


def test_out_of_range_labels_fail_eagerly_where_optax_gives_nan():
    with pytest.raises(ValueError, match=r"expected values in \[0, 3\).*given values in \[0, 5\]"):
        losses.softmax_cross_entropy(jnp.asarray(P), jnp.array([0, 1, 2, 5, 0, 1]))
    with pytest.raises(ValueError, match="expected values in"):
        losses.softmax_cross_entropy(jnp.asarray(P), jnp.array([0, 1, 2, -1, 0, 1]))


def test_shape_mismatch_that_would_broadcast_is_an_error():
    with pytest.raises(ValueError, match=r"mse: .*\(6, 1\) and \(6,\).*Hint: squeeze"):
        losses.mse(jnp.zeros((6, 1)), jnp.zeros(6))
    with pytest.raises(ValueError, match="softmax_cross_entropy: expected `labels` of shape"):
        losses.softmax_cross_entropy(jnp.asarray(P), jnp.zeros((6, 1), jnp.int32))
    with pytest.raises(ValueError, match="binary_cross_entropy_with_logits: argument `labels` expected values in"):
        losses.binary_cross_entropy_with_logits(jnp.zeros(3), jnp.array([0, 1, 2]))
