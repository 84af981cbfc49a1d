"""Checks of what a layer's ``init`` and ``apply`` are given, wrapped around every ``Layer`` once.

``Layer(init, apply, name)`` wraps both functions with these checks, so a mistake made at any layer
(an int seed for a key, a Keras-style ``(None, 64)`` input shape, ``apply`` without its state) is
reported with the layer's name, the argument, what was expected and what was given. The checks look at
Python types, shapes and dtypes only: they run while tracing and cost nothing in compiled code.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnjax._src.checks import all_finite, at_top_level, check, checked, checks_enabled, staging
from nnjax._src.errors import LayerError

_MISSING = object()
_CHECKED = "__nnjax_checked__"


def check_key(where: str, key: Any, *, optional: bool = False) -> None:
    """Raises TypeError unless ``key`` is a PRNG key (a typed key array, or a raw ``uint32[..., 2]``)."""
    if key is None and optional:
        return
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype == jnp.uint32 and jnp.shape(key)[-1:] == (2,):
        return
    given = (
        f"{type(key).__name__} {key!r}"
        if isinstance(key, (int, float, str)) or key is None
        else (
            f"{type(key).__name__} of dtype {dtype} and shape {tuple(jnp.shape(key))}"
            if dtype is not None
            else type(key).__name__
        )
    )
    raise TypeError(
        f"{where}: argument `key` expected a PRNG key, given {given}. "
        f"Hint: make one from a seed with `jax.random.key(seed)`, e.g. `jax.random.key(0)`."
    )


def _is_dim(d: Any) -> bool:
    return isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0


def _shape_problem(shape: Any) -> str | None:
    """Why ``shape`` is not a shape pytree (a tuple of non-negative ints, or containers of them), or None."""
    if isinstance(shape, (tuple, list)):
        if all(_is_dim(d) for d in shape):
            return None
        if any(d is None for d in shape):
            return (
                f"given {tuple(shape)}, which holds None. Hint: input_shape excludes the batch axis (Keras's "
                f"`None`); write the shape of one example, e.g. {tuple(d for d in shape if d is not None)}."
            )
        if all(isinstance(d, (tuple, list, Mapping)) for d in shape):
            return next((p for p in map(_shape_problem, shape) if p), None)
        return f"given {shape!r}: dimensions must be non-negative ints."
    if isinstance(shape, Mapping):
        return next((p for p in map(_shape_problem, shape.values()) if p), None)
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        return f"given the int {shape}. Hint: a shape is a tuple, write `({shape},)`."
    return f"given {type(shape).__name__} {shape!r}."


def check_input_shape(where: str, input_shape: Any) -> None:
    """Raises TypeError unless ``input_shape`` is one example's shape (or a tuple/dict of them)."""
    problem = _shape_problem(input_shape)
    if problem:
        raise TypeError(
            f"{where}: argument `input_shape` expected the shape of ONE example as a tuple of ints (no batch "
            f"axis), e.g. (64,) or (28, 28, 1), or a tuple/dict of such shapes for a multi-input layer; {problem}"
        )


def check_param_dtype(where: str, dtype: Any) -> None:
    """Raises TypeError unless ``dtype`` is None or a floating dtype (``jnp.float32``, ``jnp.bfloat16``)."""
    if dtype is None:
        return
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(
            f"{where}: argument `dtype` expected a floating-point dtype for the parameters such as jnp.float32 "
            f"or jnp.bfloat16, given {dtype!r}."
        )


def is_checked(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is already a ``checked_init`` or ``checked_apply`` (a Layer's own)."""
    return getattr(fn, _CHECKED, False)


def checked_init(init: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``init`` with its ``key``, ``input_shape`` and ``dtype`` checked first."""
    if is_checked(init):
        return init
    where = f"{name}.init"

    @functools.wraps(init)
    def checked(key: Any = _MISSING, input_shape: Any = _MISSING, *args: Any, **kwargs: Any) -> Any:
        if input_shape is _MISSING:
            raise TypeError(
                f"{where}: expected (key, input_shape, dtype=jnp.float32), given "
                f"{0 if key is _MISSING else 1} argument(s). Hint: `params, state = layer.init(jax.random.key(0), "
                f"(64,))` with the shape of one example."
            )
        check_key(where, key, optional=True)
        check_input_shape(where, input_shape)
        dtype = args[0] if args else kwargs.get("dtype", jnp.float32)
        check_param_dtype(where, dtype)
        return init(key, input_shape, *args, **kwargs)

    setattr(checked, _CHECKED, True)
    return checked


def checked_apply(apply: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``apply`` with its arguments counted and its ``key`` checked first."""
    if is_checked(apply):
        return apply
    where = f"{name}.apply"

    @functools.wraps(apply)
    def checked(params: Any = _MISSING, state: Any = _MISSING, x: Any = _MISSING, *args: Any, **kwargs: Any) -> Any:
        if x is _MISSING:
            given = sum(a is not _MISSING for a in (params, state))
            raise TypeError(
                f"{where}: expected (params, state, x, *, key=None, train=False), given {given} positional "
                f"argument(s). Hint: pass the state that init returned, `y, state = layer.apply(params, state, x)` "
                f"(`{{}}` for a layer without state); stax-style `apply(params, x)` has no state."
            )
        if args:
            raise TypeError(
                f"{where}: `key` and `train` are keyword-only, given {len(args)} more positional argument(s). "
                f"Hint: `layer.apply(params, state, x, key=key, train=True)`."
            )
        if kwargs.get("key") is not None:
            check_key(where, kwargs["key"])
        if checks_enabled():
            return _apply_in_checked_mode(apply, where, params, state, x, kwargs)
        return apply(params, state, x, **kwargs)

    setattr(checked, _CHECKED, True)
    return checked


def _apply_in_checked_mode(apply: Callable[..., Any], where: str, params: Any, state: Any, x: Any, kwargs: dict) -> Any:
    """``apply`` with its input and output checked for NaN/Inf (``nnjax.config.checks``): staged inside a
    functionalized program; functionalized here when called outside any transformation."""
    if not staging():
        if not at_top_level():  # inside the caller's own jit: it must be wrapped in `checked` to report
            return apply(params, state, x, **kwargs)
        run = checked(lambda p, s, v: _apply_in_checked_mode(apply, where, p, s, v, kwargs))
        return run(params, state, x)
    check(all_finite(x), f"{where}: argument `x` holds NaN or Inf.")
    y, new_state = apply(params, state, x, **kwargs)
    check(all_finite(y), f"{where}: the output holds NaN or Inf (this is the first layer whose output is not finite).")
    return y, new_state


def check_children(combinator: str, names: Sequence[str], params: Any, state: Any) -> None:
    """Raises LayerError unless ``params`` and ``state`` hold exactly one entry per sub-layer name.

    Catches params or state of another model, a state of ``{}`` or ``None``, and params and state swapped.
    """
    for argument, tree in (("params", params), ("state", state)):
        if isinstance(tree, Mapping) and set(tree) == set(names):
            continue
        if isinstance(tree, Mapping):
            missing, extra = sorted(set(names) - set(tree)), sorted(set(tree) - set(names))
            given = (
                f"{sorted(tree)}"
                + (f" (missing {missing}" if missing else " (")
                + (f"{', ' if missing and extra else ''}unexpected {extra})" if extra else ")")
            )
        else:
            given = type(tree).__name__
        hint = (
            "pass the state returned by this model's init (or by its previous apply), even when it looks empty"
            if argument == "state"
            else "params come from this model's init; the params of another model do not fit"
        )
        raise LayerError(
            f"{combinator}: argument `{argument}` expected a dict with entries {list(names)}, given {given}. "
            f"Hint: {hint}."
        )
