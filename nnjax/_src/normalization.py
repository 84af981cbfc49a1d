"""Normalization layers: BatchNorm (with running statistics in ``state``), LayerNorm, GroupNorm, RMSNorm.

All normalize a batch ``x: (batch, ..., features)`` (channels-last for images) and keep its shape; the
learned per-feature affine map is ``params = {"scale": (features,), "bias": (features,)}`` (``scale``
starts at 1, ``bias`` at 0). Statistics are computed in at least float32.
"""

from __future__ import annotations

import math
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


RUNNING_VARIANCES = ("biased", "unbiased")


def BatchNorm(  # noqa: N802 - layer constructors are CamelCase, as in stax
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis_name: Hashable | None = None,
    use_scale: bool = True,
    use_bias: bool = True,
    *,
    running_variance: str = "biased",
) -> Layer:
    """Batch normalization: each feature is normalized by statistics over the batch (and spatial) axes.

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``, with ``mean`` and the biased ``var`` (the mean
    of squared deviations) over every axis but the last. With ``train=True`` they are the batch's
    statistics, and the returned state holds the updated running averages::

        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var  = momentum * running_var  + (1 - momentum) * var * (n / (n - 1) if "unbiased" else 1)

    where ``n`` is the number of values averaged per feature (batch times spatial size, times the shards
    of ``axis_name``). With ``train=False`` the running averages are used and the state is returned unchanged.

    Conventions. ``momentum`` weights the OLD average (Keras/Flax); PyTorch's ``momentum`` weights the NEW
    batch, so PyTorch's default ``momentum=0.1`` is ``momentum=0.9`` here (nnjax's default, 0.99, is Keras').
    Flax and Keras fold the biased batch variance into ``running_var`` (``running_variance="biased"``, the
    default); PyTorch folds the unbiased one, ``var * n / (n - 1)`` (``running_variance="unbiased"``). Both
    normalize a training batch by its biased variance, so the two agree in ``train=True`` outputs and in
    evaluation from the same running statistics; only the running variance they accumulate differs (most
    for small batches). For a model ported from PyTorch use
    ``BatchNorm(momentum=0.9, epsilon=1e-5, running_variance="unbiased")`` (``nnjax.interop.TorchBatchNorm``).

    Params: ``{"scale": (features,), "bias": (features,)}``. State: ``{"mean": (features,), "var": (features,)}``,
    starting at 0 and 1.

    Args:
      momentum: decay of the running averages, in [0, 1]: one minus PyTorch's ``momentum``.
      epsilon: added to the variance (PyTorch's ``eps``).
      axis_name: name of a mapped axis (``shard_map``, ``pmap``, ``vmap(..., axis_name=...)``) whose
        shards form one batch: statistics are averaged over it with ``lax.pmean`` (equal shard sizes).
      use_scale, use_bias: learn ``scale`` and ``bias`` (PyTorch's ``affine``).
      running_variance: ``"biased"`` (Flax/Keras) or ``"unbiased"`` (PyTorch): the batch variance folded
        into ``running_var`` in training.

    Returns:
      A ``Layer`` named ``"BatchNorm"``: ``x: (batch, ..., features) -> y`` of the same shape.

    Raises:
      ValueError: ``momentum`` outside [0, 1], ``epsilon <= 0`` or an unknown ``running_variance``.
      LayerError: (at init/apply) no feature axis, a feature count other than init's, or a training batch of
        one value per feature (the output would be all zeros; ``n - 1 = 0`` with ``running_variance="unbiased"``),
        as under ``vmap`` over single examples or in per-example gradients.
      LayerTypeError: (at apply) integer input.

    Example:
      >>> layer = nnjax.BatchNorm(momentum=0.9, running_variance="unbiased")
      >>> params, state = layer.init(jax.random.key(0), (2,))
      >>> y, state = layer.apply(params, state, jnp.array([[0.0, 1.0], [2.0, 5.0]]), train=True)
      >>> print(y)
      [[-1. -1.]
       [ 1.  1.]]
      >>> print(state["mean"], state["var"])  # 0.9 * 0 + 0.1 * mean; 0.9 * 1 + 0.1 * var * 2 / (2 - 1)
      [0.1 0.3] [1.1 1.7]
    """
    name = "BatchNorm"
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{name}: argument `momentum` expected a value in [0, 1], given {momentum!r}.")
    _check_epsilon(name, epsilon)
    if running_variance not in RUNNING_VARIANCES:
        raise ValueError(
            f"{name}: argument `running_variance` expected 'biased' (Flax/Keras) or 'unbiased' (PyTorch), "
            f"given {running_variance!r}."
        )
    unbiased = running_variance == "unbiased"

    def init(key, input_shape: Shape, dtype=jnp.float32):
        features = _features(name, input_shape)
        state = {"mean": jnp.zeros((features,), dtype), "var": jnp.ones((features,), dtype)}
        return _affine_params(features, use_scale, use_bias, dtype), state

    def apply(params, state, x, *, key=None, train=False):
        _check_input(name, x, state["mean"].shape[0])
        xs = _stats(x)
        if train:
            axes = tuple(range(x.ndim - 1))
            if axis_name is None and math.prod(x.shape[:-1]) < 2 and not unbiased:
                raise LayerError(
                    f"{name}: training on one value per feature normalizes it to its own mean, 0, so the output is "
                    f"constant and its gradients zero; given x of shape {tuple(x.shape)}. Hint: train on batches of "
                    f"at least 2 examples; per-example computations (vmap over examples, DP-SGD's per-example "
                    f"gradients) need a per-example norm such as LayerNorm or GroupNorm."
                )
            mean = jnp.mean(xs, axis=axes)
            if axis_name is not None:
                mean = lax.pmean(mean, axis_name)
            var = jnp.mean(jnp.square(xs - mean), axis=axes)
            if axis_name is not None:
                var = lax.pmean(var, axis_name)
            folded = var
            if unbiased:
                n = math.prod(x.shape[:-1])  # values per feature in this shard
                if axis_name is not None:
                    n = n * lax.psum(1, axis_name)
                elif n < 2:
                    raise LayerError(
                        f"{name}: running_variance='unbiased' needs more than one value per feature in training "
                        f"(the unbiased variance divides by n - 1), given x of shape {tuple(x.shape)}. Hint: "
                        f"train on batches of at least 2 examples, as PyTorch requires."
                    )
                folded = var * (n / (n - 1))
            new_state = {
                "mean": (momentum * state["mean"] + (1 - momentum) * lax.stop_gradient(mean)).astype(
                    state["mean"].dtype
                ),
                "var": (momentum * state["var"] + (1 - momentum) * lax.stop_gradient(folded)).astype(
                    state["var"].dtype
                ),
            }
        else:
            mean, var, new_state = state["mean"], state["var"], state
        y = (xs - mean) * lax.rsqrt(var + epsilon)
        return _affine(y, params, x), new_state

    return Layer(init, apply, name)


def LayerNorm(epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True) -> Layer:  # noqa: N802
    """Layer normalization over the last (features) axis of each example (PyTorch's ``nn.LayerNorm(features)``).

    ``y = (x - mean(x, -1)) / sqrt(var(x, -1) + epsilon) * scale + bias`` (biased variance).

    Params: ``{"scale": (features,), "bias": (features,)}`` (PyTorch's ``weight`` and ``bias``).

    Args:
      epsilon: added to the variance (PyTorch's ``eps``, default 1e-5 in both).
      use_scale, use_bias: learn ``scale`` and ``bias`` (PyTorch's ``elementwise_affine`` and ``bias``).

    Returns:
      A ``Layer`` named ``"LayerNorm"``: ``x: (batch, ..., features) -> y`` of the same shape.

    Raises:
      ValueError: ``epsilon <= 0``.
      LayerError: (at init/apply) no feature axis, or a feature count other than init's.
      LayerTypeError: (at apply) integer input.

    Example:
      >>> layer = nnjax.LayerNorm()
      >>> params, state = layer.init(jax.random.key(0), (4,))
      >>> print(layer.apply(params, state, jnp.array([[1.0, 2.0, 3.0, 4.0]]))[0])
      [[-1.3416 -0.4472  0.4472  1.3416]]
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
    """Group normalization: channels split into ``num_groups`` groups, each normalized per example.

    Each group is normalized over its channels and all spatial axes (``num_groups=1``: over the whole
    example; ``num_groups = channels``: instance normalization). Groups are consecutive channels, as
    PyTorch's ``nn.GroupNorm(num_groups, channels)``, whose ``weight`` and ``bias`` are ``scale`` and ``bias``.

    Params: ``{"scale": (channels,), "bias": (channels,)}``.

    Args:
      num_groups: number of channel groups; must divide the channel count.
      epsilon: added to the variance.
      use_scale, use_bias: learn ``scale`` and ``bias``.

    Returns:
      A ``Layer`` named ``"GroupNorm(num_groups)"``: ``x: (batch, *spatial, channels) -> y`` of the same shape.

    Raises:
      ValueError: ``num_groups`` not a positive int, or ``epsilon <= 0``.
      LayerError: (at init/apply) channels not divisible by ``num_groups``, a channel count other than init's.
      LayerTypeError: (at apply) integer input.

    Example:
      >>> layer = nnjax.GroupNorm(2)
      >>> params, state = layer.init(jax.random.key(0), (4, 4, 6))
      >>> y, _ = layer.apply(params, state, jnp.arange(2 * 4 * 4 * 6.0).reshape(2, 4, 4, 6))
      >>> print(y.shape, abs(y[..., :3].mean()).round(4), y[..., :3].std().round(4))   # 0: either sign
      (2, 4, 4, 6) 0.0 1.0
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

    PyTorch's ``nn.RMSNorm(features, eps)`` (its ``weight`` is ``scale``; its default ``eps=None`` means the
    dtype's machine epsilon, so pass ``eps`` explicitly when porting).

    Params: ``{"scale": (features,)}`` (no bias).

    Args:
      epsilon: added to the mean square.
      use_scale: learn ``scale``.

    Returns:
      A ``Layer`` named ``"RMSNorm"``: ``x: (batch, ..., features) -> y`` of the same shape.

    Raises:
      ValueError: ``epsilon <= 0``.
      LayerError: (at init/apply) no feature axis, or a feature count other than init's.
      LayerTypeError: (at apply) integer input.

    Example:
      >>> layer = nnjax.RMSNorm()
      >>> params, state = layer.init(jax.random.key(0), (2,))
      >>> print(layer.apply(params, state, jnp.array([[3.0, 4.0]]))[0])
      [[0.8485 1.1314]]
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
