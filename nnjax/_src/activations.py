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

    Example:
      >>> step(jnp.array(0.5 * 0.5 + 0.6 * 0.7), threshold=0.5)  # the source texts' neuron: 0.67 fires
      Array(1., dtype=float32)
    """
    return jnp.where(x >= threshold, 1.0, 0.0).astype(jnp.result_type(x, jnp.float32))


def straight_through_step(x: Array, threshold: float = 0.0) -> Array:
    """``step`` in the forward pass, identity gradient in the backward pass (a straight-through estimator)."""
    return x + jax.lax.stop_gradient(step(x, threshold) - x)


def _activation(fn, name: str) -> Layer:
    def checked(x):
        check_float_input(name, x)
        return fn(x)

    return stateless(checked, name)


def Step(threshold: float = 0.0) -> Layer:  # noqa: N802 - layer constructors are CamelCase, as in stax
    """Layer applying ``step(x, threshold)``: outputs 0 or 1; zero gradient."""
    check_number("Step", "threshold", threshold)
    return _activation(lambda x: step(x, threshold), f"Step({threshold})")


def StraightThroughStep(threshold: float = 0.0) -> Layer:  # noqa: N802
    """Layer applying ``straight_through_step(x, threshold)``: 0/1 forward, identity gradient."""
    check_number("StraightThroughStep", "threshold", threshold)
    return _activation(lambda x: straight_through_step(x, threshold), f"StraightThroughStep({threshold})")


def Sigmoid() -> Layer:  # noqa: N802
    """Layer applying ``sigmoid``: ``1 / (1 + exp(-x))``, in (0, 1)."""
    return _activation(sigmoid, "Sigmoid")


def Tanh() -> Layer:  # noqa: N802
    """Layer applying ``tanh``, in (-1, 1)."""
    return _activation(tanh, "Tanh")


def Relu() -> Layer:  # noqa: N802
    """Layer applying ``relu``: ``max(0, x)``."""
    return _activation(relu, "Relu")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:  # noqa: N802
    """Layer applying ``leaky_relu``: ``x`` if ``x >= 0`` else ``negative_slope * x``."""
    check_number("LeakyRelu", "negative_slope", negative_slope)
    return _activation(lambda x: leaky_relu(x, negative_slope), f"LeakyRelu({negative_slope})")


def Elu(alpha: float = 1.0) -> Layer:  # noqa: N802
    """Layer applying ``elu``: ``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""
    check_number("Elu", "alpha", alpha)
    return _activation(lambda x: elu(x, alpha), f"Elu({alpha})")


def Gelu(approximate: bool = True) -> Layer:  # noqa: N802
    """Layer applying ``gelu`` (tanh approximation by default)."""
    if not isinstance(approximate, bool):
        raise TypeError(f"Gelu: argument `approximate` expected a bool, given {approximate!r}.")
    return _activation(lambda x: gelu(x, approximate=approximate), f"Gelu(approximate={approximate})")


def Silu() -> Layer:  # noqa: N802
    """Layer applying ``silu`` (swish): ``x * sigmoid(x)``."""
    return _activation(silu, "Silu")


def Softplus() -> Layer:  # noqa: N802
    """Layer applying ``softplus``: ``log(1 + exp(x))``."""
    return _activation(softplus, "Softplus")


def Softmax(axis: int = -1) -> Layer:  # noqa: N802
    """Layer applying ``softmax`` along ``axis``: class probabilities that sum to 1."""
    check_number("Softmax", "axis", axis, integer=True)
    return _activation(lambda x: softmax(x, axis=axis), f"Softmax(axis={axis})")


def LogSoftmax(axis: int = -1) -> Layer:  # noqa: N802
    """Layer applying ``log_softmax`` along ``axis``."""
    check_number("LogSoftmax", "axis", axis, integer=True)
    return _activation(lambda x: log_softmax(x, axis=axis), f"LogSoftmax(axis={axis})")
