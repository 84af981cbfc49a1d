"""Pooling layers over 1, 2 or 3 spatial axes, channels-last: MaxPool, AvgPool, GlobalMaxPool, GlobalAvgPool.

Shapes: ``x: (batch, *spatial, channels) -> y: (batch, *out_spatial, channels)``; the number of spatial
axes is ``len(window)`` (an int ``window`` means 2-D). Global pools return ``(batch, channels)``.

Speed: on CPU, the gradient of ``lax.reduce_window`` max pooling (XLA's select-and-scatter) is slow;
when windows do not overlap (``strides == window``, ``padding="VALID"``) and the backend is CPU, the
pools are computed as a reshape to ``(batch, h, wh, w, ww, channels)`` and a max/mean over the window
axes instead: the same values, and a gradient that is several times cheaper. Max pools over windows of
up to ``CELLWISE_MAX_CELLS`` cells find each window's first maximum cell by cell (elementwise, fused
with the ReLU before them) and keep it as an int8 index for the gradient: 2x2 pools of the anchor CNN,
ReLU + pool forward and backward at batch 128, 28x28x32: 9.9 -> 3.4 ms; 14x14x64: 3.8 -> 1.4 ms
(2-core Intel Xeon). Other cases and other backends use ``lax.reduce_window``.

Ties: the gradient of MaxPool and GlobalMaxPool goes to the first maximum of each window (row-major
order) on every path, as XLA's ``reduce_window`` gradient and PyTorch's max pools route it (``jnp.max``
would split it evenly among the tied cells).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from nnjax._src.conv import Padding, as_padding, as_tuple, check_spatial_input, out_size
from nnjax._src.core import Layer, stateless
from nnjax._src.errors import LayerError, check_float_input, check_rank
from nnjax._src.types import Array


def use_reshape_pool(window: tuple[int, ...], strides: tuple[int, ...], padding) -> bool:
    """True when pooling runs as reshape + reduce: non-overlapping VALID windows on the CPU backend."""
    return window == strides and padding == "VALID" and jax.default_backend() == "cpu"


def reshape_pool(x: Array, window: tuple[int, ...], reduce: Callable[..., Array]) -> Array:
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


def _pool(kind: str, window, strides, padding: Padding) -> tuple[str, tuple, tuple, object]:
    if isinstance(window, int):
        window = (window, window)
    window = tuple(window)
    label = f"{kind}({window})"
    if not 1 <= len(window) <= 3:
        raise ValueError(
            f"{label}: argument `window` expected 1, 2 or 3 ints (one per spatial axis), given {window!r}."
        )
    n = len(window)
    window = as_tuple(window, n, label, "window")
    strides = window if strides is None else as_tuple(strides, n, label, "strides")
    padding = as_padding(padding, n, label)
    extras = ([f"strides={strides}"] if strides != window else []) + (
        [f"padding={padding!r}"] if padding != "VALID" else []
    )
    name = f"{kind}({', '.join([str(window), *extras])})"
    return name, window, strides, padding


def _check(name: str, x: Array, window, strides, padding) -> None:
    check_float_input(name, x)
    check_spatial_input(name, x, len(window), None)
    pads = [padding] * len(window) if isinstance(padding, str) else padding
    if any(out_size(s, w, st, p) < 1 for s, w, st, p in zip(x.shape[1:-1], window, strides, pads, strict=False)):
        raise LayerError(
            f"{name}: argument `x` expected spatial sizes of at least the window {window} (padding {padding!r}), "
            f"given shape {tuple(x.shape)}. Hint: pool less, or use padding='SAME'."
        )


def _window_args(window, strides, padding):
    dims, steps = (1, *window, 1), (1, *strides, 1)
    pads = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    return dims, steps, pads


def MaxPool(
    window: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Layer:  # noqa: N802
    """The maximum over each window: ``y[b, *o, c] = max_k x[b, *(o * strides + k - pad_low), c]``.

    Args:
      window: window size per spatial axis (1, 2 or 3 of them); an int means 2-D (``2 -> (2, 2)``).
      strides: step per spatial axis; default ``window`` (non-overlapping windows).
      padding: ``"VALID"`` (default; trailing rows that fill no window are dropped), ``"SAME"`` or
        ``(low, high)`` pairs; padded positions never win.

    Shapes: ``x: (batch, *spatial, channels) -> (batch, *out_spatial, channels)``.

    Example:
      >>> MaxPool(2).apply({}, {}, jnp.ones((8, 28, 28, 32)))[0].shape
      (8, 14, 14, 32)
    """
    name, window, strides, padding = _pool("MaxPool", window, strides, padding)

    def fn(x):
        _check(name, x, window, strides, padding)
        if use_reshape_pool(window, strides, padding):
            return reshape_pool(x, window, window_max)
        return lax.reduce_window(x, -jnp.inf, lax.max, *_window_args(window, strides, padding))

    return stateless(fn, name)


def AvgPool(
    window: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Layer:  # noqa: N802
    """The mean over each window; with padding, the mean over the window's positions inside the input.

    Padded positions are not counted (as TensorFlow/Keras; PyTorch's default ``count_include_pad=True``
    differs at the borders).

    Args:
      window: window size per spatial axis (1, 2 or 3 of them); an int means 2-D.
      strides: step per spatial axis; default ``window``.
      padding: ``"VALID"`` (default), ``"SAME"`` or ``(low, high)`` pairs.

    Shapes: ``x: (batch, *spatial, channels) -> (batch, *out_spatial, channels)``.
    """
    name, window, strides, padding = _pool("AvgPool", window, strides, padding)

    def fn(x):
        _check(name, x, window, strides, padding)
        if use_reshape_pool(window, strides, padding):
            return reshape_pool(x, window, jnp.mean)
        args = _window_args(window, strides, padding)
        sums = lax.reduce_window(x, 0.0, lax.add, *args)
        if padding == "VALID":
            return sums / math.prod(window)
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
        return sums / lax.reduce_window(ones, 0.0, lax.add, *args)

    return stateless(fn, name)


def _global(kind: str, reduce: Callable[..., Array]) -> Layer:
    def fn(x):
        check_float_input(kind, x)
        check_rank(kind, x, 3, "a batch of shape (batch, *spatial, channels)")
        return reduce(x, axis=tuple(range(1, x.ndim - 1)))

    return stateless(fn, kind)


def GlobalAvgPool() -> Layer:  # noqa: N802
    """The mean over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``."""
    return _global("GlobalAvgPool", jnp.mean)


def GlobalMaxPool() -> Layer:  # noqa: N802
    """The maximum over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``."""
    return _global("GlobalMaxPool", window_max)
