"""nnjax's settings: the formulations (``kernels("generic" | "cpu" | "auto")``), the persistent
compilation cache (``compilation_cache()``) and the checked mode (``checks(True)``)."""

from nnjax._src.checks import CheckError, checked, checks, checks_enabled
from nnjax._src.compilation_cache import compilation_cache, default_cache_directory
from nnjax._src.config import KERNEL_NAMES, MODES, active_kernels, kernels

__all__ = [
    "KERNEL_NAMES",
    "MODES",
    "CheckError",
    "active_kernels",
    "checked",
    "checks",
    "checks_enabled",
    "compilation_cache",
    "default_cache_directory",
    "kernels",
]
