"""Mixed precision: a policy set once (param/compute/output dtypes) and dynamic loss scaling for float16."""

from nnjax._src.precision import (
    LossScaleState,
    Policy,
    dynamic_loss_scale,
    make_loss_scaled_train_step,
    with_policy,
)

__all__ = [
    "LossScaleState",
    "Policy",
    "dynamic_loss_scale",
    "make_loss_scaled_train_step",
    "with_policy",
]
