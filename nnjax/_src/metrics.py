"""Metrics: pure functions ``metric(predictions, targets, ...) -> scalar`` (same argument order as losses).

They work under ``jit`` and ``vmap``; pass them to ``fit`` or ``make_train_step`` as ``{"name": fn}``.
Each checks its arguments where they enter (shapes, dtypes, and label values when they are concrete),
then computes in one jitted function: called on its own, a metric is one compiled program (op by op,
``r2_score`` was nine), and inside a caller's ``jit`` it is traced into the caller's program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nnjax._src.errors import check_integer_labels
from nnjax._src.types import Array


def _shape(x: Array) -> tuple:
    return tuple(jnp.shape(x))


def _check_same_shape(metric: str, predictions: Array, targets: Array, names=("predictions", "targets")) -> None:
    if _shape(predictions) != _shape(targets):
        raise ValueError(f"{metric}: expected `{names[0]}` and `{names[1]}` of one shape, given {_shape(predictions)} and {_shape(targets)}.")


def _check_batch(metric: str, x: Array, name: str) -> None:
    if jnp.ndim(x) < 1:
        raise ValueError(f"{metric}: argument `{name}` expected a batch (rank >= 1), given shape {_shape(x)}.")


def _check_float(metric: str, x: Array, name: str) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(f"{metric}: argument `{name}` expected floating-point values, given dtype {jnp.result_type(x)} with shape {_shape(x)}.")


def _check_class_scores(metric: str, logits: Array, labels: Array) -> None:
    """``logits (batch, ..., classes)`` and integer ``labels (batch, ...)`` in ``[0, classes)``."""
    _check_batch(metric, labels, "labels")
    if jnp.ndim(logits) != jnp.ndim(labels) + 1 or _shape(logits)[:-1] != _shape(labels):
        raise ValueError(
            f"{metric}: expected `labels` of shape {_shape(logits)[:-1]} for `logits` of shape {_shape(logits)} "
            f"(batch, ..., classes), given {_shape(labels)}."
        )
    check_integer_labels(metric, labels, _shape(logits)[-1])


def _check_weights(metric: str, weights: Array | None, targets: Array) -> None:
    """``weights``, when given, must hold one value per example: shape ``(batch,)``."""
    if weights is not None and _shape(weights) != _shape(targets)[:1]:
        raise ValueError(f"{metric}: argument `weights` expected shape {_shape(targets)[:1]} (one per example), given {_shape(weights)}.")


def _weighted_mean(values: Array, weights: Array | None) -> Array:
    values = values.astype(jnp.float32) if not jnp.issubdtype(values.dtype, jnp.inexact) else values
    if weights is None:
        return jnp.mean(values)
    weights = jnp.asarray(weights, values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), jnp.finfo(values.dtype).tiny)


def accuracy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Share of examples whose highest-scoring class is the label.

    Args:
      logits: ``(batch, ..., classes)`` float scores or probabilities (argmax is taken over the last axis).
      labels: ``(batch, ...)`` integers in ``[0, classes)``.
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask): the weighted mean.
        With extra axes, each example counts as the share of its positions that are right.

    Returns:
      A float scalar in [0, 1].

    Raises:
      TypeError: ``labels`` are not integers (e.g. one-hot rows).
      ValueError: ``labels`` is not ``logits.shape[:-1]`` (or has no batch axis), ``weights`` is not
        ``(batch,)``, or (concrete labels only) a label is outside ``[0, classes)``.

    Example:
      >>> logits = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
      >>> round(float(nnjax.metrics.accuracy(logits, jnp.array([1, 1, 2]))), 4)
      0.6667
    """
    _check_class_scores("accuracy", logits, labels)
    _check_weights("accuracy", weights, labels)
    return _accuracy(logits, labels, weights)


@jax.jit
def _accuracy(logits: Array, labels: Array, weights: Array | None) -> Array:
    correct = jnp.argmax(logits, axis=-1) == labels
    return _weighted_mean(correct.reshape(correct.shape[0], -1).mean(axis=1), weights)


def binary_accuracy(logits: Array, labels: Array, weights: Array | None = None, *, threshold: float = 0.0) -> Array:
    """Share of examples with ``(logits > threshold) == (labels > 0.5)``. Use ``threshold=0.5`` for probabilities.

    Args:
      logits: ``(batch,)`` or ``(batch, outputs)`` scores (or probabilities, with ``threshold=0.5``).
      labels: same shape as ``logits``, 0/1 (a label counts as positive when it is above 0.5).
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask): the weighted mean.
      threshold: the score above which a prediction is positive (keyword-only; 0.0 suits logits).

    Returns:
      A float scalar in [0, 1].

    Raises:
      ValueError: ``logits`` has no batch axis, ``logits`` and ``labels`` differ in shape, or ``weights`` is
        not ``(batch,)``.

    Example:
      >>> logits, labels = jnp.array([1.5, -0.3, 0.2]), jnp.array([1, 0, 0])
      >>> round(float(nnjax.metrics.binary_accuracy(logits, labels)), 4)
      0.6667
      >>> round(float(nnjax.metrics.binary_accuracy(jax.nn.sigmoid(logits), labels, threshold=0.5)), 4)
      0.6667
    """
    _check_batch("binary_accuracy", logits, "logits")
    _check_same_shape("binary_accuracy", logits, labels, ("logits", "labels"))
    _check_weights("binary_accuracy", weights, labels)
    return _binary_accuracy(logits, labels, weights, threshold)


@jax.jit
def _binary_accuracy(logits: Array, labels: Array, weights: Array | None, threshold: Array) -> Array:
    correct = (logits > threshold) == (labels > 0.5)
    return _weighted_mean(correct.reshape(correct.shape[0], -1).mean(axis=1), weights)


def top_k_accuracy(logits: Array, labels: Array, weights: Array | None = None, *, k: int = 5) -> Array:
    """Share of examples whose label is among the ``k`` highest-scoring classes.

    Args:
      logits: ``(batch, ..., classes)`` float scores or probabilities.
      labels: ``(batch, ...)`` integers in ``[0, classes)``.
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask): the weighted mean.
      k: how many of the top classes count as a hit (keyword-only), ``1 <= k <= classes``; ``k=1`` is
        ``accuracy``.

    Returns:
      A float scalar in [0, 1].

    Raises:
      TypeError: ``labels`` are not integers.
      ValueError: ``k`` is not an int in ``[1, classes]``, ``labels`` is not ``logits.shape[:-1]``,
        ``weights`` is not ``(batch,)``, or (concrete labels only) a label is out of range.

    Example:
      >>> logits = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
      >>> round(float(nnjax.metrics.top_k_accuracy(logits, jnp.array([1, 1, 2]), k=2)), 4)
      1.0
    """
    _check_class_scores("top_k_accuracy", logits, labels)
    if not isinstance(k, int) or not 1 <= k <= jnp.shape(logits)[-1]:
        raise ValueError(f"top_k_accuracy: argument `k` expected an int in [1, {jnp.shape(logits)[-1]}] (the number of classes), given {k!r}.")
    _check_weights("top_k_accuracy", weights, labels)
    return _top_k_accuracy(logits, labels, weights, k)


@functools.partial(jax.jit, static_argnums=3)
def _top_k_accuracy(logits: Array, labels: Array, weights: Array | None, k: int) -> Array:
    _, top = jax.lax.top_k(logits, k)
    hit = jnp.any(top == labels[..., None], axis=-1)
    return _weighted_mean(hit.reshape(hit.shape[0], -1).mean(axis=1), weights)


def confusion_matrix(predictions: Array, labels: Array, num_classes: int | None = None) -> Array:
    """Counts ``(num_classes, num_classes)``: row = true label, column = predicted class.

    Args:
      predictions: class scores ``(batch, classes)`` (argmax is taken) or class indices ``(batch,)``
        (integers); more generally ``(batch, ..., classes)`` or ``(batch, ...)``, every position counted.
      labels: ``(batch, ...)`` integer true classes.
      num_classes: the number of classes; default ``classes`` for scores, required for class indices.

    Returns:
      An int32 ``(num_classes, num_classes)`` array whose ``[i, j]`` counts examples of class ``i``
      predicted as ``j`` (the diagonal holds the correct ones).

    Raises:
      TypeError: ``labels`` (or class-index ``predictions``) are not integers.
      ValueError: ``num_classes`` is missing for class indices or not a positive int, ``predictions`` and
        ``labels`` do not match in shape, or (concrete values only) a label or prediction is outside
        ``[0, num_classes)``.

    Example:
      >>> logits = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
      >>> nnjax.metrics.confusion_matrix(logits, jnp.array([1, 1, 2])).tolist()
      [[0, 0, 0], [1, 1, 0], [0, 0, 1]]
      >>> nnjax.metrics.confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 1, 0]), num_classes=2).tolist()
      [[1, 1], [0, 1]]
    """
    name = "confusion_matrix"
    check_integer_labels(name, labels)
    if jnp.ndim(predictions) == jnp.ndim(labels) + 1:
        num_classes = num_classes or jnp.shape(predictions)[-1]
        predictions = jnp.argmax(predictions, axis=-1)
    if num_classes is None:
        raise ValueError(f"{name}: argument `num_classes` is required when `predictions` are class indices.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: argument `num_classes` expected a positive int, given {num_classes!r}.")
    if _shape(predictions) != _shape(labels):
        raise ValueError(
            f"{name}: expected `predictions` of shape {_shape(labels)} (class indices) or {(*_shape(labels), num_classes)} "
            f"(scores) for `labels` of shape {_shape(labels)}, given {_shape(predictions)}."
        )
    check_integer_labels(name, labels, num_classes)
    check_integer_labels(name, predictions, num_classes)
    return _confusion_matrix(predictions, labels, num_classes)


@functools.partial(jax.jit, static_argnums=2)
def _confusion_matrix(predictions: Array, labels: Array, num_classes: int) -> Array:
    flat = labels.reshape(-1) * num_classes + predictions.reshape(-1)
    return jnp.bincount(flat, length=num_classes * num_classes).reshape(num_classes, num_classes)


def _check_regression(metric: str, predictions: Array, targets: Array) -> None:
    _check_float(metric, predictions, "predictions")
    _check_batch(metric, predictions, "predictions")
    _check_same_shape(metric, predictions, targets)


def mae(predictions: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean absolute error, ``mean(|predictions - targets|)``, in the units of the targets.

    Args:
      predictions: ``(batch, ...)`` float.
      targets: same shape as ``predictions``.
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask): the weighted mean.

    Returns:
      A float scalar.

    Raises:
      TypeError: ``predictions`` are not floating point.
      ValueError: ``predictions`` has no batch axis, ``predictions`` and ``targets`` differ in shape, or
        ``weights`` is not ``(batch,)``.

    Example:
      >>> round(float(nnjax.metrics.mae(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 5.0]))), 4)
      1.3333
    """
    _check_regression("mae", predictions, targets)
    _check_weights("mae", weights, targets)
    return _mae(predictions, targets, weights)


@jax.jit
def _mae(predictions: Array, targets: Array, weights: Array | None) -> Array:
    return _weighted_mean(jnp.abs(predictions - targets).reshape(jnp.shape(targets)[0], -1).mean(axis=1), weights)


def rmse(predictions: Array, targets: Array, weights: Array | None = None) -> Array:
    """Root mean squared error, ``sqrt(mean((predictions - targets) ** 2))``, in the units of the targets.

    Args:
      predictions: ``(batch, ...)`` float.
      targets: same shape as ``predictions``.
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask): the weighted mean of
        the squared errors, inside the square root.

    Returns:
      A float scalar.

    Raises:
      TypeError: ``predictions`` are not floating point.
      ValueError: ``predictions`` has no batch axis, ``predictions`` and ``targets`` differ in shape, or
        ``weights`` is not ``(batch,)``.

    Example:
      >>> round(float(nnjax.metrics.rmse(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 5.0]))), 4)
      1.633
    """
    _check_regression("rmse", predictions, targets)
    _check_weights("rmse", weights, targets)
    return _rmse(predictions, targets, weights)


@jax.jit
def _rmse(predictions: Array, targets: Array, weights: Array | None) -> Array:
    squared = jnp.square(predictions - targets).reshape(jnp.shape(targets)[0], -1).mean(axis=1)
    return jnp.sqrt(_weighted_mean(squared, weights))


def r2_score(predictions: Array, targets: Array) -> Array:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (1 is perfect; 0 is predicting the mean).

    ``SS_tot`` is taken about each output's mean over the batch; with several outputs both sums run over all
    of them (scikit-learn's ``multioutput="variance_weighted"``, not its default uniform average).
    Constant targets (``SS_tot = 0``) give 1.0 for a perfect fit and 0.0 otherwise (scikit-learn's
    ``force_finite``), not NaN or -inf. It is not a mean over examples: pass the whole set (as ``fit``'s
    validation does), since an average of per-batch scores is not the set's score.

    Args:
      predictions: ``(batch, ...)`` float.
      targets: same shape as ``predictions``.

    Returns:
      A float scalar, at most 1 (negative when worse than predicting the mean).

    Raises:
      TypeError: ``predictions`` are not floating point.
      ValueError: ``predictions`` has no batch axis, or ``predictions`` and ``targets`` differ in shape.

    Example:
      >>> predictions, targets = jnp.array([1.1, 1.9, 3.2]), jnp.array([1.0, 2.0, 3.0])
      >>> round(float(nnjax.metrics.r2_score(predictions, targets)), 4)
      0.97
    """
    _check_regression("r2_score", predictions, targets)
    return _r2_score(predictions, targets)


@jax.jit
def _r2_score(predictions: Array, targets: Array) -> Array:
    ss_res = jnp.sum(jnp.square(targets - predictions))
    ss_tot = jnp.sum(jnp.square(targets - jnp.mean(targets, axis=0)))
    safe = jnp.where(ss_tot > 0, ss_tot, 1.0)
    return jnp.where(ss_tot > 0, 1.0 - ss_res / safe, jnp.where(ss_res == 0, 1.0, 0.0))
