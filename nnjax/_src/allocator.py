"""Opt-in CPU memory setting: keep freed memory in the process so XLA's temporaries reuse warm pages.

XLA:CPU allocates a program's temporary buffers afresh on every execution. glibc's ``malloc`` serves
blocks above its mmap threshold (128 KiB, rising to at most 32 MiB as blocks are freed) with fresh
``mmap`` pages and hands them back on ``free``, so every step then pays a page fault and a zeroed page
for each 4 KiB it touches. On the anchor CNN (two 3x3 convolutions on 28x28 images, batch 128; 2-core
AMD EPYC) that was about a third of the training step: 51.7 -> 33.0 ms with ``keep_freed_memory()``
in ``benchmarks/anchors.py --only cnn,lstm,mlp`` runs. The MLP and LSTM steps did not change.

This is a process-wide choice about memory, so nnjax never makes it on import: an application calls
``keep_freed_memory()`` once (nnjax's example trainers do). The environment variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set the same thing before a process starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_C_INT = 2**31 - 1


def keep_freed_memory(limit_bytes: int = 2**30) -> bool:
    """Tells glibc's ``malloc`` to serve blocks up to ``limit_bytes`` from its heap and to keep up to
    ``limit_bytes`` of freed memory instead of returning it to the system.

    Call it once, early in an application (``nnjax.keep_freed_memory()``); it affects the whole process
    and is not undone. Cost: the process keeps up to ``limit_bytes`` of memory it no longer uses.

    Args:
      limit_bytes: the mmap threshold and the trim threshold, in bytes: an int in ``[1, 2**31 - 1]``
        (default 1 GiB).

    Returns:
      True when applied (Linux with glibc), False elsewhere (macOS, Windows, musl), where it does
      nothing.

    Raises:
      ValueError: ``limit_bytes`` is not an int in ``[1, 2**31 - 1]`` (checked before anything changes).

    Example:
      >>> applied = nnjax.keep_freed_memory(64 << 20)   # keep up to 64 MiB of freed memory
      >>> applied in (True, False)                      # False where glibc's mallopt is unavailable
      True
      >>> nnjax.keep_freed_memory(0)
      Traceback (most recent call last):
      ...
      ValueError: keep_freed_memory: argument `limit_bytes` expected an int in [1, 2147483647], given 0.
    """
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or not 0 < limit_bytes <= _MAX_C_INT:
        raise ValueError(
            f"keep_freed_memory: argument `limit_bytes` expected an int in [1, {_MAX_C_INT}], given {limit_bytes!r}."
        )
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library found, or one without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, limit_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, limit_bytes))
