"""Activation functions (elementwise; softmax/log_softmax along an axis). Layers: ``nnjax.Relu()`` etc."""

from nnjax._src.activations import (
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    step,
    straight_through_step,
    tanh,
)

__all__ = [
    "elu",
    "gelu",
    "leaky_relu",
    "log_softmax",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "step",
    "straight_through_step",
    "tanh",
]
