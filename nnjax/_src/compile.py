"""How nnjax compiles: ``jit`` is ``jax.jit`` with the XLA options of the ``compiler_options`` kernel.

Every program nnjax compiles itself (train and eval steps, fused ``fit`` epochs, ``predict``,
ensembles) goes through ``jit``. To compile your own step (``make_train_step(..., jit=False)``) the
same way, use ``nnjax.jit(step, donate_argnums=0)``; plain ``jax.jit`` gives XLA's stock choices.

The options are the ``compiler_options`` kernel (``nnjax._src.kernels``): XLA:CPU's own convolutions
instead of YNNPACK's in the CPU form, XLA's defaults in the generic form and on other backends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from nnjax._src.checks import checked_jit, checks_enabled
from nnjax._src.kernels import default_compiler_options, jit_options, setup_jit_options


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


__all__ = ["default_compiler_options", "jit", "jit_options", "setup_jit"]
