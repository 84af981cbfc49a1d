"""Convolution layers: Conv and ConvTranspose over 1, 2 or 3 spatial dimensions, channels-last.

Shapes: ``x: (batch, *spatial, in_channels) -> y: (batch, *out_spatial, features)``; the number of
spatial dimensions is ``len(kernel_size)`` (an int ``kernel_size`` means 2-D, e.g. ``3 -> (3, 3)``).
Params: ``{"w": (*kernel_size, in_channels // groups, features), "b": (features,)}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax import lax

from nnjax._src import initializers, kernels
from nnjax._src.core import Layer
from nnjax._src.errors import LayerError, check_float_input
from nnjax._src.types import Array, Shape

Padding = str | Sequence[tuple[int, int]]
_SPATIAL = "DHW"


def as_tuple(value: int | Sequence[int], n: int, where: str, argument: str) -> tuple[int, ...]:
    """``3 -> (3,) * n``; a sequence must hold ``n`` positive ints."""
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(
            f"{where}: argument `{argument}` expected a positive int or {n} positive ints, given {value!r}."
        )
    return values


def as_padding(padding: Padding, n: int, where: str) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``/``"VALID"`` (any case) or ``n`` pairs ``(low, high)`` of non-negative ints."""
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
    else:
        pairs = tuple(tuple(p) if isinstance(p, Sequence) else p for p in padding)
        if len(pairs) == n and all(
            isinstance(p, tuple) and len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p) for p in pairs
        ):
            return pairs
    raise ValueError(
        f"{where}: argument `padding` expected 'SAME', 'VALID' or {n} pairs (low, high) of non-negative ints, "
        f"given {padding!r}."
    )


def out_size(size: int, window: int, stride: int, padding: str | tuple[int, int]) -> int:
    """Output length of a strided window sweep (convolution or pooling) along one axis."""
    if padding == "SAME":
        return -(-size // stride)
    low, high = (0, 0) if padding == "VALID" else padding
    return (size + low + high - window) // stride + 1


def check_spatial_input(where: str, x: Any, n: int, channels: int | None) -> None:
    """Raises LayerError unless ``x`` is ``(batch, *spatial[n], channels)``; says how to fix common mix-ups."""
    letters = ", ".join(_SPATIAL[-n:]) if n <= 3 else f"{n} spatial axes"
    expected = f"(batch, {letters}, {channels if channels is not None else 'channels'})"
    shape = tuple(jnp.shape(x))
    if len(shape) != n + 2:
        hint = ""
        if len(shape) == n + 1:
            hint = (
                " Hint: add the batch axis, e.g. `x[None]`."
                if channels is not None and shape[-1] == channels and channels != 1
                else " Hint: add the channel axis, e.g. `x[..., None]` for one-channel images."
            )
        raise LayerError(f"{where}: argument `x` expected shape {expected} (rank {n + 2}), given {shape}.{hint}")
    if channels is not None and shape[-1] != channels:
        hint = (
            " Hint: nnjax is channels-last; move the channel axis last, e.g. `jnp.moveaxis(x, 1, -1)`."
            if shape[1] == channels
            else f" Hint: the layer was initialized for {channels} input channels; check `input_shape` at init."
        )
        raise LayerError(f"{where}: argument `x` expected shape {expected}, given {shape}.{hint}")


def _dimension_numbers(n: int) -> tuple[str, str, str]:
    spatial = _SPATIAL[-n:]
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def _check_groups(name: str, input_shape: Shape, n: int, features: int, groups: int) -> int:
    if len(input_shape) != n + 1:
        raise LayerError(
            f"{name}: argument `input_shape` expected {n} spatial axes and channels, e.g. "
            f"{(28,) * n + (1,)}, given {tuple(input_shape)}."
        )
    in_channels = input_shape[-1]
    if in_channels % groups:
        raise LayerError(
            f"{name}: in_channels (={in_channels}, the last axis of input_shape {tuple(input_shape)}) "
            f"must be divisible by `groups` (={groups})."
        )
    return in_channels


def _conv_layer(
    kind: str,
    features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int],
    padding: Padding,
    dilation: int | Sequence[int],
    groups: int,
    use_bias: bool,
    w_init: str | initializers.Initializer,
    b_init: str | initializers.Initializer,
) -> tuple[str, tuple, Any, Any, Any]:
    """Validates the constructor arguments shared by Conv and ConvTranspose."""
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    kernel_size = tuple(kernel_size)
    name = f"{kind}({features}, {kernel_size})"
    if not isinstance(features, int) or features < 1:
        raise ValueError(f"{name}: argument `features` expected a positive int, given {features!r}.")
    if not 1 <= len(kernel_size) <= 3:
        raise ValueError(
            f"{name}: argument `kernel_size` expected 1, 2 or 3 ints (one per spatial axis), given {kernel_size!r}."
        )
    n = len(kernel_size)
    kernel_size = as_tuple(kernel_size, n, name, "kernel_size")
    config = (
        kernel_size,
        as_tuple(strides, n, name, "strides"),
        as_padding(padding, n, name),
        as_tuple(dilation, n, name, "dilation"),
    )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name}: argument `groups` expected a positive int, given {groups!r}.")
    if features % groups:
        raise ValueError(f"{name}: `features` (={features}) must be divisible by `groups` (={groups}).")
    w_fn = initializers.get(w_init, f"{name} w_init")
    b_fn = initializers.get(b_init, f"{name} b_init")
    return name, config, w_fn, b_fn, use_bias


def _params(key, kernel_size, in_channels, groups, features, w_fn, b_fn, use_bias, dtype):
    w_shape = (*kernel_size, in_channels // groups, features)
    return initializers.weight_and_bias(key, w_fn, w_shape, b_fn, (features,), dtype, use_bias)


def _check_size(name: str, x: Array, kernel: tuple[int, ...], strides, padding) -> None:
    spatial = tuple(x.shape[1:-1])
    pads = [padding] * len(kernel) if isinstance(padding, str) else padding
    if any(out_size(s, k, st, p) < 1 for s, k, st, p in zip(spatial, kernel, strides, pads, strict=False)):
        raise LayerError(
            f"{name}: argument `x` expected spatial sizes that fit the (dilated) kernel {kernel} with padding "
            f"{padding!r}, given shape {tuple(x.shape)}. Hint: use padding='SAME' or pool less before this layer."
        )


def _same_dtype(x: Array, w: Array) -> tuple[Array, Array]:
    dtype = jnp.result_type(x, w)
    return x.astype(dtype), w.astype(dtype)


def Conv(  # noqa: N802 - layer constructors are CamelCase, as in stax
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
) -> Layer:
    """A convolution (cross-correlation, as in every deep-learning library) over 1, 2 or 3 spatial axes.

    ``y[b, *o, f] = sum_{k, c} x[b, *(o * strides + k * dilation - pad_low), g(f) * C + c] * w[*k, c, f] + b[f]``
    where ``C = in_channels // groups`` and ``g(f)`` is the group of output feature ``f``.

    Params: ``{"w": (*kernel_size, in_channels // groups, features), "b": (features,)}``.

    Args:
      features: number of output channels.
      kernel_size: window size per spatial axis; its length (1, 2 or 3) sets the number of spatial
        axes; an int means 2-D (``3 -> (3, 3)``).
      strides: step per spatial axis (int or tuple).
      padding: ``"SAME"`` (output size ``ceil(size / stride)``), ``"VALID"`` (no padding) or one
        ``(low, high)`` pair per spatial axis.
      dilation: kernel dilation per spatial axis (atrous convolution).
      groups: feature groups; ``groups = in_channels`` is a depthwise convolution. Both
        ``in_channels`` and ``features`` must be divisible by it.
      use_bias: add the bias ``b``.
      w_init, b_init: initializer functions or names (see ``nnjax.initializers``); the key is split as
        ``Dense`` splits it (only for a random ``b_init``).

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, *spatial, in_channels)`` float to
      ``y: (batch, *out_spatial, features)`` (channels-last); ``input_shape`` is ``(*spatial, in_channels)``.
      Per spatial axis, ``out = ceil(size / stride)`` with ``"SAME"``, ``(size - k) // stride + 1`` with
      ``"VALID"`` (``k = (kernel - 1) * dilation + 1``, the dilated kernel size), and
      ``(size + low + high - k) // stride + 1`` with explicit pairs.

    Raises:
      ValueError: (when built) ``features``, ``groups``, ``strides`` or ``dilation`` is not a positive int (or
        tuple of them), ``kernel_size`` does not have 1, 2 or 3 positive ints, a bad ``padding``,
        ``features`` not divisible by ``groups``, or an unknown initializer name.
      LayerError: (at init) ``input_shape`` is not ``(*spatial, in_channels)`` for ``len(kernel_size)`` spatial
        axes, or ``in_channels`` is not divisible by ``groups``; (at apply) ``x`` of the wrong rank or channel
        count (the message hints at channels-first input), or spatial sizes smaller than the dilated kernel.
      LayerTypeError: (at apply) integer input, e.g. uint8 pixels (scale it first).

    Example:
      >>> layer = nnjax.Conv(4, (3, 3), strides=2)
      >>> params, state = layer.init(jax.random.key(0), (8, 8, 1))
      >>> jax.tree.map(jnp.shape, params)
      {'b': (4,), 'w': (3, 3, 1, 4)}
      >>> layer.apply(params, state, jnp.ones((2, 8, 8, 1)))[0].shape
      (2, 4, 4, 4)
    """
    name, (kernel_size, strides, padding, dilation), w_fn, b_fn, use_bias = _conv_layer(
        "Conv", features, kernel_size, strides, padding, dilation, groups, use_bias, w_init, b_init
    )
    n = len(kernel_size)
    dn = _dimension_numbers(n)
    effective = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=False))

    def init(key, input_shape: Shape, dtype=jnp.float32):
        in_channels = _check_groups(name, input_shape, n, features, groups)
        return _params(key, kernel_size, in_channels, groups, features, w_fn, b_fn, use_bias, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        check_float_input(name, x)
        check_spatial_input(name, x, n, params["w"].shape[-2] * groups)
        _check_size(name, x, effective, strides, padding)
        x, w = _same_dtype(x, params["w"])
        y = kernels.conv(x, w, strides, padding, dilation, dn, groups, name)
        if use_bias:
            y = y + params["b"].astype(y.dtype)
        return y, state

    return Layer(init, apply, name)


def transpose_padding(size: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    """Padding of the stride-dilated input that makes a convolution the transpose of one with ``padding``.

    ``size`` is the dilated kernel size. Follows ``lax.conv_transpose`` (Keras conventions): "SAME" gives
    ``in * stride`` outputs, "VALID" ``in * stride + max(size - stride, 0)``, and an explicit pair
    ``(low, high)`` crops ``low`` and ``high`` from the ends of the full ``(in - 1) * stride + size`` output.
    """
    if padding == "SAME":
        total = size + stride - 2
        low = size - 1 if stride > size - 1 else -(-total // 2)
        return low, total - low
    if padding == "VALID":
        return size - 1, stride - 1 + max(size - stride, 0)
    return size - 1 - padding[0], size - 1 - padding[1]


def ConvTranspose(  # noqa: N802
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
) -> Layer:
    """A transposed convolution ("deconvolution"): each input pixel scatters a weighted kernel into the output.

    ``y_full[b, *(i * strides + k * dilation), f] += x[b, *i, g(f) * C + c] * w[*k, c, f]``, then ``y = y_full``
    cropped (or zero-extended) by ``padding`` and plus ``b``. This is the gradient of ``Conv`` with respect
    to its input (with ``w``'s last two axes swapped), as PyTorch's ``ConvTranspose`` (whose ``padding=p``
    is ``padding=((p, p),) * n`` here).

    Params: ``{"w": (*kernel_size, in_channels // groups, features), "b": (features,)}``.

    Args:
      features: number of output channels.
      kernel_size: window size per spatial axis (1, 2 or 3 of them; an int means 2-D).
      strides: upsampling factor per spatial axis.
      padding: ``"SAME"`` (output ``size * stride``), ``"VALID"`` (output ``size * stride + max(k - stride, 0)``,
        ``k`` the dilated kernel size) or ``(low, high)`` pairs cropped from the full scatter output
        ``(size - 1) * stride + k``, as the padding of the convolution this transposes.
      dilation: kernel dilation per spatial axis.
      groups: feature groups (``in_channels`` and ``features`` must be divisible by it).
      use_bias: add the bias ``b``.
      w_init, b_init: initializer functions or names.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, *spatial, in_channels)`` float to
      ``y: (batch, *out_spatial, features)`` (channels-last), ``out_spatial`` as given under ``padding``;
      ``input_shape`` is ``(*spatial, in_channels)``.

    Raises:
      ValueError: (when built) bad ``features``, ``kernel_size``, ``strides``, ``padding``, ``dilation`` or
        ``groups``, as for ``Conv``.
      LayerError: (at init) ``input_shape`` of the wrong rank, or ``in_channels`` not divisible by ``groups``;
        (at apply) ``x`` of the wrong rank or channel count, or an empty output (explicit padding that crops
        more than the full output).
      LayerTypeError: (at apply) integer input (scale it first).

    Example:
      >>> layer = nnjax.ConvTranspose(2, (3, 3), strides=2)
      >>> params, state = layer.init(jax.random.key(0), (3, 3, 4))
      >>> layer.apply(params, state, jnp.ones((2, 3, 3, 4)))[0].shape
      (2, 6, 6, 2)
      >>> valid = nnjax.ConvTranspose(2, (3, 3), strides=2, padding="VALID")  # 3 * 2 + max(3 - 2, 0)
      >>> valid.apply(params, state, jnp.ones((2, 3, 3, 4)))[0].shape  # the same params fit
      (2, 7, 7, 2)
    """
    name, (kernel_size, strides, padding, dilation), w_fn, b_fn, use_bias = _conv_layer(
        "ConvTranspose", features, kernel_size, strides, padding, dilation, groups, use_bias, w_init, b_init
    )
    n = len(kernel_size)
    dn = _dimension_numbers(n)
    effective = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=False))
    pads = [padding] * n if isinstance(padding, str) else padding
    lax_padding = tuple(transpose_padding(k, s, p) for k, s, p in zip(effective, strides, pads, strict=False))

    def init(key, input_shape: Shape, dtype=jnp.float32):
        in_channels = _check_groups(name, input_shape, n, features, groups)
        return _params(key, kernel_size, in_channels, groups, features, w_fn, b_fn, use_bias, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        check_float_input(name, x)
        check_spatial_input(name, x, n, params["w"].shape[-2] * groups)
        sizes = [
            (s - 1) * st + 1 + lo + hi - k + 1
            for s, st, (lo, hi), k in zip(x.shape[1:-1], strides, lax_padding, effective, strict=False)
        ]
        if min(sizes) < 1:
            raise LayerError(
                f"{name}: argument `x` gives an empty output with padding {padding!r}, given shape {tuple(x.shape)}."
            )
        x, w = _same_dtype(x, params["w"])
        w = jnp.flip(w, axis=tuple(range(n)))  # a scatter is a correlation with the flipped kernel
        y = lax.conv_general_dilated(
            x,
            w,
            (1,) * n,
            lax_padding,
            lhs_dilation=strides,
            rhs_dilation=dilation,
            dimension_numbers=dn,
            feature_group_count=groups,
        )
        if use_bias:
            y = y + params["b"].astype(y.dtype)
        return y, state

    return Layer(init, apply, name)
