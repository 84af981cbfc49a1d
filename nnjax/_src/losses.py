"""Losses: pure functions ``loss(predictions, targets, weights=None) -> scalar``, mean-reduced.

``weights`` (optional) is one non-negative weight per example, shape ``(batch,)``; a 0/1 weight is a
mask. The result is ``sum(weights * per_example_loss) / sum(weights)``. Shapes are checked while
tracing (free under ``jit``); integer label values are checked when they are concrete (eager calls).
The math comes from ``optax.losses`` where it has it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.errors import check_integer_labels, is_concrete
from nnjax._src.types import Array


def _check_same_shape(loss: str, predictions: Array, targets: Array, names=("predictions", "targets")) -> None:
    if jnp.shape(predictions) != jnp.shape(targets):
        p, t = tuple(jnp.shape(predictions)), tuple(jnp.shape(targets))
        hint = ""
        if p[:1] == t[:1] and (p[1:] == (1,) and t[1:] == () or t[1:] == (1,) and p[1:] == ()):
            hint = " Hint: squeeze the trailing axis of size 1 (e.g. `predictions[:, 0]`) so they do not broadcast to (batch, batch)."
        raise ValueError(f"{loss}: expected `{names[0]}` and `{names[1]}` of one shape, given {p} and {t}.{hint}")


def _check_float(loss: str, x: Array, name: str) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(f"{loss}: argument `{name}` expected floating-point values, given dtype {jnp.result_type(x)}.")


def _reduce(loss: str, per_example: Array, weights: Array | None) -> Array:
    """Mean over examples (first axis) of per-element losses, optionally weighted per example."""
    if jnp.size(per_example) == 0:
        raise ValueError(
            f"{loss}: expected at least one example, given an empty batch (shape {tuple(jnp.shape(per_example))}); "
            f"its mean would be NaN."
        )
    if weights is None:
        return jnp.mean(per_example)
    batch = jnp.shape(per_example)[:1]
    if jnp.shape(weights) != batch:
        raise ValueError(f"{loss}: argument `weights` expected shape {batch} (one per example), given {tuple(jnp.shape(weights))}.")
    per_example = jnp.reshape(per_example, (*batch, -1)).mean(axis=1)
    weights = jnp.asarray(weights, per_example.dtype)
    return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), jnp.finfo(per_example.dtype).tiny)


def _regression(loss: str, predictions: Array, targets: Array) -> tuple[Array, Array]:
    _check_float(loss, predictions, "predictions")
    _check_same_shape(loss, predictions, targets)
    return predictions, jnp.asarray(targets, jnp.result_type(predictions))


def mse(predictions: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean squared error: ``mean((predictions - targets) ** 2)``.

    Args:
      predictions: ``(batch, ...)`` float.
      targets: same shape as ``predictions`` (cast to its dtype).
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.

    Returns:
      A float scalar.

    Raises:
      TypeError: ``predictions`` are not floating point.
      ValueError: ``predictions`` and ``targets`` differ in shape (no broadcasting), or ``weights`` is not
        ``(batch,)``.

    Example:
      >>> predictions, targets = jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 5.0])
      >>> round(float(nnjax.losses.mse(predictions, targets)), 4)
      2.6667
      >>> round(float(nnjax.losses.mse(predictions, targets, weights=jnp.array([1.0, 1.0, 0.0]))), 4)
      2.0
    """
    predictions, targets = _regression("mse", predictions, targets)
    return _reduce("mse", optax.losses.squared_error(predictions, targets), weights)


def half_mse(predictions: Array, targets: Array, weights: Array | None = None) -> Array:
    """Half the mean squared error, ``mean(½ (predictions - targets) ** 2)``.

    The cost function of the classic textbooks: its gradient with respect to ``predictions`` is simply
    ``predictions - targets`` (divided by the number of elements).

    Args:
      predictions: ``(batch, ...)`` float.
      targets: same shape as ``predictions`` (cast to its dtype).
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.

    Returns:
      A float scalar, half of ``mse``.

    Raises:
      TypeError: ``predictions`` are not floating point.
      ValueError: ``predictions`` and ``targets`` differ in shape, or ``weights`` is not ``(batch,)``.

    Example:
      >>> round(float(nnjax.losses.half_mse(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 5.0]))), 4)
      1.3333
    """
    predictions, targets = _regression("half_mse", predictions, targets)
    return _reduce("half_mse", optax.losses.l2_loss(predictions, targets), weights)


def mae(predictions: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean absolute error: ``mean(|predictions - targets|)``.

    Args:
      predictions: ``(batch, ...)`` float.
      targets: same shape as ``predictions`` (cast to its dtype).
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.

    Returns:
      A float scalar.

    Raises:
      TypeError: ``predictions`` are not floating point.
      ValueError: ``predictions`` and ``targets`` differ in shape, or ``weights`` is not ``(batch,)``.

    Example:
      >>> round(float(nnjax.losses.mae(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 5.0]))), 4)
      1.3333
    """
    predictions, targets = _regression("mae", predictions, targets)
    return _reduce("mae", jnp.abs(predictions - targets), weights)


def huber(predictions: Array, targets: Array, weights: Array | None = None, *, delta: float = 1.0) -> Array:
    """Huber loss: ``½ e²`` for ``|e| <= delta``, else ``delta (|e| - ½ delta)``, with ``e = predictions - targets``.

    Quadratic near zero, linear beyond ``delta``: less sensitive to outliers than ``mse``.

    Args:
      predictions: ``(batch, ...)`` float.
      targets: same shape as ``predictions`` (cast to its dtype).
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.
      delta: where the loss turns from quadratic to linear (keyword-only).

    Returns:
      A float scalar: the mean of the per-element Huber losses.

    Raises:
      TypeError: ``predictions`` are not floating point.
      ValueError: ``predictions`` and ``targets`` differ in shape, or ``weights`` is not ``(batch,)``.

    Example:
      >>> predictions, targets = jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 5.0])   # errors 0, 2, -2
      >>> round(float(nnjax.losses.huber(predictions, targets)), 4)               # (0 + 1.5 + 1.5) / 3
      1.0
      >>> round(float(nnjax.losses.huber(predictions, targets, delta=2.0)), 4)    # (0 + 2 + 2) / 3
      1.3333
    """
    predictions, targets = _regression("huber", predictions, targets)
    return _reduce("huber", optax.losses.huber_loss(predictions, targets, delta=delta), weights)


def _check_binary_labels(loss: str, labels: Array, allowed: tuple[float, ...], soft: bool = False) -> None:
    """Concrete labels only: integers must be in ``allowed``; floats in ``[min, max]`` of it (``soft``) or in it."""
    if not is_concrete(labels) or np.size(labels) == 0:
        return
    values = np.asarray(labels)
    if jnp.issubdtype(values.dtype, jnp.integer) or not soft:
        unique = np.unique(values)
        if not np.isin(unique, allowed).all():
            raise ValueError(f"{loss}: argument `labels` expected values in {set(allowed)}, given values {unique.tolist()[:10]}.")
    elif not ((values >= min(allowed)) & (values <= max(allowed))).all():
        raise ValueError(
            f"{loss}: argument `labels` expected probabilities in [{min(allowed)}, {max(allowed)}], given values in "
            f"[{np.nanmin(values)}, {np.nanmax(values)}] with shape {values.shape}."
        )


def binary_cross_entropy_with_logits(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Binary cross-entropy of ``sigmoid(logits)`` against labels in [0, 1] (numerically stable).

    Computed from the logits directly (``optax.losses.sigmoid_binary_cross_entropy``), so large logits
    neither overflow nor give ``log(0)``; prefer it to ``binary_cross_entropy`` after a ``Sigmoid()``.

    Args:
      logits: ``(batch,)`` or ``(batch, outputs)`` float, one logit per binary target.
      labels: same shape as ``logits``: 0/1 labels (int or float) or soft labels (probabilities in [0, 1]).
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.

    Returns:
      A float scalar.

    Raises:
      TypeError: ``logits`` are not floating point.
      ValueError: ``logits`` and ``labels`` differ in shape, ``weights`` is not ``(batch,)``, or (when the
        labels are concrete, i.e. outside ``jit``) an integer label is not 0 or 1, or a float label lies
        outside [0, 1].

    Example:
      >>> logits, labels = jnp.array([2.0, -1.0, 0.0]), jnp.array([1, 0, 1])
      >>> round(float(nnjax.losses.binary_cross_entropy_with_logits(logits, labels)), 4)
      0.3778
    """
    name = "binary_cross_entropy_with_logits"
    _check_float(name, logits, "logits")
    _check_same_shape(name, logits, labels, ("logits", "labels"))
    _check_binary_labels(name, labels, (0, 1), soft=True)
    labels = jnp.asarray(labels, jnp.result_type(logits))
    return _reduce(name, optax.losses.sigmoid_binary_cross_entropy(logits, labels), weights)


def binary_cross_entropy(probabilities: Array, labels: Array, weights: Array | None = None, *, eps: float = 1e-7) -> Array:
    """Binary cross-entropy of probabilities (e.g. after ``Sigmoid()``): ``-(y log p + (1 - y) log(1 - p))``.

    ``p`` is clipped to ``[eps, 1 - eps]``; prefer ``binary_cross_entropy_with_logits`` for stability.

    Args:
      probabilities: ``(batch,)`` or ``(batch, outputs)`` float, each in [0, 1].
      labels: same shape as ``probabilities``: 0/1 labels (int or float) or soft labels in [0, 1].
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.
      eps: the clipping margin of ``probabilities`` (keyword-only), so the loss stays finite at 0 and 1.

    Returns:
      A float scalar.

    Raises:
      TypeError: ``probabilities`` are not floating point.
      ValueError: ``probabilities`` and ``labels`` differ in shape, ``weights`` is not ``(batch,)``, or
        (concrete labels only) an integer label is not 0 or 1, or a float label lies outside [0, 1].

    Example:
      >>> probabilities = jax.nn.sigmoid(jnp.array([2.0, -1.0, 0.0]))
      >>> round(float(nnjax.losses.binary_cross_entropy(probabilities, jnp.array([1, 0, 1]))), 4)
      0.3778
    """
    name = "binary_cross_entropy"
    _check_float(name, probabilities, "probabilities")
    _check_same_shape(name, probabilities, labels, ("probabilities", "labels"))
    _check_binary_labels(name, labels, (0, 1), soft=True)
    p = jnp.clip(probabilities, eps, 1.0 - eps)
    y = jnp.asarray(labels, p.dtype)
    return _reduce(name, -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p)), weights)


def softmax_cross_entropy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Cross-entropy of ``softmax(logits)`` against integer class labels.

    Args:
      logits: ``(batch, ..., classes)`` float, unnormalized scores (no ``Softmax()`` before it).
      labels: ``(batch, ...)`` integers in ``[0, classes)``.
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.

    Returns:
      A float scalar: the mean of ``-log softmax(logits)[label]``.

    Raises:
      TypeError: ``logits`` are not floating point, or float labels (use ``softmax_cross_entropy_soft`` for
        one-hot or soft labels).
      ValueError: ``labels`` is not ``logits.shape[:-1]``, ``weights`` is not ``(batch,)``, or (eagerly, with
        concrete labels) a label is out of range.

    Example:
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
      >>> round(float(nnjax.losses.softmax_cross_entropy(logits, jnp.array([0, 2]))), 4)
      1.2395
    """
    name = "softmax_cross_entropy"
    _check_float(name, logits, "logits")
    check_integer_labels(name, labels, jnp.shape(logits)[-1] if jnp.ndim(logits) else None)
    if jnp.shape(logits)[:-1] != jnp.shape(labels):
        raise ValueError(
            f"{name}: expected `labels` of shape {tuple(jnp.shape(logits)[:-1])} for `logits` of shape "
            f"{tuple(jnp.shape(logits))}, given {tuple(jnp.shape(labels))}."
        )
    return _reduce(name, optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels), weights)


def softmax_cross_entropy_soft(logits: Array, targets: Array, weights: Array | None = None) -> Array:
    """Cross-entropy of ``softmax(logits)`` against one-hot or soft targets (rows sum to 1).

    Args:
      logits: ``(batch, ..., classes)`` float, unnormalized scores.
      targets: same shape as ``logits``: a probability distribution over the classes in each row (one-hot,
        label-smoothed, a teacher's softmax); rows are not checked to sum to 1.
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.

    Returns:
      A float scalar: the mean of ``-sum(targets * log softmax(logits), axis=-1)``.

    Raises:
      TypeError: ``logits`` are not floating point.
      ValueError: ``logits`` and ``targets`` differ in shape, or ``weights`` is not ``(batch,)``.

    Example:
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
      >>> targets = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
      >>> round(float(nnjax.losses.softmax_cross_entropy_soft(logits, targets)), 4)
      1.7395
    """
    name = "softmax_cross_entropy_soft"
    _check_float(name, logits, "logits")
    _check_same_shape(name, logits, targets, ("logits", "targets"))
    targets = jnp.asarray(targets, jnp.result_type(logits))
    return _reduce(name, optax.losses.softmax_cross_entropy(logits, targets), weights)


def hinge(scores: Array, labels: Array, weights: Array | None = None) -> Array:
    """Binary hinge loss ``max(0, 1 - labels * scores)`` with labels in {-1, +1} (a linear SVM's loss).

    Args:
      scores: ``(batch,)`` or ``(batch, outputs)`` float, unbounded decision values.
      labels: same shape as ``scores``, each -1 or +1 (int or float; 0/1 labels are refused).
      weights: optional ``(batch,)`` non-negative weight per example (0/1 is a mask); the result is then
        ``sum(weights * per_example_loss) / sum(weights)``, each example's loss being its mean over the other axes.

    Returns:
      A float scalar.

    Raises:
      TypeError: ``scores`` are not floating point.
      ValueError: ``scores`` and ``labels`` differ in shape, ``weights`` is not ``(batch,)``, or (concrete
        labels only) a label is not -1 or +1.

    Example:
      >>> scores, labels = jnp.array([2.0, 0.5, -1.0]), jnp.array([1, 1, 1])
      >>> round(float(nnjax.losses.hinge(scores, labels)), 4)   # (0 + 0.5 + 2) / 3
      0.8333
    """
    name = "hinge"
    _check_float(name, scores, "scores")
    _check_same_shape(name, scores, labels, ("scores", "labels"))
    _check_binary_labels(name, labels, (-1, 1))
    return _reduce(name, optax.losses.hinge_loss(scores, jnp.asarray(labels, jnp.result_type(scores))), weights)


INTEGER_LABEL_LOSSES = (softmax_cross_entropy,)
