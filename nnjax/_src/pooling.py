"""Pooling layers over 1, 2 or 3 spatial axes, channels-last: MaxPool, AvgPool, GlobalMaxPool, GlobalAvgPool.

Shapes: ``x: (batch, *spatial, channels) -> y: (batch, *out_spatial, channels)``; the number of spatial
axes is ``len(window)`` (an int ``window`` means 2-D). Global pools return ``(batch, channels)``.

Max pools are the ``max_pool`` kernel (``nnjax._src.kernels``): ``lax.reduce_window`` in the generic
form, a reshape and a first-maximum reduction over non-overlapping windows in the CPU form (the same
values, a cheaper gradient on XLA:CPU). Average pools are ``lax.reduce_window`` sums on every backend.

Ties: the gradient of MaxPool and GlobalMaxPool goes to the first maximum of each window (row-major
order) on every path, as XLA's ``reduce_window`` gradient and PyTorch's max pools route it (``jnp.max``
would split it evenly among the tied cells).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax import lax

from nnjax._src import kernels
from nnjax._src.conv import Padding, as_padding, as_tuple, check_spatial_input, out_size
from nnjax._src.core import Layer, stateless
from nnjax._src.errors import LayerError, check_float_input, check_rank
from nnjax._src.types import Array


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


def MaxPool(
    window: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Layer:  # noqa: N802
    """The maximum over each window: ``y[b, *o, c] = max_k x[b, *(o * strides + k - pad_low), c]``.

    Args:
      window: window size per spatial axis (1, 2 or 3 of them); an int means 2-D (``2 -> (2, 2)``).
      strides: step per spatial axis; default ``window`` (non-overlapping windows).
      padding: ``"VALID"`` (default; trailing rows that fill no window are dropped), ``"SAME"`` or
        ``(low, high)`` pairs; padded positions never win.

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x: (batch, *spatial, channels)`` float to
      ``(batch, *out_spatial, channels)``; per spatial axis ``out = (size - window) // stride + 1`` with
      ``"VALID"``, ``ceil(size / stride)`` with ``"SAME"``.

    Raises:
      ValueError: (when built) ``window`` is not 1, 2 or 3 positive ints, bad ``strides`` (not positive ints, or
        not one per window axis) or a bad ``padding``.
      LayerError: (at apply) ``x`` is not ``(batch, *spatial, channels)`` with ``len(window)`` spatial axes, or
        a spatial size is too small for one window.
      LayerTypeError: (at apply) ``x`` is not floating point.

    Example:
      >>> nnjax.MaxPool(2).apply({}, {}, jnp.ones((2, 4, 4, 3)))[0].shape
      (2, 2, 2, 3)
      >>> x = jnp.array([1.0, 5.0, 2.0, 3.0]).reshape(1, 4, 1)  # 1-D: (batch, length, channels)
      >>> nnjax.MaxPool((2,)).apply({}, {}, x)[0][0, :, 0].tolist()
      [5.0, 3.0]
    """
    name, window, strides, padding = _pool("MaxPool", window, strides, padding)

    def fn(x):
        _check(name, x, window, strides, padding)
        return kernels.max_pool(x, window, strides, padding)

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

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x: (batch, *spatial, channels)`` float to
      ``(batch, *out_spatial, channels)``, sizes as for ``MaxPool``.

    Raises:
      ValueError: (when built) ``window`` is not 1, 2 or 3 positive ints, bad ``strides`` (not positive ints, or
        not one per window axis) or a bad ``padding``.
      LayerError: (at apply) ``x`` is not ``(batch, *spatial, channels)`` with ``len(window)`` spatial axes, or
        a spatial size is too small for one window.
      LayerTypeError: (at apply) ``x`` is not floating point.

    Example:
      >>> nnjax.AvgPool(2).apply({}, {}, jnp.ones((2, 4, 4, 3)))[0].shape
      (2, 2, 2, 3)
      >>> x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1)  # 1-D: (batch, length, channels)
      >>> pool = nnjax.AvgPool((3,), strides=1, padding="SAME")  # the ends average 2 values, not 3
      >>> pool.apply({}, {}, x)[0][0, :, 0].tolist()
      [1.5, 2.0, 3.0, 3.5]
    """
    name, window, strides, padding = _pool("AvgPool", window, strides, padding)

    def fn(x):
        _check(name, x, window, strides, padding)
        args = kernels.window_args(window, strides, padding)
        sums = lax.reduce_window(x, 0.0, lax.add, *args)
        if padding == "VALID":
            return sums / math.prod(window)
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
        return sums / lax.reduce_window(ones, 0.0, lax.add, *args)

    return stateless(fn, name)


def _global(kind: str, reduce: Callable[[Array], Array]) -> Layer:
    def fn(x):
        check_float_input(kind, x)
        check_rank(kind, x, 3, "a batch of shape (batch, *spatial, channels)")
        return reduce(x)

    return stateless(fn, kind)


def GlobalAvgPool() -> Layer:  # noqa: N802
    """The mean over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``.

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x: (batch, *spatial, channels)`` float (one or more
      spatial axes) to ``(batch, channels)``.

    Raises:
      LayerError: (at apply) ``x`` has fewer than 3 axes.
      LayerTypeError: (at apply) ``x`` is not floating point.

    Example:
      >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)  # channel 0 holds 0, 2, 4, 6; channel 1 holds 1, 3, 5, 7
      >>> nnjax.GlobalAvgPool().apply({}, {}, x)[0].tolist()
      [[3.0, 4.0]]
    """
    return _global("GlobalAvgPool", lambda x: jnp.mean(x, axis=tuple(range(1, x.ndim - 1))))


def GlobalMaxPool() -> Layer:  # noqa: N802
    """The maximum over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``.

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x: (batch, *spatial, channels)`` float (one or more
      spatial axes) to ``(batch, channels)``.

    Raises:
      LayerError: (at apply) ``x`` has fewer than 3 axes.
      LayerTypeError: (at apply) ``x`` is not floating point.

    Example:
      >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)  # channel 0 holds 0, 2, 4, 6; channel 1 holds 1, 3, 5, 7
      >>> nnjax.GlobalMaxPool().apply({}, {}, x)[0].tolist()
      [[6.0, 7.0]]
    """
    return _global("GlobalMaxPool", kernels.global_max_pool)
