"""Activation functions, and the parameter-free layers that apply them.

Functions act elementwise on arrays (``softmax``/``log_softmax`` along ``axis``); each has a layer
constructor of the same name in CamelCase, e.g. ``relu`` and ``Relu()``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nnjax._src.core import Layer, stateless
from nnjax._src.errors import check_float_input, check_number
from nnjax._src.types import Array

sigmoid = jax.nn.sigmoid
tanh = jnp.tanh
relu = jax.nn.relu
leaky_relu = jax.nn.leaky_relu  # leaky_relu(x, negative_slope=0.01)
elu = jax.nn.elu  # elu(x, alpha=1.0)
gelu = jax.nn.gelu  # gelu(x, approximate=True)
silu = jax.nn.silu
softplus = jax.nn.softplus
softmax = jax.nn.softmax  # softmax(x, axis=-1)
log_softmax = jax.nn.log_softmax


def step(x: Array, threshold: float = 0.0) -> Array:
    """The threshold (Heaviside, unit step) activation: 1 where ``x >= threshold``, else 0.

    Its gradient is zero almost everywhere, so gradient descent cannot train through it; use
    ``straight_through_step`` to train perceptron-style networks.

    Args:
      x: an array of any shape (floating or integer).
      threshold: the value at and above which the output is 1.

    Returns:
      An array shaped like ``x`` holding 0.0 and 1.0, of dtype ``result_type(x, float32)`` (float32 for
      integer or float32 ``x``).

    Example:
      >>> step = nnjax.activations.step
      >>> float(step(jnp.array(0.5 * 0.5 + 0.6 * 0.7), threshold=0.5))  # the source texts' neuron: 0.67 fires
      1.0
      >>> step(jnp.array([-1.0, 0.0, 2.0])).tolist()
      [0.0, 1.0, 1.0]
    """
    return jnp.where(x >= threshold, 1.0, 0.0).astype(jnp.result_type(x, jnp.float32))


def straight_through_step(x: Array, threshold: float = 0.0) -> Array:
    """``step`` in the forward pass, identity gradient in the backward pass (a straight-through estimator).

    Computed as ``x + stop_gradient(step(x, threshold) - x)``: the value is ``step``'s, the derivative
    with respect to ``x`` is 1 everywhere, so a network of thresholds trains by gradient descent.

    Args:
      x: a floating-point array of any shape.
      threshold: the value at and above which the output is 1.

    Returns:
      An array shaped like ``x`` holding 0.0 and 1.0 (floating, as ``step``).

    Example:
      >>> ste = nnjax.activations.straight_through_step
      >>> x = jnp.array([-0.5, 0.5])
      >>> ste(x).tolist()
      [0.0, 1.0]
      >>> jax.grad(lambda x: ste(x).sum())(x).tolist()  # step's own gradient would be [0.0, 0.0]
      [1.0, 1.0]
    """
    return x + jax.lax.stop_gradient(step(x, threshold) - x)


def _activation(fn, name: str) -> Layer:
    def checked(x):
        check_float_input(name, x)
        return fn(x)

    return stateless(checked, name)


def Step(threshold: float = 0.0) -> Layer:  # noqa: N802 - layer constructors are CamelCase, as in stax
    """Layer applying ``step(x, threshold)``: outputs 0 or 1; zero gradient.

    Its gradient is zero almost everywhere: for training use ``StraightThroughStep``.

    Args:
      threshold: the value at and above which the output is 1.

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape (0.0/1.0, dtype ``result_type(x, float32)``).

    Raises:
      TypeError: ``threshold`` is not a number (bools are refused).
      ValueError: ``threshold`` is NaN.
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> layer = nnjax.Step(0.5)
      >>> y, _ = layer.apply({}, {}, jnp.array([[0.2, 0.5, 0.9]]))
      >>> y.tolist()
      [[0.0, 1.0, 1.0]]
    """
    check_number("Step", "threshold", threshold)
    return _activation(lambda x: step(x, threshold), f"Step({threshold})")


def StraightThroughStep(threshold: float = 0.0) -> Layer:  # noqa: N802
    """Layer applying ``straight_through_step(x, threshold)``: 0/1 forward, identity gradient.

    Args:
      threshold: the value at and above which the output is 1.

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape (0.0/1.0, dtype ``result_type(x, float32)``).

    Raises:
      TypeError: ``threshold`` is not a number (bools are refused).
      ValueError: ``threshold`` is NaN.
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> layer = nnjax.StraightThroughStep()
      >>> x = jnp.array([[-0.5, 0.5]])
      >>> layer.apply({}, {}, x)[0].tolist()
      [[0.0, 1.0]]
      >>> jax.grad(lambda x: layer.apply({}, {}, x)[0].sum())(x).tolist()
      [[1.0, 1.0]]
    """
    check_number("StraightThroughStep", "threshold", threshold)
    return _activation(lambda x: straight_through_step(x, threshold), f"StraightThroughStep({threshold})")


def Sigmoid() -> Layer:  # noqa: N802
    """Layer applying ``sigmoid``: ``1 / (1 + exp(-x))``, in (0, 1).

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Sigmoid().apply({}, {}, jnp.array([[-1.0, 0.0, 1.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [0.2689, 0.5, 0.7311]
    """
    return _activation(sigmoid, "Sigmoid")


def Tanh() -> Layer:  # noqa: N802
    """Layer applying ``tanh``, in (-1, 1).

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Tanh().apply({}, {}, jnp.array([[-1.0, 0.0, 1.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [-0.7616, 0.0, 0.7616]
    """
    return _activation(tanh, "Tanh")


def Relu() -> Layer:  # noqa: N802
    """Layer applying ``relu``: ``max(0, x)``.

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Relu().apply({}, {}, jnp.array([[-1.0, 0.0, 2.0]]))
      >>> y.tolist()
      [[0.0, 0.0, 2.0]]
    """
    return _activation(relu, "Relu")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:  # noqa: N802
    """Layer applying ``leaky_relu``: ``x`` if ``x >= 0`` else ``negative_slope * x``.

    Args:
      negative_slope: the slope for negative inputs (0.01 by default).

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      TypeError: ``negative_slope`` is not a number (bools are refused).
      ValueError: ``negative_slope`` is NaN.
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.LeakyRelu(0.1).apply({}, {}, jnp.array([[-2.0, 0.0, 2.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [-0.2, 0.0, 2.0]
    """
    check_number("LeakyRelu", "negative_slope", negative_slope)
    return _activation(lambda x: leaky_relu(x, negative_slope), f"LeakyRelu({negative_slope})")


def Elu(alpha: float = 1.0) -> Layer:  # noqa: N802
    """Layer applying ``elu``: ``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``.

    Args:
      alpha: the scale of the negative part, which tends to ``-alpha`` (1.0 by default).

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      TypeError: ``alpha`` is not a number (bools are refused).
      ValueError: ``alpha`` is NaN.
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Elu().apply({}, {}, jnp.array([[-1.0, 0.0, 2.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [-0.6321, 0.0, 2.0]
    """
    check_number("Elu", "alpha", alpha)
    return _activation(lambda x: elu(x, alpha), f"Elu({alpha})")


def Gelu(approximate: bool = True) -> Layer:  # noqa: N802
    """Layer applying ``gelu``: ``x * Phi(x)``, ``Phi`` the standard normal CDF (tanh approximation by default).

    The default ``approximate=True`` follows ``jax.nn.gelu``; PyTorch's ``nn.GELU()`` default is the exact form,
    ``approximate=False``.

    Args:
      approximate: use the tanh approximation; False computes the exact form with ``erf``.

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      TypeError: ``approximate`` is not a bool.
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Gelu(approximate=False).apply({}, {}, jnp.array([[-1.0, 0.0, 1.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [-0.1587, 0.0, 0.8413]
    """
    if not isinstance(approximate, bool):
        raise TypeError(f"Gelu: argument `approximate` expected a bool, given {approximate!r}.")
    return _activation(lambda x: gelu(x, approximate=approximate), f"Gelu(approximate={approximate})")


def Silu() -> Layer:  # noqa: N802
    """Layer applying ``silu`` (swish): ``x * sigmoid(x)``.

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Silu().apply({}, {}, jnp.array([[-1.0, 0.0, 1.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [-0.2689, 0.0, 0.7311]
    """
    return _activation(silu, "Silu")


def Softplus() -> Layer:  # noqa: N802
    """Layer applying ``softplus``: ``log(1 + exp(x))``, a smooth ``relu``.

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Softplus().apply({}, {}, jnp.array([[-1.0, 0.0, 1.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [0.3133, 0.6931, 1.3133]
    """
    return _activation(softplus, "Softplus")


def Softmax(axis: int = -1) -> Layer:  # noqa: N802
    """Layer applying ``softmax`` along ``axis``: class probabilities that sum to 1.

    Typically last, on logits ``(batch, classes)``; nnjax's losses take logits, so leave it out of a model
    trained with ``softmax_cross_entropy``.

    Args:
      axis: the axis that sums to 1 (-1, the features, by default).

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      TypeError: ``axis`` is not an int.
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.Softmax().apply({}, {}, jnp.array([[0.0, 0.0], [0.0, 1.0]]))
      >>> [[round(float(v), 4) for v in row] for row in y]
      [[0.5, 0.5], [0.2689, 0.7311]]
    """
    check_number("Softmax", "axis", axis, integer=True)
    return _activation(lambda x: softmax(x, axis=axis), f"Softmax(axis={axis})")


def LogSoftmax(axis: int = -1) -> Layer:  # noqa: N802
    """Layer applying ``log_softmax`` along ``axis``: ``x - logsumexp(x, axis)``, log-probabilities.

    Args:
      axis: the axis to normalize over (-1, the features, by default).

    Returns:
      A parameter-free ``Layer`` (params and state ``{}``) whose ``apply`` maps ``x: (batch, ...)`` float to
      ``y`` of the same shape and dtype.

    Raises:
      TypeError: ``axis`` is not an int.
      LayerTypeError: (at apply) ``x`` is not floating point, e.g. uint8 pixels; scale it first.

    Example:
      >>> y, _ = nnjax.LogSoftmax().apply({}, {}, jnp.array([[0.0, 0.0]]))
      >>> [round(float(v), 4) for v in y[0]]
      [-0.6931, -0.6931]
    """
    check_number("LogSoftmax", "axis", axis, integer=True)
    return _activation(lambda x: log_softmax(x, axis=axis), f"LogSoftmax(axis={axis})")
