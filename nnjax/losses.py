"""Losses: ``loss(predictions, targets, weights=None) -> scalar``, mean-reduced, validated while tracing."""

from nnjax._src.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    half_mse,
    hinge,
    huber,
    mae,
    mse,
    softmax_cross_entropy,
    softmax_cross_entropy_soft,
)

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "half_mse",
    "hinge",
    "huber",
    "mae",
    "mse",
    "softmax_cross_entropy",
    "softmax_cross_entropy_soft",
]
