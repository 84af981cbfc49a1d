"""nnjax's settings: the formulations (``kernels("generic" | "cpu" | "auto")``) and the persistent
compilation cache (``compilation_cache()``)."""

from nnjax._src.compilation_cache import compilation_cache, default_cache_directory
from nnjax._src.config import KERNEL_NAMES, MODES, active_kernels, kernels

__all__ = ["KERNEL_NAMES", "MODES", "active_kernels", "compilation_cache", "default_cache_directory", "kernels"]
