"""Per-example gradients (vmap of grad over the batch), per-example clipping and DP-SGD."""

from nnjax._src.per_example import (
    clip_per_example,
    make_dp_train_step,
    per_example_grads,
    per_example_norms,
    per_example_value_and_grads,
)

__all__ = [
    "clip_per_example",
    "make_dp_train_step",
    "per_example_grads",
    "per_example_norms",
    "per_example_value_and_grads",
]
