"""What a train step minimizes: the general objective, and the short loss form built on it.

Two forms are taken wherever nnjax takes a loss (``make_train_step``, ``make_eval_step``, ``fit``,
``fit_stream``, ``fit_many``, ``per_example_grads``, ``make_dp_train_step``):

    loss(predictions, targets) -> scalar                                   # the short form

    @nnjax.objective                                                       # the general form
    def elbo(params, state, batch, *, key, train) -> (loss, (new_state, aux))

The short form runs the model on ``x`` and compares its predictions with ``y``. The general form gets
everything: the params and state of the whole model (one pytree, e.g. ``{"encoder": ..., "decoder": ...}``
from ``nnjax.named``), the batch as the data gives it, the step's key (split it for several draws) and the
mode. It returns the scalar to minimize, the model's new state and ``aux``, a dict of scalars that lands
in the step's metrics and in ``fit``'s history beside ``"loss"``. The short form is one such objective
(``loss_objective``), so there is one train step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnjax._src.checks import all_finite, check, staging
from nnjax._src.core import Layer
from nnjax._src.types import Array, Params, PRNGKey, State

Loss = Callable[..., Array]  # loss(predictions, targets) -> scalar
Metric = Callable[..., Array]  # metric(predictions, targets) -> scalar
Aux = dict[str, Array]  # named scalars reported with the loss
ObjectiveFn = Callable[..., tuple[Array, tuple[State, Aux]]]


class Objective(NamedTuple):
    """A general objective ``fn(params, state, batch, *, key, train) -> (loss, (new_state, aux))``.

    Build it with ``nnjax.objective`` (as a decorator). Called like the function it wraps; hashable by
    that function, so compiled code keyed on it compiles once. Being an ``Objective`` (rather than a plain
    function) is what tells ``make_train_step``, ``fit`` and the others to pass it the whole batch instead of
    treating it as a ``loss(predictions, targets)``.

    Attributes:
      fn: the wrapped ``fn(params, state, batch, *, key, train) -> (loss, (new_state, aux))``.

    Example:
      >>> def zero(params, state, batch, *, key, train):
      ...     return jnp.zeros(()), (state, {})
      >>> obj = nnjax.objective(zero)
      >>> isinstance(obj, nnjax.Objective), obj.fn is zero, obj
      (True, True, objective(zero))
      >>> obj({}, {}, None, key=None, train=True)[1]
      ({}, {})
    """

    fn: ObjectiveFn

    def __call__(
        self, params: Params, state: State, batch: Any, *, key: PRNGKey | None, train: bool
    ) -> tuple[Array, tuple[State, Aux]]:
        return self.fn(params, state, batch, key=key, train=train)

    def __repr__(self) -> str:
        return f"objective({getattr(self.fn, '__name__', repr(self.fn))})"


def objective(fn: ObjectiveFn) -> Objective:
    """Marks ``fn(params, state, batch, *, key, train) -> (loss, (new_state, aux))`` as a general objective.

    Args:
      fn: ``params`` and ``state`` are the model's (whole) pytrees; ``batch`` is one batch as the data
        gives it (``fit(model, obj, opt, x)``: ``x[idx]``; ``fit(..., x, y)``: ``(x[idx], y[idx])``);
        ``key`` is the step's key (in evaluation a fixed key of the run); ``train`` is True in the train
        step and False in evaluation. It returns the scalar loss to minimize, the new model state (return
        ``state`` when nothing changes) and ``aux``, a dict of named scalars (``{}`` for none; no name
        ``"loss"``).

    Returns:
      An ``Objective``, accepted wherever a ``loss(predictions, targets)`` is; ``fn`` itself when it is one
      already.

    Raises:
      TypeError: ``fn`` is not callable. (An aux that is not a dict of named scalars raises TypeError when a
        step first runs the objective.)

    Example:
      >>> model = nnjax.Dense(3)
      >>> @nnjax.objective
      ... def denoising_mse(params, state, x, *, key, train):
      ...     noisy = x + 0.1 * jax.random.normal(key, x.shape)
      ...     y, state = model.apply(params, state, noisy, train=train)
      ...     return nnjax.losses.mse(y, x), (state, {"noise": jnp.mean(jnp.abs(noisy - x))})
      >>> params, state = model.init(jax.random.key(0), (3,))
      >>> loss, (state, aux) = denoising_mse(params, state, jnp.ones((4, 3)), key=jax.random.key(1), train=True)
      >>> loss.shape, sorted(aux)
      ((), ['noise'])
    """
    if isinstance(fn, Objective):
        return fn
    if not callable(fn):
        raise TypeError(f"objective: argument `fn` expected a function, given {type(fn).__name__}.")
    return Objective(fn)


def loss_objective(model: Layer, loss: Loss, metrics: Mapping[str, Metric] | None = None) -> Objective:
    """The short form as a general objective: ``loss(model(x), y)``, with ``metrics`` as its aux.

    ``batch`` is ``(x, y)``; each metric is ``fn(predictions, y)`` on the same forward pass.
    """
    metrics = dict(metrics or {})

    def fn(params, state, batch, *, key, train):
        x, y = batch
        predictions, new_state = model.apply(params, state, x, key=key, train=train)
        value = loss(predictions, y)
        if jnp.shape(value) != ():
            raise TypeError(
                f"{getattr(loss, '__name__', 'loss')}: expected the loss to return a scalar, given shape "
                f"{jnp.shape(value)} for predictions {jnp.shape(predictions)}. Hint: average over the batch, "
                f"e.g. `jnp.mean(...)`; nnjax's losses do."
            )
        return value, (new_state, {name: m(predictions, y) for name, m in metrics.items()})

    fn.__name__ = getattr(loss, "__name__", "loss")
    return Objective(fn)


def as_objective(where: str, model: Layer, loss: Loss | Objective, metrics: Mapping[str, Metric] | None) -> Objective:
    """``loss`` as an ``Objective``: itself when it is one, else ``loss_objective(model, loss, metrics)``.

    Raises:
      TypeError: ``loss`` is not callable.
      ValueError: ``metrics`` given with a general objective (they take predictions, which only the
        objective sees: return them in its aux instead).
    """
    if isinstance(loss, Objective):
        if metrics:
            raise ValueError(
                f"{where}: argument `metrics` is for the loss(predictions, targets) form, given {sorted(metrics)} "
                f"with the general {loss!r}. Hint: compute them inside the objective and return them in its aux dict."
            )
        return loss
    if not callable(loss):
        raise TypeError(
            f"{where}: argument `loss` expected loss(predictions, targets) or an nnjax.objective, "
            f"given {type(loss).__name__}."
        )
    required = _required_positional(loss)
    if required is not None and required > 2:
        raise TypeError(
            f"{where}: argument `loss` expected loss(predictions, targets) of two arguments, given "
            f"{getattr(loss, '__name__', type(loss).__name__)} of {required} required arguments. Hint: a "
            f"`loss_fn(params, x, y)` that runs the model itself is written as an objective: decorate "
            f"`fn(params, state, batch, *, key, train) -> (loss, (new_state, aux))` with @nnjax.objective."
        )
    check_metrics(where, metrics)
    return loss_objective(model, loss, metrics)


def _required_positional(fn: Callable[..., Any]) -> int | None:
    """How many positional arguments ``fn`` requires, or None when its signature cannot be read."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in parameters)


def check_metrics(where: str, metrics: Any) -> None:
    """Raises TypeError unless ``metrics`` is None or a dict of ``name -> fn(predictions, targets)``."""
    if metrics is None:
        return
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"{where}: argument `metrics` expected a dict of name -> fn(predictions, targets), given "
            f"{type(metrics).__name__} {metrics!r}. Hint: `metrics={{\"accuracy\": nnjax.metrics.accuracy}}` "
            f"(names are yours; strings such as 'accuracy' alone are a Keras habit)."
        )
    for name, fn in metrics.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(
                f"{where}: argument `metrics` expected a dict of name -> fn(predictions, targets), given the "
                f"entry {name!r}: {fn!r}. Hint: `{{\"accuracy\": nnjax.metrics.accuracy}}`."
            )


def check_objective_output(where: str, out: Any) -> None:
    """Raises TypeError unless ``out`` is ``(scalar loss, (new_state, aux))`` (checked at trace time)."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2):
        given = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        raise TypeError(
            f"{where}: expected the objective to return (loss, (new_state, aux)), given {given}. Hint: "
            f"`return loss, (state, {{}})` when the model has no state to update and nothing to report."
        )
    if jnp.shape(out[0]) != ():
        raise TypeError(
            f"{where}: expected the objective's loss to be a scalar, given shape {jnp.shape(out[0])}. Hint: "
            f"reduce it over the batch, e.g. `jnp.mean(...)`."
        )


def check_aux(where: str, aux: Any) -> None:
    """Raises TypeError unless ``aux`` is a dict of scalars named by strings (checked at trace time)."""
    if not isinstance(aux, Mapping):
        raise TypeError(
            f"{where}: the objective's aux expected a dict of named scalars, given {type(aux).__name__}. "
            "Hint: return (loss, (new_state, {})) when there is nothing to report."
        )
    for name, value in aux.items():
        if not isinstance(name, str) or name == "loss" or jnp.shape(value) != ():
            raise TypeError(
                f"{where}: the objective's aux expected scalars named by strings other than 'loss', given "
                f"{name!r} with shape {jnp.shape(value)}."
            )


def value_and_grad(
    objective_fn: Objective, params: Params, state: State, batch: Any, *, key: PRNGKey | None, train: bool = True
) -> tuple[tuple[Array, tuple[State, Aux]], Params]:
    """``jax.value_and_grad`` of the objective with respect to ``params``: ``((loss, (new_state, aux)), grads)``."""

    def fn(p):
        out = objective_fn(p, state, batch, key=key, train=train)
        check_objective_output(repr(objective_fn), out)
        return out

    out, grads = jax.value_and_grad(fn, has_aux=True)(params)
    check_aux(repr(objective_fn), out[1][1])
    if staging():  # the checked mode only: the predicates are not traced into ordinary programs
        check(jnp.isfinite(out[0]), f"{objective_fn!r}: the loss is NaN or Inf (the layers' outputs are finite).")
        check(all_finite(grads), f"{objective_fn!r}: the gradient holds NaN or Inf (the loss is finite).")
    return out, grads


__all__ = ["Aux", "Loss", "Metric", "Objective", "as_objective", "loss_objective", "objective", "value_and_grad"]
