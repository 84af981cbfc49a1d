"""Metrics against hand-computed values and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax import metrics

LOGITS = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.0, 2.0, 1.0]])
LABELS = jnp.array([0, 1, 1, 2])


def test_accuracy_and_top_k():
    assert float(metrics.accuracy(LOGITS, LABELS)) == 0.5  # rows 0 and 1 right
    assert float(metrics.accuracy(LOGITS, LABELS, jnp.array([1.0, 1.0, 0.0, 0.0]))) == 1.0
    assert float(metrics.top_k_accuracy(LOGITS, LABELS, k=2)) == 0.75  # row 2's label 1 is ranked last
    assert float(metrics.top_k_accuracy(LOGITS, LABELS, k=3)) == 1.0
    assert float(metrics.binary_accuracy(jnp.array([-1.0, 2.0, 0.5]), jnp.array([0, 1, 0]))) == pytest.approx(2 / 3)


def test_confusion_matrix_rows_are_true_labels():
    matrix = metrics.confusion_matrix(LOGITS, LABELS)
    expected = np.zeros((3, 3), int)
    for true, predicted in zip([0, 1, 1, 2], [0, 1, 2, 1]):
        expected[true, predicted] += 1
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(metrics.confusion_matrix(jnp.array([0, 1, 2, 1]), LABELS, num_classes=3), expected)
    assert int(jax.jit(metrics.confusion_matrix)(LOGITS, LABELS).sum()) == 4


def test_regression_metrics_match_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=50).astype(np.float32)
    p = (t + rng.normal(scale=0.3, size=50)).astype(np.float32)
    np.testing.assert_allclose(metrics.mae(jnp.asarray(p), jnp.asarray(t)), np.mean(np.abs(p - t)), rtol=1e-5)
    np.testing.assert_allclose(metrics.rmse(jnp.asarray(p), jnp.asarray(t)), np.sqrt(np.mean((p - t) ** 2)), rtol=1e-5)
    r2 = 1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum()
    np.testing.assert_allclose(metrics.r2_score(jnp.asarray(p), jnp.asarray(t)), r2, rtol=1e-5)
    assert float(metrics.r2_score(jnp.asarray(t), jnp.asarray(t))) == 1.0


def test_metrics_vmap_over_models():
    many = jnp.stack([LOGITS, -LOGITS])
    np.testing.assert_allclose(jax.vmap(metrics.accuracy, in_axes=(0, None))(many, LABELS), [0.5, 0.25])


def test_metric_errors_name_the_argument():
    with pytest.raises(TypeError, match="accuracy: argument `labels` expected integer"):
        metrics.accuracy(LOGITS, LABELS.astype(jnp.float32))
    with pytest.raises(ValueError, match="top_k_accuracy: argument `k`"):
        metrics.top_k_accuracy(LOGITS, LABELS, k=4)


def test_a_metric_called_on_its_own_is_one_program_with_its_checks_first():
    """Eager calls check their arguments (label values too), then run one jitted program (op by op, r2_score
    lowered nine programs, accuracy six)."""
    targets = np.linspace(0.0, 1.0, 14, dtype=np.float32).reshape(7, 2)
    predictions, targets = jax.device_put(targets + 0.01), jax.device_put(targets)
    logits = jax.device_put(np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0]])
    labels = jax.device_put(np.array([0, 1, 2, 0, 0], np.int32))
    lowered = []

    def on_duration(event, duration, **kwargs):
        lowered.append(event == "/jax/core/compile/jaxpr_to_mlir_module_duration")

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        assert 0.9 < float(metrics.r2_score(predictions, targets)) <= 1.0
        assert sum(lowered) == 1
        assert float(metrics.accuracy(logits, labels)) == pytest.approx(0.8)
        assert sum(lowered) == 2
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
    with pytest.raises(ValueError, match=r"accuracy: argument `labels` expected values in \[0, 3\)"):
        metrics.accuracy(logits, np.array([0, 1, 3, 0, 0]))
    with pytest.raises(ValueError, match=r"rmse: argument `weights` expected shape \(7,\)"):
        metrics.rmse(predictions, predictions, weights=jnp.ones(3))
