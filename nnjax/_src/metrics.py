"""Metrics: pure functions ``metric(predictions, targets, ...) -> scalar`` (same argument order as losses).

They work under ``jit`` and ``vmap``; pass them to ``fit`` or ``make_train_step`` as ``{"name": fn}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nnjax._src.errors import check_integer_labels
from nnjax._src.types import Array


def _weighted_mean(values: Array, weights: Array | None) -> Array:
    values = values.astype(jnp.float32) if not jnp.issubdtype(values.dtype, jnp.inexact) else values
    if weights is None:
        return jnp.mean(values)
    weights = jnp.asarray(weights, values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), jnp.finfo(values.dtype).tiny)


def accuracy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Share of examples whose highest-scoring class is the label.

    Shapes: ``logits: (batch, ..., classes)`` (scores or probabilities), ``labels: (batch, ...)`` integers.
    """
    check_integer_labels("accuracy", labels)
    if jnp.shape(logits)[:-1] != jnp.shape(labels):
        raise ValueError(f"accuracy: expected `labels` of shape {tuple(jnp.shape(logits)[:-1])}, given {tuple(jnp.shape(labels))}.")
    return _weighted_mean(jnp.argmax(logits, axis=-1) == labels, weights)


def binary_accuracy(logits: Array, labels: Array, weights: Array | None = None, *, threshold: float = 0.0) -> Array:
    """Share of examples with ``(logits > threshold) == labels``. Use ``threshold=0.5`` for probabilities."""
    if jnp.shape(logits) != jnp.shape(labels):
        raise ValueError(f"binary_accuracy: expected `logits` and `labels` of one shape, given {tuple(jnp.shape(logits))} and {tuple(jnp.shape(labels))}.")
    return _weighted_mean((logits > threshold) == (labels > 0.5), weights)


def top_k_accuracy(logits: Array, labels: Array, weights: Array | None = None, *, k: int = 5) -> Array:
    """Share of examples whose label is among the ``k`` highest-scoring classes."""
    check_integer_labels("top_k_accuracy", labels)
    if not 1 <= k <= jnp.shape(logits)[-1]:
        raise ValueError(f"top_k_accuracy: argument `k` expected 1 <= k <= {jnp.shape(logits)[-1]} classes, given {k}.")
    _, top = jax.lax.top_k(logits, k)
    return _weighted_mean(jnp.any(top == labels[..., None], axis=-1), weights)


def confusion_matrix(predictions: Array, labels: Array, num_classes: int | None = None) -> Array:
    """Counts ``(num_classes, num_classes)``: row = true label, column = predicted class.

    ``predictions`` are class scores ``(batch, classes)`` (argmax is taken) or class indices ``(batch,)``.
    """
    check_integer_labels("confusion_matrix", labels)
    if jnp.ndim(predictions) == jnp.ndim(labels) + 1:
        num_classes = num_classes or jnp.shape(predictions)[-1]
        predictions = jnp.argmax(predictions, axis=-1)
    if num_classes is None:
        raise ValueError("confusion_matrix: argument `num_classes` is required when `predictions` are class indices.")
    flat = labels.reshape(-1) * num_classes + predictions.reshape(-1)
    return jnp.bincount(flat, length=num_classes * num_classes).reshape(num_classes, num_classes)


def mae(predictions: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean absolute error."""
    return _weighted_mean(jnp.abs(predictions - targets).reshape(jnp.shape(targets)[0], -1).mean(axis=1), weights)


def rmse(predictions: Array, targets: Array, weights: Array | None = None) -> Array:
    """Root mean squared error, in the units of the targets."""
    return jnp.sqrt(_weighted_mean(jnp.square(predictions - targets).reshape(jnp.shape(targets)[0], -1).mean(axis=1), weights))


def r2_score(predictions: Array, targets: Array) -> Array:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (1 is perfect; 0 is predicting the mean)."""
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(f"r2_score: expected `predictions` and `targets` of one shape, given {tuple(jnp.shape(predictions))} and {tuple(jnp.shape(targets))}.")
    ss_res = jnp.sum(jnp.square(targets - predictions))
    ss_tot = jnp.sum(jnp.square(targets - jnp.mean(targets, axis=0)))
    return 1.0 - ss_res / ss_tot
