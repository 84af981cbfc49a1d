"""Inference over whole data sets: ``predict`` and ``evaluate``, and the traceable functions behind them.

``make_predict_fn`` and ``make_evaluate_fn`` are traceable, so the drivers reuse them inside compiled
programs (``fit``'s validation, ``fit_many``'s vmapped validation); ``predict`` and ``evaluate`` compile them
once per model, batch size and input shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnjax._src.arguments import check_model, check_train_state
from nnjax._src.checks import checks_enabled
from nnjax._src.compile import jit as compile_jit
from nnjax._src.core import Layer
from nnjax._src.errors import LayerError, LayerTypeError
from nnjax._src.objective import Loss, Metric, Objective, as_objective
from nnjax._src.train import TrainState, eval_key
from nnjax._src.training_data import as_arrays, as_data, check_fit_data
from nnjax._src.types import Array


def make_predict_fn(model: Layer, batch_size: int = 1024) -> Callable[[TrainState, Any], Array]:
    """A traceable ``(train_state, x) -> predictions`` over a whole set, ``batch_size`` examples at a time."""

    def predict_fn(train_state: TrainState, x: Any) -> Array:
        def one(xi):
            return model.apply(train_state.params, train_state.state, xi[None], train=False)[0][0]

        return jax.lax.map(one, x, batch_size=min(batch_size, x.shape[0]))

    return predict_fn


def make_evaluate_fn(
    model: Layer, loss: Loss | Objective, metrics: Mapping[str, Metric] | None = None, batch_size: int = 1024
) -> Callable[[TrainState, Any, Any], dict[str, Array]]:
    """A traceable ``(train_state, x, y) -> {"loss": ..., metric or aux: ...}`` over a whole set, ``train=False``.

    A ``loss`` and its metrics see the predictions for the whole set at once (so ``r2_score`` is the
    set's). A general objective runs on chunks of ``batch_size`` examples (``x``, or ``(x, y)`` when ``y``
    is given), chunk ``i`` with ``fold_in(eval_key, i)``; its loss and aux are the chunks' means weighted
    by their sizes, which is the set's mean for a mean-reduced objective.
    """
    if isinstance(loss, Objective):
        return _objective_evaluate_fn(as_objective("evaluate", model, loss, metrics), batch_size)
    predict_fn = make_predict_fn(model, batch_size)

    def evaluate_fn(train_state, x, y):
        predictions = predict_fn(train_state, x)
        return {"loss": loss(predictions, y), **{name: fn(predictions, y) for name, fn in (metrics or {}).items()}}

    return evaluate_fn


def _objective_evaluate_fn(objective_fn: Objective, batch_size: int) -> Callable[..., dict[str, Array]]:
    def evaluate_fn(train_state, x, y=None):
        data = as_data(x, y)
        n = jax.tree.leaves(data)[0].shape[0]
        size = min(batch_size, n)
        chunks, rest = divmod(n, size)
        key = eval_key(train_state)

        def one(i, batch):
            value, (_, aux) = objective_fn(
                train_state.params, train_state.state, batch, key=jax.random.fold_in(key, i), train=False
            )
            return {"loss": value, **aux}

        head = jax.tree.map(lambda a: a[: chunks * size].reshape(chunks, size, *a.shape[1:]), data)
        per_chunk = jax.lax.map(lambda args: one(*args), (jnp.arange(chunks), head))
        total = jax.tree.map(lambda v: jnp.sum(v, axis=0) * size, per_chunk)
        if rest:
            tail = one(chunks, jax.tree.map(lambda a: a[chunks * size :], data))
            total = jax.tree.map(lambda t, v: t + v * rest, total, tail)
        return jax.tree.map(lambda t: t / n, total)

    return evaluate_fn


def _predict(train_state: TrainState, x: Array, *, model: Layer, batch_size: int) -> Array:
    return make_predict_fn(model, batch_size)(train_state, x)


def _evaluate(train_state, x, y, *, model, loss, metrics: tuple, batch_size: int) -> dict[str, Array]:
    return make_evaluate_fn(model, loss, dict(metrics), batch_size)(train_state, x, y)


# Compiled on first use, not at import (compile_jit asks for the backend). The model is a static
# argument (a Layer hashes by its functions): one compilation per model and input shape.
def compiled_predict() -> Callable[..., Array]:
    return _compiled_predict(checks_enabled())


def compiled_evaluate() -> Callable[..., dict[str, Array]]:
    return _compiled_evaluate(checks_enabled())


@functools.cache
def _compiled_predict(checked: bool) -> Callable[..., Array]:  # one per mode: the checked mode compiles its own
    return compile_jit(_predict, static_argnames=("model", "batch_size"))


@functools.cache
def _compiled_evaluate(checked: bool) -> Callable[..., dict[str, Array]]:
    return compile_jit(_evaluate, static_argnames=("model", "loss", "metrics", "batch_size"))


def predict(model: Layer, train_state: TrainState, x: Any, *, batch_size: int = 1024) -> Array:
    """The model's outputs for ``x`` in inference mode: ``model.apply(..., train=False)``.

    BatchNorm uses its running statistics and Dropout is off. Each example is run as a batch of one
    (``jax.lax.map`` over ``x``, ``batch_size`` of them vectorized at a time), so the outputs do not depend on
    how ``x`` is split. Compiled once per model, batch size and input shape: calling it again does not
    recompile.

    Args:
      model: the network the train state was trained for.
      train_state: a ``TrainState`` (its ``params`` and ``state`` are used).
      x: ``(n, *input_shape)`` inputs, NumPy or JAX.
      batch_size: examples computed together (keyword-only); lower it to save memory.

    Returns:
      A device array ``(n, *output_shape)``: the model's raw outputs (logits for a classifier).

    Raises:
      LayerError, LayerTypeError: ``x`` does not suit the model (raised by its layers while tracing).

    Example:
      >>> model = nnjax.Dense(2)
      >>> ts = nnjax.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (3,))
      >>> nnjax.predict(model, ts, np.ones((5, 3), np.float32)).shape
      (5, 2)
    """
    check_model("predict", model)
    check_train_state("predict", train_state, required=True)
    x = jnp.asarray(x)
    try:
        return compiled_predict()(train_state, x, model=model, batch_size=batch_size)
    except (LayerError, LayerTypeError) as error:
        raise type(error)(
            f"predict: argument `x` expected (n, *input_shape), given shape {x.shape}, so each example has shape "
            f"{x.shape[1:]}; the model then said: {error} Hint: to predict one example `e`, pass `e[None]`."
        ) from None


def evaluate(
    model: Layer,
    train_state: TrainState,
    x: Any,
    y: Any = None,
    *,
    loss: Loss | Objective,
    metrics: Mapping[str, Metric] | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Loss and metrics (or a general objective's aux) over a whole data set with ``train=False``.

    ``train=False``: BatchNorm's running statistics, no Dropout. A ``loss`` and its metrics see the
    predictions for the whole set at once (so ``r2_score`` is the set's); a general objective runs on
    chunks of ``batch_size`` examples with the run's ``eval_key`` and its values are the chunks' means
    weighted by size. See ``make_evaluate_fn``.

    Args:
      model: the network.
      train_state: a ``TrainState`` (``params``, ``state`` and ``key`` are used).
      x: inputs ``(n, *input_shape)``, NumPy or JAX; checked as in ``fit``.
      y: targets ``(n, ...)``; may be None only for a general objective, which then gets the inputs alone.
      loss: ``loss(predictions, y) -> scalar`` or an ``nnjax.objective`` (keyword-only).
      metrics: optional ``name -> fn(predictions, y)`` (loss form only).
      batch_size: examples computed together.

    Returns:
      ``{"loss": float, <metric or aux name>: float, ...}`` (Python floats).

    Raises:
      ValueError: bad data (as in ``fit``), ``y`` missing for a loss, or ``metrics`` with a general objective.
      TypeError: integer inputs to a model that expects floats, float labels for an integer-label loss, or
        ``loss`` neither callable nor an ``nnjax.objective``.

    Example:
      >>> model = nnjax.Dense(2)
      >>> ts = nnjax.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (3,))
      >>> x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])   # same inputs: half the labels are right
      >>> logs = nnjax.evaluate(model, ts, x, y, loss=nnjax.losses.softmax_cross_entropy,
      ...                       metrics={"accuracy": nnjax.metrics.accuracy})
      >>> sorted(logs), type(logs["loss"]).__name__, logs["accuracy"]
      (['accuracy', 'loss'], 'float', 0.5)
    """
    check_model("evaluate", model)
    check_train_state("evaluate", train_state, required=True)
    x, y = as_arrays(x), as_arrays(y)
    as_objective("evaluate", model, loss, metrics)  # raises for a bad `loss` or `metrics`
    check_fit_data("evaluate", model, loss, x, y, None, None)
    values = compiled_evaluate()(
        train_state,
        jnp.asarray(x),
        None if y is None else jnp.asarray(y),
        model=model,
        loss=loss,
        metrics=tuple((metrics or {}).items()),
        batch_size=batch_size,
    )
    return {name: float(value) for name, value in values.items()}
