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

    Params: ``{"w": (in_features, features), "b": (features,)}`` (no ``"b"`` when ``use_bias=False``);
    ``in_features`` is the last axis of ``input_shape`` at ``init``.

    Args:
      features: number of output neurons.
      use_bias: add the bias ``b``.
      w_init, b_init: initializer functions or names (see ``nnjax.initializers``); default Glorot-uniform
        weights and zero biases. ``w`` is drawn from the layer's key, which is split in two (``w``, ``b``)
        only when ``b_init`` draws random numbers too (not ``zeros``/``ones``).

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, ..., in_features)`` float to ``y: (batch, ..., features)``
      (the leading axes are kept).

    Raises:
      TypeError, ValueError: ``features`` is not a positive int; ValueError also for an unknown initializer name.
      LayerError: (at init) an empty ``input_shape``; (at apply) ``x`` of rank < 2 or whose last axis is not the
        ``in_features`` given at init.
      LayerTypeError: (at apply) ``x`` is not floating point.

    Example:
      >>> layer = nnjax.Dense(3)
      >>> params, state = layer.init(jax.random.key(0), (4,))
      >>> jax.tree.map(jnp.shape, params)
      {'b': (3,), 'w': (4, 3)}
      >>> layer.apply(params, state, jnp.ones((2, 4)))[0].shape
      (2, 3)
    """
    name = f"Dense({features})"
    check_number(name, "features", features, low=1, integer=True, what="a positive int")
    w_fn, b_fn = initializers.get(w_init, f"{name} w_init"), initializers.get(b_init, f"{name} b_init")

    def init(key, input_shape: Shape, dtype=jnp.float32):
        if len(input_shape) < 1:
            raise LayerError(
                f"{name}: argument `input_shape` expected at least one axis (features), given {input_shape}."
            )
        w_shape = (input_shape[-1], features)
        return initializers.weight_and_bias(key, w_fn, w_shape, b_fn, (features,), dtype, use_bias), {}

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

    Args:
      rate: the drop probability, in ``[0, 1)``; 0 makes the layer the identity.

    Returns:
      A parameter-free ``Layer`` whose ``apply(params, state, x, key=..., train=...)`` maps ``x: (batch, ...)``
      to an array of the same shape and dtype.

    Raises:
      TypeError, ValueError: ``rate`` is not a number in ``[0, 1)``.
      LayerError: (at apply) ``train=True`` with ``rate > 0`` and no ``key``.

    Example:
      >>> layer = nnjax.Dropout(0.5)
      >>> x = jnp.ones((10, 100))
      >>> bool((layer.apply({}, {}, x)[0] == x).all())  # train=False: the identity
      True
      >>> y, _ = layer.apply({}, {}, x, key=jax.random.key(0), train=True)
      >>> sorted(set(y.ravel().tolist()))  # dropped, or kept and scaled by 1 / (1 - 0.5)
      [0.0, 2.0]
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
    """Flattens each example to a vector: ``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``.

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x: (batch, *input_shape)`` to
      ``(batch, prod(input_shape))`` (``(batch, 1)`` for ``x: (batch,)``).

    Raises:
      LayerError: (at apply) ``x`` is a scalar (no batch axis).

    Example:
      >>> model = nnjax.serial(nnjax.Flatten(), nnjax.Dense(3))
      >>> params, state = model.init(jax.random.key(0), (4, 4, 1))
      >>> params["dense_1"]["w"].shape  # the Dense is layer 1 of the serial
      (16, 3)
      >>> nnjax.Flatten().apply({}, {}, jnp.ones((2, 4, 4, 1)))[0].shape
      (2, 16)
    """

    def fn(x):
        check_rank("Flatten", x, 1, "a batch")
        return jnp.reshape(x, (x.shape[0], -1))

    return stateless(fn, "Flatten")


def Reshape(shape: Shape) -> Layer:  # noqa: N802
    """Reshapes each example: ``(batch, *in_shape) -> (batch, *shape)``; one entry of ``shape`` may be -1.

    Args:
      shape: the new shape of ONE example (no batch axis), a tuple of positive ints with at most one -1
        (inferred from the size).

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x: (batch, *in_shape)`` to ``(batch, *shape)``.

    Raises:
      TypeError: ``shape`` is not a tuple (or list) of ints.
      ValueError: a size below 1 other than -1, or more than one -1.
      LayerError: (at apply) the examples of ``x`` do not have ``prod(shape)`` elements (or a multiple of the
        known sizes, with a -1).

    Example:
      >>> layer = nnjax.Reshape((7, 7, -1))
      >>> layer.apply({}, {}, jnp.ones((2, 98)))[0].shape
      (2, 7, 7, 2)
    """
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
    """A layer that returns its input unchanged (e.g. the shortcut branch of ``fanout``/``parallel``).

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps any ``x`` to ``x`` itself.

    Example:
      >>> block = nnjax.serial(nnjax.fanout(2), nnjax.parallel(nnjax.Identity(), nnjax.Dense(4)), nnjax.add())
      >>> params, state = block.init(jax.random.key(0), (4,))
      >>> block.apply(params, state, jnp.ones((3, 4)))[0].shape
      (3, 4)
    """
    return stateless(lambda x: x, "Identity")
