"""Every backend-specific formulation in nnjax, each beside its generic form.

The layers call these kernels and read like the generic math; ``nnjax.config.kernels`` picks the forms
(``"auto"``: the CPU forms on the CPU backend, the generic ones elsewhere). The generic forms are what
GPUs and TPUs run; the CPU forms compute the same values and gradients (``tests/test_kernels.py`` checks
both on every CI run) and each stays only while its row in ``benchmarks/kernels.py`` shows a gain of at
least 10% on an anchor training step, measured in one run against the generic form. Removed so:
``avg_pool``'s reshape + mean (0.98x on a step, 1.04x in a scanned epoch of the CNN with average pools),
and the host-counted train step (1.07-1.10x on the tiny step only: tuning for dispatch).

| kernel             | generic form                          | CPU form                                      |
|--------------------|---------------------------------------|-----------------------------------------------|
| ``conv``           | ``lax.conv_general_dilated``, JAX VJP | the same forward, a VJP in canonical form     |
| ``max_pool``       | ``lax.reduce_window`` (max)           | reshape + first-maximum ``window_max``        |
| ``rnn_input``      | ``x @ w_x`` hoisted out of the scan   | the projection inside the scan, step by step  |
| ``rnn_layout``     | batch-major scan state ``(batch, h)`` | feature-major state ``(h, batch)``            |
| ``compiler_options`` | XLA's defaults                      | XLA:CPU convolutions instead of YNNPACK's;    |
|                      |                                     | setup programs compiled for compile time      |

Forward mode (``jax.jvp``, ``jax.jacfwd``) works through every generic form; under the CPU forms it
works but for ``conv`` (a custom VJP), which raises ``ForwardModeError`` naming the layer and the switch.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxlib import version as jaxlib_version

from nnjax._src.config import use_cpu_form
from nnjax._src.errors import ForwardModeError
from nnjax._src.types import Array, Params

# --- conv -------------------------------------------------------------------------------------------------


def conv(
    x: Array,
    w: Array,
    strides: tuple[int, ...],
    padding: str | Sequence[tuple[int, int]],
    dilation: tuple[int, ...],
    dimension_numbers: Any,
    groups: int,
    layer: str,
) -> Array:
    """``lax.conv_general_dilated(x, w, ...)``: ``x: (batch, *spatial, in)``, ``w: (*kernel, in // groups, out)``.

    CPU form (``groups == 1``): the same forward with a custom VJP whose two convolutions are in
    XLA:CPU's canonical form (batch-first input, features last, ``(*kernel, in, out)`` kernel). JAX's
    gradient of a convolution is a convolution in another form; XLA rewrites it to the canonical form
    at top level but not inside a loop (``lax.scan``: a ``fit`` epoch), where it then runs 10-200x
    slower (``benchmarks/kernels.py``, ``cnn``/``cnn_scan`` rows). Cost: no forward mode through it.
    """
    if groups == 1 and use_cpu_form("conv"):
        try:
            return _canonical_vjp_conv(strides, padding, dilation, dimension_numbers)(x, w)
        except TypeError as error:
            if "forward-mode" not in str(error):
                raise
            raise ForwardModeError(
                f"{layer}: forward-mode differentiation (jax.jvp, jax.jacfwd, jax.hessian) is not available "
                "through the CPU form of the `conv` kernel (a custom VJP). Hint: trace it under "
                "`with nnjax.config.kernels('generic'):` (or kernels('cpu', generic=('conv',))), or set "
                "NNJAX_KERNELS=generic."
            ) from None
    return lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dimension_numbers, feature_group_count=groups
    )


def _canonical_vjp_conv(strides, padding, dilation, dn):
    """``conv(x, w)`` (no groups) with a VJP whose two convolutions are in XLA:CPU's canonical form."""
    n = len(strides)

    def conv(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn)

    def backward(residuals, g):
        x, w = residuals
        effective = [(k - 1) * d + 1 for k, d in zip(w.shape[:n], dilation, strict=False)]
        spatial, out = x.shape[1:-1], g.shape[1:-1]
        pads = [padding] * n if isinstance(padding, str) else padding
        pads = [_explicit_pad(s, k, st, p) for s, k, st, p in zip(spatial, effective, strides, pads, strict=False)]
        # d/dx: the stride-dilated cotangent correlated with the flipped kernel, in and out swapped.
        w_t = jnp.swapaxes(jnp.flip(w, axis=tuple(range(n))), -1, -2)  # (*kernel, features, in)
        dx_pads = [
            (k - 1 - lo, s - (o - 1) * st - 1 - (k - 1 - lo) + k - 1)
            for s, o, k, st, (lo, _) in zip(spatial, out, effective, strides, pads, strict=False)
        ]
        dx = lax.conv_general_dilated(
            g, w_t, (1,) * n, dx_pads, lhs_dilation=strides, rhs_dilation=dilation, dimension_numbers=dn
        )
        # d/dw: a convolution with the channels as its batch and the batch as its features. The input's
        # padding is the convolution's (negative where the last rows reach no output): padding the
        # transposed input as a separate step made XLA:CPU emit a slow transpose (anchor CNN, second
        # convolution: 8.5 -> 7.1 ms).
        dw_pads = [
            (lo, (o - 1) * st + k - lo - s)
            for s, o, st, k, (lo, _) in zip(spatial, out, strides, effective, pads, strict=True)
        ]
        lhs = jnp.moveaxis(x, (0, n + 1), (n + 1, 0))  # (in, *spatial, batch)
        rhs = jnp.moveaxis(g, 0, n)  # (*out, batch, features)
        dw = lax.conv_general_dilated(lhs, rhs, dilation, dw_pads, rhs_dilation=strides, dimension_numbers=dn)
        return dx, jnp.moveaxis(dw, 0, n)  # dw: (in, *kernel, features) -> (*kernel, in, features)

    conv_vjp = jax.custom_vjp(conv)
    conv_vjp.defvjp(lambda x, w: (conv(x, w), (x, w)), backward)
    return conv_vjp


def _explicit_pad(size: int, kernel: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    """The (low, high) padding XLA uses: SAME puts the odd pixel at the end."""
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    return tuple(padding)


# --- pooling ----------------------------------------------------------------------------------------------


def window_args(window, strides, padding):
    dims, steps = (1, *window, 1), (1, *strides, 1)
    pads = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    return dims, steps, pads


def _non_overlapping(window: tuple[int, ...], strides: tuple[int, ...], padding: Any) -> bool:
    return window == strides and padding == "VALID"


def max_pool(x: Array, window: tuple[int, ...], strides: tuple[int, ...], padding: Any) -> Array:
    """The maximum of each window of ``x: (batch, *spatial, channels)``; its gradient goes to each window's
    first maximum (row-major), as ``lax.reduce_window``'s does.

    CPU form, for non-overlapping VALID windows: a reshape to ``(batch, h, wh, w, ww, channels)`` and
    ``window_max`` over the window axes. XLA:CPU's gradient of ``reduce_window`` (select-and-scatter) is
    the slow part of a CNN step; this one is an elementwise select (2x2 pools of the anchor CNN, ReLU +
    pool forward and backward at batch 128, 28x28x32: 9.9 -> 3.4 ms; ``benchmarks/kernels.py``).
    """
    if _non_overlapping(window, strides, padding) and use_cpu_form("max_pool"):
        return _reshape_pool(x, window, window_max)
    return lax.reduce_window(x, -jnp.inf, lax.max, *window_args(window, strides, padding))


def global_max_pool(x: Array) -> Array:
    """The maximum over all spatial axes of ``x: (batch, *spatial, channels)``: ``(batch, channels)``;
    the gradient goes to the first maximum. CPU form: ``window_max`` over the spatial axes."""
    axes = tuple(range(1, x.ndim - 1))
    if use_cpu_form("max_pool"):
        return window_max(x, axes)
    spatial = x.shape[1:-1]
    y = lax.reduce_window(x, -jnp.inf, lax.max, (1, *spatial, 1), (1, *spatial, 1), "VALID")
    return y.reshape(x.shape[0], x.shape[-1])


def _reshape_pool(x: Array, window: tuple[int, ...], reduce: Callable[..., Array]) -> Array:
    """Pools non-overlapping windows by reshaping; trailing rows that fill no window are cropped (as VALID)."""
    n = len(window)
    counts = [size // w for size, w in zip(x.shape[1:-1], window, strict=False)]
    x = x[(slice(None), *(slice(0, c * w) for c, w in zip(counts, window, strict=False)), slice(None))]
    split = [d for c, w in zip(counts, window, strict=False) for d in (c, w)]
    x = x.reshape(x.shape[0], *split, x.shape[-1])  # (B, H/wh, wh, W/ww, ww, C)
    return reduce(x, axis=tuple(range(2, 2 + 2 * n, 2)))


# Window sizes up to which ``window_max`` works cell by cell (elementwise) rather than as a reduction.
CELLWISE_MAX_CELLS = 32


def window_cells(x: Array, axis: tuple[int, ...]) -> list[Array]:
    """The cells of each window as separate arrays, row-major: ``x`` indexed at one offset along ``axis``."""
    cells = []
    for offset in itertools.product(*(range(x.shape[a]) for a in axis)):
        index = [slice(None)] * x.ndim
        for a, o in zip(axis, offset, strict=True):
            index[a] = o
        cells.append(x[tuple(index)])
    return cells


def _cellwise(x: Array, axis: tuple[int, ...]) -> bool:
    return math.prod(x.shape[a] for a in axis) <= CELLWISE_MAX_CELLS


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def window_max(x: Array, axis: tuple[int, ...]) -> Array:
    """``jnp.max(x, axis)`` whose derivative takes the first maximum along ``axis`` (row-major) only.

    The same derivative as ``lax.reduce_window`` max pooling, ties included, and cheaper on XLA:CPU than
    ``jnp.max``'s (which counts the ties and divides). A JVP rule, so forward and reverse mode both work.
    Windows of up to ``CELLWISE_MAX_CELLS`` cells are computed cell by cell, with elementwise maxima and
    selects that XLA fuses with their producer (a convolution's bias and ReLU); larger ones (global
    pools) as reductions. Under differentiation the maximum itself is a reduction even for small windows:
    XLA materializes a reduction's output once, where it would recompute an elementwise maximum inside
    every consumer, among them the slow transpose in the next convolution's weight gradient (anchor CNN
    training step 40 -> 35 ms).
    """
    if _cellwise(x, axis):
        return functools.reduce(jnp.maximum, window_cells(x, axis))
    return jnp.max(x, axis=axis)


@window_max.defjvp
def _window_max_jvp(axis: tuple[int, ...], primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    y = jnp.max(x, axis=axis)  # a reduction: see the docstring
    size = math.prod(x.shape[a] for a in axis)
    dtype = jnp.int8 if size < 128 else jnp.int32
    position = jnp.zeros(x.shape, dtype)  # each element's row-major index within its window
    for a in axis:
        position = position * x.shape[a] + lax.broadcasted_iota(dtype, x.shape, a)
    # `first`: the index of each window's first maximum; `size` where none equals it (a NaN maximum).
    if _cellwise(x, axis):
        first = jnp.full(y.shape, size, dtype)
        for k, cell in reversed(list(enumerate(window_cells(x, axis)))):  # the first equal cell wins
            first = jnp.where(cell == y, jnp.asarray(k, dtype), first)
        first = jnp.expand_dims(first, axis)
    else:
        first = jnp.min(jnp.where(x == jnp.expand_dims(y, axis), position, size), axis=axis, keepdims=True)
    # Transposed (reverse mode), this sum is a single select of the broadcast cotangent.
    return y, jnp.sum(jnp.where(position == first, dx, jnp.zeros_like(dx)), axis=axis)


# --- recurrent scans --------------------------------------------------------------------------------------


def hoist_rnn_input() -> bool:
    """Whether ``scan_cell`` computes ``x @ w_x + b`` for all steps as one matmul before its scan.

    Generic form: hoisted (one big matmul; the usual win on GPU/TPU). CPU form: inside the scan, step by
    step; with the projection hoisted the anchor LSTM's training step took ~1.4x as long on a 2-core CPU
    (the scan's backward pass then carries a ``(T, batch, G * hidden)`` gradient; ``benchmarks/kernels.py``).
    """
    return not use_cpu_form("rnn_input")


def feature_major_rnn() -> bool:
    """Whether ``scan_cell`` keeps the state feature-major, ``(hidden, batch)``, inside its scan (CPU form;
    only with the projection inside the scan). XLA:CPU's recurrent matmul ``(G * hidden, hidden) @
    (hidden, batch)`` runs faster than ``(batch, hidden) @ (hidden, G * hidden)``
    (``benchmarks/kernels.py``, ``lstm`` rows). Generic form: batch-major. Both give the same numbers."""
    return use_cpu_form("rnn_layout")


@jax.custom_jvp
def feature_major_matmul(w: Array, w_t: Array, v: Array) -> Array:
    """``w_t @ v``, where ``w_t`` must equal ``w.T``: a weight ``w: (n, m)`` applied to feature-major ``v: (n, batch)``.

    The product runs on the materialized ``w_t`` (a plain matmul). The tangent in ``v`` is written on
    ``w`` so that its transpose, the input gradient ``w @ g``, is a plain matmul too (XLA:CPU ran a
    matmul that contracts its left operand's leading axis 2-3x slower). The weight's tangent
    comes in through ``w_t``; ``w``'s own is not read (it reaches ``w_t`` by the transpose that made it).
    """
    return w_t @ v


@feature_major_matmul.defjvp
def _feature_major_matmul_jvp(primals, tangents):
    w, w_t, v = primals
    _, w_t_dot, v_dot = tangents
    v_tangent = jax.lax.dot_general(w, v_dot, (((0,), (0,)), ((), ())))  # w.T @ v_dot
    return feature_major_matmul(w, w_t, v), v_tangent + w_t_dot @ v  # the rule again at higher orders


def recurrent_matmul(params: Params, h: Array, feature_major: bool) -> Array:
    """``h @ w_h: (batch, G * hidden)``, or feature-major ``(G * hidden, batch)`` from ``h: (hidden, batch)``."""
    if feature_major:  # scan_feature_major passes w_h.T made once, outside its scan, as "w_h_t"
        w_h_t = params["w_h_t"] if "w_h_t" in params else params["w_h"].T
        return feature_major_matmul(params["w_h"], w_h_t, h)
    return h @ params["w_h"]


def scan_feature_major(
    cell: Any, params: Params, x: Array, masks: Array | None, carry: Any, reverse: bool, unroll: int, step: Callable
) -> tuple[Any, Array]:
    """``scan_cell`` on transposed steps: ``x_t: (features, batch)``, state ``(hidden, batch)`` (CPU form).

    ``masks: (T, batch)`` booleans or None; ``step(m_t, carry, new_carry, h_t)`` holds masked steps. The
    transposed weights are made once, outside the scan, so that XLA sees plain matmuls inside it.
    Inputs, outputs and carries keep their batch-major shapes outside.
    """
    w_x_t = params["w_x"].T  # (G * hidden, features)
    step_params = {**params, "w_h_t": params["w_h"].T}  # (G * hidden, hidden), read by the cell's recurrence
    xs = jnp.transpose(x, (1, 2, 0))  # (T, features, batch)
    masks = None if masks is None else masks[:, None, :]  # (T, 1, batch)

    def body(carry, inputs):
        x_t, m_t = inputs
        xw_t = feature_major_matmul(params["w_x"], w_x_t, x_t) + params["b"][:, None]
        new_carry, h_t = cell.recurrence(step_params, carry, xw_t, feature_major=True)
        return step(m_t, carry, new_carry, h_t)

    carry_t = jax.tree.map(jnp.transpose, carry)
    carry_t, ys = jax.lax.scan(body, carry_t, (xs, masks), reverse=reverse, unroll=unroll)
    return jax.tree.map(jnp.transpose, carry_t), jnp.transpose(ys, (2, 0, 1))  # ys: (T, hidden, batch)


# --- compiler options -------------------------------------------------------------------------------------

# XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK by default; XLA's own convolution kernels ran the
# anchor CNN's training step 1.55x faster (``benchmarks/kernels.py``, ``cpu - compiler_options`` rows; 1.4x
# on a 2-core AMD EPYC in ``benchmarks/anchors.py``). Dots and reductions keep the default (YNNPACK). An
# XLA that does not know the option compiles without it.
_YNN_TYPES = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU's default YNNPACK list (individual dots, reductions, individual convolutions) less convolutions.
CPU_COMPILER_OPTIONS: dict[str, Any] = {
    _YNN_TYPES: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def default_compiler_options(backend: str | None = None) -> dict[str, Any] | None:
    """The ``compiler_options`` nnjax passes to ``jax.jit`` on ``backend`` (default: JAX's default backend).

    ``CPU_COMPILER_OPTIONS`` on CPU when this XLA accepts them (checked once, by compiling a scalar
    program on JAX's default backend; the answer is cached per ``backend``), else None. ``nnjax.jit``
    uses them under the CPU form of the ``compiler_options`` kernel (``nnjax.config.kernels``).

    Args:
      backend: a JAX platform name (``"cpu"``, ``"gpu"``, ``"tpu"``); default ``jax.default_backend()``.

    Returns:
      A dict of XLA options (treat it as read-only: it is the cached object) or None for XLA's defaults
      (any backend other than ``"cpu"``, or an XLA:CPU that rejects the options).

    Example:
      >>> print(nnjax.default_compiler_options("gpu"))   # XLA's defaults off CPU
      None
      >>> options = nnjax.default_compiler_options("cpu")
      >>> options is None or "xla_cpu_experimental_ynn_fusion_type" in options
      True
      >>> f = jax.jit(jnp.sin, compiler_options=nnjax.default_compiler_options())   # nnjax.jit, on CPU
      >>> round(float(f(0.5)), 4)
      0.4794
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return None
    known = _known_cpu_options()
    return dict(CPU_COMPILER_OPTIONS) if CPU_COMPILER_OPTIONS.items() <= known.items() else None


# jaxlib releases whose XLA:CPU accepts every option here (tests/test_compile.py compiles with them on the
# release it runs on): they are not asked again at each start, which costs a cold process 0.05-0.1 s.
ACCEPTING_JAXLIBS = frozenset({"0.10.2"})


@functools.cache
def _known_cpu_options() -> dict[str, Any]:
    """``CPU_COMPILER_OPTIONS`` and ``SETUP_CPU_COMPILER_OPTIONS`` less those this XLA rejects: all of them
    on a jaxlib of ``ACCEPTING_JAXLIBS``; otherwise asked by compiling one scalar program on JAX's default
    backend with them all (each on its own when that fails)."""
    every = {**CPU_COMPILER_OPTIONS, **SETUP_CPU_COMPILER_OPTIONS}
    if jaxlib_version.__version__ in ACCEPTING_JAXLIBS or _accepted(every):
        return every
    return {name: value for name, value in every.items() if _accepted({name: value})}


def _accepted(options: dict[str, Any]) -> bool:
    """Whether this XLA compiles with ``options``."""
    try:
        jax.jit(jnp.negative, compiler_options=options).lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001 - any rejection means this XLA does not know an option
        return False
    return True


def jit_options() -> dict[str, Any] | None:
    """The ``compiler_options`` of ``jit`` now: ``default_compiler_options()`` under the CPU form of the
    ``compiler_options`` kernel (``nnjax.config.kernels``), else None (XLA's defaults)."""
    return default_compiler_options() if use_cpu_form("compiler_options") else None


# Setup programs run once or briefly: initialization (once per model) and each epoch's data order (once
# per epoch, a sort). On XLA:CPU their compilation is most of their time (each random draw is a threefry
# hash of ~20 rounds), so they are compiled for compile time: without LLVM's optimizations, and by XLA:CPU's
# classic loop emitters instead of its MLIR fusion emitters. Measured on a 2-core CPU, XLA compilation:
# the README MLP's init 0.82 s (defaults) -> 0.29 s (no LLVM optimizations) -> 0.13 s (and the classic
# emitters); the digits epoch order 0.23 -> 0.14 -> 0.06 s, its run time 0.4-0.5 ms per epoch whatever the
# options (60,000 examples: 13.3 -> 16.1 -> 19.8 ms). Only these programs use the classic emitters: in
# jaxlib 0.10.2 they miscompiled the gradient of a convolution, BatchNorm, ReLU and max pool stack
# (tests/test_torch_reference.py, when the test suite compiled everything with them). A setup program
# computes no gradient; tests/test_train.py checks the compiled initialization of every layer family
# against the layers' own values.
SETUP_CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def setup_jit_options() -> dict[str, Any] | None:
    """The ``compiler_options`` of nnjax's setup programs (``init_train_state``, each fused epoch's data
    order): ``jit_options()`` plus ``SETUP_CPU_COMPILER_OPTIONS`` in the CPU form, on the CPU backend."""
    options = jit_options()
    if options is None:
        return None
    known = _known_cpu_options()
    return {**options, **{name: value for name, value in SETUP_CPU_COMPILER_OPTIONS.items() if name in known}}


__all__ = [
    "CPU_COMPILER_OPTIONS",
    "conv",
    "default_compiler_options",
    "feature_major_matmul",
    "feature_major_rnn",
    "global_max_pool",
    "hoist_rnn_input",
    "jit_options",
    "max_pool",
    "recurrent_matmul",
    "scan_feature_major",
    "setup_jit_options",
    "window_max",
]
