"""How nnjax compiles: ``jit`` is ``jax.jit`` with the XLA options of the ``compiler_options`` kernel.

Every program nnjax compiles itself (train and eval steps, fused ``fit`` epochs, ``predict``,
ensembles) goes through ``jit``. To compile your own step (``make_train_step(..., jit=False)``) the
same way, use ``nnjax.jit(step, donate_argnums=0)``; plain ``jax.jit`` gives XLA's stock choices.

The one option today is for the CPU backend. XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK by
default; XLA's own convolution kernels ran the anchor CNN's training step (two 3x3 convolutions on
28x28 images, batch 128) 1.4x faster on a 2-core AMD EPYC (77 -> 53 ms in ``benchmarks/anchors.py``).
Dots and reductions keep the default (YNNPACK). An XLA that does not know the option compiles
without it. Other backends get no options, nor do the generic kernels (``nnjax.config.kernels``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnjax._src.config import use_cpu_form

_YNN_TYPES = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU's default YNNPACK list (individual dots, reductions, individual convolutions) less convolutions.
CPU_COMPILER_OPTIONS: dict[str, Any] = {
    _YNN_TYPES: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def default_compiler_options(backend: str | None = None) -> dict[str, Any] | None:
    """The ``compiler_options`` nnjax passes to ``jax.jit`` on ``backend`` (default: JAX's default backend).

    ``CPU_COMPILER_OPTIONS`` on CPU when this XLA accepts them (checked once by compiling a scalar
    program), else None.
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return None
    try:
        jax.jit(jnp.negative, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.float32(0)).compile()
    except Exception:  # noqa: BLE001 - any rejection means this XLA does not know the option
        return None
    return dict(CPU_COMPILER_OPTIONS)


def jit_options() -> dict[str, Any] | None:
    """The ``compiler_options`` of ``jit`` now: ``default_compiler_options()`` under the CPU form of the
    ``compiler_options`` kernel (``nnjax.config.kernels``), else None (XLA's defaults)."""
    return default_compiler_options() if use_cpu_form("compiler_options") else None


def jit(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_kwargs)`` with ``jit_options()``, read when it is called: call it when building
    a step, not at import (it asks JAX for the default backend).
    """
    return jax.jit(fn, compiler_options=jit_options(), **jit_kwargs)
