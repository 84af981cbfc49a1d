"""The switch that picks nnjax's formulations: ``nnjax.config.kernels("generic" | "cpu" | "auto")``."""

from nnjax._src.config import KERNEL_NAMES, MODES, active_kernels, kernels

__all__ = ["KERNEL_NAMES", "MODES", "active_kernels", "kernels"]
