"""Normalization layers: BatchNorm (with running statistics in ``state``), LayerNorm, GroupNorm, RMSNorm.

All normalize a batch ``x: (batch, ..., features)`` (channels-last for images) and keep its shape; the
learned per-feature affine map is ``params = {"scale": (features,), "bias": (features,)}`` (``scale``
starts at 1, ``bias`` at 0). Statistics are computed in at least float32.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax.numpy as jnp
from jax import lax

from nnjax._src.core import Layer
from nnjax._src.errors import LayerError, check_float_input, check_rank
from nnjax._src.types import Array, Params, Shape


def _check_epsilon(name: str, epsilon: float) -> None:
    if not epsilon > 0:
        raise ValueError(f"{name}: argument `epsilon` expected a positive float, given {epsilon!r}.")


def _features(name: str, input_shape: Shape) -> int:
    if len(input_shape) < 1:
        raise LayerError(
            f"{name}: argument `input_shape` expected at least one axis (features), given {tuple(input_shape)}."
        )
    return input_shape[-1]


def _affine_params(features: int, use_scale: bool, use_bias: bool, dtype) -> Params:
    params = {}
    if use_scale:
        params["scale"] = jnp.ones((features,), dtype)
    if use_bias:
        params["bias"] = jnp.zeros((features,), dtype)
    return params


def _check_input(name: str, x: Array, features: int | None, min_rank: int = 2) -> None:
    check_float_input(name, x)
    check_rank(name, x, min_rank, "a batch of shape (batch, ..., features)")
    if features is not None and x.shape[-1] != features:
        raise LayerError(
            f"{name}: argument `x` expected shape (batch, ..., {features}), given {tuple(x.shape)}. "
            f"Hint: the layer was initialized for {features} features (the last axis; nnjax is channels-last)."
        )


def _feature_count(params: Params) -> int | None:
    for name in ("scale", "bias"):
        if name in params:
            return params[name].shape[0]
    return None


def _affine(y: Array, params: Params, x: Array) -> Array:
    if "scale" in params:
        y = y * params["scale"]
    if "bias" in params:
        y = y + params["bias"]
    return y.astype(jnp.result_type(x, *params.values()))


def _stats(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def BatchNorm(  # noqa: N802 - layer constructors are CamelCase, as in stax
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis_name: Hashable | None = None,
    use_scale: bool = True,
    use_bias: bool = True,
) -> Layer:
    """Batch normalization: each feature is normalized by statistics over the batch (and spatial) axes.

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``, with ``mean``/``var`` (biased) over every
    axis but the last. With ``train=True`` they are the batch's statistics, and the returned state
    holds the updated running averages ``running = momentum * running + (1 - momentum) * batch``
    (Keras/Flax convention; PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here). With ``train=False``
    the running averages are used and the state is returned unchanged.

    Params: ``{"scale": (features,), "bias": (features,)}``. State: ``{"mean": (features,), "var": (features,)}``,
    starting at 0 and 1.

    Args:
      momentum: decay of the running averages, in [0, 1].
      epsilon: added to the variance.
      axis_name: name of a mapped axis (``shard_map``, ``pmap``, ``vmap(..., axis_name=...)``) whose
        shards form one batch: statistics are averaged over it with ``lax.pmean`` (equal shard sizes).
      use_scale, use_bias: learn ``scale`` and ``bias``.

    Shapes: ``x: (batch, ..., features) -> y`` of the same shape.

    Example:
      >>> layer = BatchNorm()
      >>> params, state = layer.init(jax.random.key(0), (16,))
      >>> y, state = layer.apply(params, state, jnp.ones((4, 16)), train=True)
    """
    name = "BatchNorm"
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{name}: argument `momentum` expected a value in [0, 1], given {momentum!r}.")
    _check_epsilon(name, epsilon)

    def init(key, input_shape: Shape, dtype=jnp.float32):
        features = _features(name, input_shape)
        state = {"mean": jnp.zeros((features,), dtype), "var": jnp.ones((features,), dtype)}
        return _affine_params(features, use_scale, use_bias, dtype), state

    def apply(params, state, x, *, key=None, train=False):
        _check_input(name, x, state["mean"].shape[0])
        xs = _stats(x)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xs, axis=axes)
            if axis_name is not None:
                mean = lax.pmean(mean, axis_name)
            var = jnp.mean(jnp.square(xs - mean), axis=axes)
            if axis_name is not None:
                var = lax.pmean(var, axis_name)
            new_state = {
                "mean": (momentum * state["mean"] + (1 - momentum) * lax.stop_gradient(mean)).astype(
                    state["mean"].dtype
                ),
                "var": (momentum * state["var"] + (1 - momentum) * lax.stop_gradient(var)).astype(state["var"].dtype),
            }
        else:
            mean, var, new_state = state["mean"], state["var"], state
        y = (xs - mean) * lax.rsqrt(var + epsilon)
        return _affine(y, params, x), new_state

    return Layer(init, apply, name)


def LayerNorm(epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True) -> Layer:  # noqa: N802
    """Layer normalization over the last (features) axis of each example.

    ``y = (x - mean(x, -1)) / sqrt(var(x, -1) + epsilon) * scale + bias``.

    Params: ``{"scale": (features,), "bias": (features,)}``. Shapes: ``x: (batch, ..., features) -> y`` same shape.
    """
    name = "LayerNorm"
    _check_epsilon(name, epsilon)

    def init(key, input_shape: Shape, dtype=jnp.float32):
        return _affine_params(_features(name, input_shape), use_scale, use_bias, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        _check_input(name, x, _feature_count(params))
        xs = _stats(x)
        mean = jnp.mean(xs, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xs - mean), axis=-1, keepdims=True)
        return _affine((xs - mean) * lax.rsqrt(var + epsilon), params, x), state

    return Layer(init, apply, name)


def GroupNorm(num_groups: int, epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True) -> Layer:  # noqa: N802
    """Group normalization: channels are split into ``num_groups`` groups, each normalized per example
    over its channels and all spatial axes (``num_groups=1``: over the whole example; ``= channels``:
    instance normalization).

    Params: ``{"scale": (channels,), "bias": (channels,)}``.

    Shapes: ``x: (batch, *spatial, channels) -> y`` of the same shape; ``channels % num_groups == 0``.
    """
    name = f"GroupNorm({num_groups})"
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"{name}: argument `num_groups` expected a positive int, given {num_groups!r}.")
    _check_epsilon(name, epsilon)

    def check_channels(channels: int, shape) -> None:
        if channels % num_groups:
            raise LayerError(
                f"{name}: channels (={channels}, the last axis of shape {tuple(shape)}) must be divisible by "
                f"`num_groups` (={num_groups})."
            )

    def init(key, input_shape: Shape, dtype=jnp.float32):
        channels = _features(name, input_shape)
        check_channels(channels, input_shape)
        return _affine_params(channels, use_scale, use_bias, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        _check_input(name, x, _feature_count(params))
        check_channels(x.shape[-1], x.shape)
        xs = _stats(x)
        grouped = xs.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)  # (B, *spatial, G, C/G)
        axes = (*range(1, x.ndim - 1), x.ndim)  # spatial axes and the within-group channels
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        y = ((grouped - mean) * lax.rsqrt(var + epsilon)).reshape(x.shape)
        return _affine(y, params, x), state

    return Layer(init, apply, name)


def RMSNorm(epsilon: float = 1e-6, use_scale: bool = True) -> Layer:  # noqa: N802
    """Root-mean-square normalization over the last axis: ``y = x / sqrt(mean(x**2, -1) + epsilon) * scale``.

    Params: ``{"scale": (features,)}`` (no bias). Shapes: ``x: (batch, ..., features) -> y`` same shape.
    """
    name = "RMSNorm"
    _check_epsilon(name, epsilon)

    def init(key, input_shape: Shape, dtype=jnp.float32):
        return _affine_params(_features(name, input_shape), use_scale, False, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        _check_input(name, x, _feature_count(params))
        xs = _stats(x)
        y = xs * lax.rsqrt(jnp.mean(jnp.square(xs), axis=-1, keepdims=True) + epsilon)
        return _affine(y, params, x), state

    return Layer(init, apply, name)
