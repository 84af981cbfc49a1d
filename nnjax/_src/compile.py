"""How nnjax compiles: ``jit`` is ``jax.jit`` with the XLA options of the ``compiler_options`` kernel.

Every program nnjax compiles itself (train and eval steps, fused ``fit`` epochs, ``predict``,
ensembles) goes through ``jit``. To compile your own step (``make_train_step(..., jit=False)``) the
same way, use ``nnjax.jit(step, donate_argnums=0)``; plain ``jax.jit`` gives XLA's stock choices.

The options are the ``compiler_options`` kernel (``nnjax._src.kernels``): XLA:CPU's own convolutions
instead of YNNPACK's in the CPU form, XLA's defaults in the generic form and on other backends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnjax._src.checks import checked_jit, checks_enabled, compiles_on_its_own
from nnjax._src.kernels import default_compiler_options, jit_options, setup_jit_options
from nnjax._src.key_order import in_key_order, key_order


def jit(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_kwargs)`` with nnjax's XLA ``compiler_options`` (``jit_options()``).

    The options are read when ``jit`` is called: call it when building a step, not at import (it asks
    JAX for the default backend). The result is a ``jax.jit`` function in every respect (``.lower``,
    caching, donation), except in the checked mode (``nnjax.config.checks``), where it is a function that
    runs the ``checkify``-functionalized program and raises ``CheckError`` when a check fails.

    Args:
      fn: the function to compile, e.g. a step from ``make_train_step(..., jit=False)``.
      **jit_kwargs: passed to ``jax.jit`` (``donate_argnums``, ``static_argnames``, ``in_shardings``,
        ...), except ``compiler_options``, which this function sets.

    Returns:
      The jitted function, with the same signature as ``fn``.

    Raises:
      TypeError: ``fn`` is not callable, or ``jit_kwargs`` holds ``compiler_options`` or an argument
        ``jax.jit`` does not take.

    Example:
      >>> double_plus_one = nnjax.jit(lambda x: 2 * x + 1)
      >>> double_plus_one(jnp.arange(3.0)).tolist()
      [1.0, 3.0, 5.0]
      >>> step = nnjax.jit(lambda total, x: total + x.sum(), donate_argnums=0)   # a donated carry
      >>> float(step(jnp.float32(1), jnp.ones(4)))
      5.0
    """
    if checks_enabled():  # the checked mode: functionalized by checkify, failed checks raised after the call
        return checked_jit(fn, compiler_options=jit_options(), **jit_kwargs)
    return jax.jit(fn, compiler_options=jit_options(), **jit_kwargs)


def setup_jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.jit(fn)`` with the XLA options of a setup program (``setup_jit_options``): one that runs once or
    briefly (initialization, an epoch's data order), so its compile time matters more than its run time."""
    return jax.jit(fn, compiler_options=setup_jit_options())


def setup_program(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled as a setup program (``setup_jit``) when called on its own, at top level or under eager
    ``jax.vmap`` (there, compiled batched, still one program); ``fn`` itself inside a staging transformation
    (``jit``, ``eval_shape``, ``scan``), which traces it into the caller's program."""
    compiled = setup_jit(fn)
    return lambda *args: (compiled if compiles_on_its_own() else fn)(*args)


def init_in_one_program(init: Callable[..., Any]) -> Callable[..., Any]:
    """A layer's ``init`` that runs as ONE compiled setup program when called on its own (at top level, or
    under eager ``jax.vmap``): op by op, each parameter shape's random draw was a compilation of its own
    (the README tour's ``model.init``: 8 programs, 0.86 s cold). Under a staging transformation (``jit``,
    ``eval_shape``, ``scan``) it is ``init`` itself, traced into the caller's program. The values are
    ``init``'s, key for key (compiled rather than op by op, a normal draw may round differently in its
    last bit), and so is the order of the dicts' keys (which JAX sorts)."""

    @functools.wraps(init)
    def run(key: Any, input_shape: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 1 or set(kwargs) - {"dtype"} or not compiles_on_its_own():
            return init(key, input_shape, *args, **kwargs)
        dtype = jnp.dtype(args[0] if args else kwargs.get("dtype", jnp.float32))
        shape_leaves, shape_def = jax.tree.flatten(input_shape)
        program, order = _init_program(init, shape_def, tuple(shape_leaves), dtype)
        return in_key_order(program(key), order["tree"])

    return run


@functools.lru_cache(maxsize=64)
def _init_program(
    init: Callable[..., Any], shape_def: Any, shape_leaves: tuple, dtype: Any
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """``key -> init(key, input_shape, dtype)`` as a setup program, one per layer, input shape and dtype, and
    the ``key_order`` of what it returns (noted while tracing)."""
    input_shape = jax.tree.unflatten(shape_def, shape_leaves)
    order: dict[str, Any] = {}

    def traced(key: Any) -> Any:
        tree = init(key, input_shape, dtype)
        order["tree"] = key_order(tree)
        return tree

    return setup_jit(traced), order


__all__ = ["default_compiler_options", "init_in_one_program", "jit", "jit_options", "setup_jit", "setup_program"]
