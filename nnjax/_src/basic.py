"""Basic layers: Dense, Dropout, Flatten, Reshape, Identity."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nnjax._src import initializers
from nnjax._src.core import Layer, stateless
from nnjax._src.errors import LayerError, check_float_input, check_number, check_rank
from nnjax._src.types import Shape


def Dense(  # noqa: N802 - layer constructors are CamelCase, as in stax
    features: int,
    *,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
) -> Layer:
    """A fully connected layer on the last axis: ``y = x @ w + b``.

    Params: ``{"w": (in_features, features), "b": (features,)}``.

    Args:
      features: number of output neurons.
      use_bias: add the bias ``b``.
      w_init, b_init: initializer functions or names (see ``nnjax.initializers``).

    Shapes: ``x: (batch, ..., in_features) -> y: (batch, ..., features)``.
    """
    name = f"Dense({features})"
    check_number(name, "features", features, low=1, integer=True, what="a positive int")
    w_fn, b_fn = initializers.get(w_init, f"{name} w_init"), initializers.get(b_init, f"{name} b_init")

    def init(key, input_shape: Shape, dtype=jnp.float32):
        if len(input_shape) < 1:
            raise LayerError(f"{name}: argument `input_shape` expected at least one axis (features), given {input_shape}.")
        w_key, b_key = jax.random.split(key)
        params = {"w": w_fn(w_key, (input_shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_fn(b_key, (features,), dtype)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        check_float_input(name, x)
        check_rank(name, x, 2, "a batch of shape (batch, ..., features)")
        in_features = params["w"].shape[0]
        if x.shape[-1] != in_features:
            raise LayerError(
                f"{name}: argument `x` expected shape (batch, ..., {in_features}), given {tuple(x.shape)}. "
                f"Hint: the layer was initialized for {in_features} input features; check `input_shape` at init "
                f"or add Flatten() before it."
            )
        y = x @ params["w"]
        if use_bias:
            y = y + params["b"]
        return y, state

    return Layer(init, apply, name)


def Dropout(rate: float) -> Layer:  # noqa: N802
    """Sets each input to zero with probability ``rate`` in training and scales the rest by ``1 / (1 - rate)``.

    ``rate`` is the probability of DROPPING (stax's ``Dropout`` takes the keep-rate). Identity when
    ``train=False``. In training it needs ``key``.
    """
    name = f"Dropout({rate})"
    check_number(name, "rate", rate, low=0.0, high=1.0, high_inclusive=False, what="a drop probability in [0, 1)")

    def init(key, input_shape, dtype=jnp.float32):
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise LayerError(
                f"{name}: argument `key` is required when train=True; given None. Hint: call "
                f"apply(params, state, x, key=jax.random.key(seed), train=True), or train=False to evaluate."
            )
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state

    return Layer(init, apply, name)


def Flatten() -> Layer:  # noqa: N802
    """Flattens each example to a vector: ``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``."""

    def fn(x):
        check_rank("Flatten", x, 1, "a batch")
        return jnp.reshape(x, (x.shape[0], -1))

    return stateless(fn, "Flatten")


def Reshape(shape: Shape) -> Layer:  # noqa: N802
    """Reshapes each example: ``(batch, *in_shape) -> (batch, *shape)``; one entry of ``shape`` may be -1."""
    name = f"Reshape({shape!r})"
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"{name}: argument `shape` expected a tuple of ints, given {shape!r}.")
    shape = tuple(shape)
    if shape.count(-1) > 1 or any(d < 1 and d != -1 for d in shape):
        raise ValueError(f"{name}: argument `shape` expected positive sizes and at most one -1, given {shape}.")

    def fn(x):
        size = math.prod(x.shape[1:])
        known = math.prod(d for d in shape if d != -1)
        fits = size == known if -1 not in shape else (known > 0 and size % known == 0)
        if not fits:
            raise LayerError(
                f"{name}: argument `x` expected examples of {known} elements to reshape to {shape}, "
                f"given shape {tuple(x.shape)} ({size} elements per example)."
            )
        return jnp.reshape(x, (x.shape[0], *shape))

    return stateless(fn, name)


def Identity() -> Layer:  # noqa: N802
    """Returns its input unchanged."""
    return stateless(lambda x: x, "Identity")
