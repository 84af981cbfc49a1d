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

from nnjax._src.kernels import default_compiler_options, jit_options


def jit(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_kwargs)`` with ``jit_options()``, read when it is called: call it when building
    a step, not at import (it asks JAX for the default backend).
    """
    return jax.jit(fn, compiler_options=jit_options(), **jit_kwargs)


__all__ = ["default_compiler_options", "jit", "jit_options"]
