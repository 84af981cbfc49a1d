"""JAX's persistent compilation cache as one nnjax setting: ``nnjax.config.compilation_cache()``.

A program XLA compiled once is written to disk and loaded, not compiled, by the next process that asks
for the same program (same computation, shapes, compiler options, jax version and device kind). On a
CPU most of a small job's wall time is compilation, so a second run of a trainer starts at once.

Importing nnjax never turns it on: a library does not change JAX's global configuration by itself. The
example trainers, the notebooks and the test suite call it; ``NNJAX_COMPILATION_CACHE`` overrides the
directory (``NNJAX_COMPILATION_CACHE=0`` keeps the cache off).
"""

from __future__ import annotations

import os

import jax

ENVIRONMENT_VARIABLE = "NNJAX_COMPILATION_CACHE"


def default_cache_directory() -> str:
    """Where ``compilation_cache()`` keeps programs unless told otherwise.

    Returns:
      ``$XDG_CACHE_HOME/nnjax/xla``, or ``~/.cache/nnjax/xla`` when ``XDG_CACHE_HOME`` is not set.

    Example:
      >>> import os
      >>> nnjax.config.default_cache_directory().endswith(os.path.join("nnjax", "xla"))
      True
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nnjax", "xla")


def compilation_cache(directory: str | os.PathLike | None = None, *, max_size_bytes: int = 2**31) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory (None when kept off).

    Every program is kept, however small or quick to compile (JAX's defaults skip those compiled in
    under a second, which on a CPU are most of a small job's). The size cap is applied here, when the cache
    is turned on: entries are removed, least recently used first, until the directory holds at most
    ``max_size_bytes``. (JAX's own cap checks at every write by reading every entry's record: with
    thousands of entries, as a test suite makes, each write took a large fraction of a second.)

    Pitfalls: call it before the computations whose programs you want kept (programs compiled earlier in
    the process are not written); entries are per device kind and jax version, so a GPU run and a CPU
    run do not share them; Colab's disk is wiped with each session, so there the cache helps reruns
    within a session (or point it at a mounted Drive folder).

    Args:
      directory: where the programs are kept; default ``default_cache_directory()``. The environment
        variable ``NNJAX_COMPILATION_CACHE`` overrides it; set to ``0`` it keeps the cache off.
      max_size_bytes: the cache's size cap in bytes (a positive int; -1 for no cap).

    Returns:
      The absolute directory in use, or None when ``NNJAX_COMPILATION_CACHE=0``.

    Raises:
      ValueError: ``max_size_bytes`` is not a positive int or -1.
      OSError: the directory cannot be created.

    Example:
      >>> import os, tempfile
      >>> directory = nnjax.config.compilation_cache(tempfile.mkdtemp())  # doctest: +SKIP
      >>> os.environ["NNJAX_COMPILATION_CACHE"] = "0"
      >>> nnjax.config.compilation_cache() is None                      # kept off by the environment
      True
      >>> del os.environ["NNJAX_COMPILATION_CACHE"]
    """
    if isinstance(max_size_bytes, bool) or not isinstance(max_size_bytes, int) or not (
        max_size_bytes > 0 or max_size_bytes == -1
    ):
        raise ValueError(
            f"compilation_cache: argument `max_size_bytes` expected a positive int or -1, given {max_size_bytes!r}."
        )
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE, "")
    if from_environment == "0":
        return None
    path = from_environment or (default_cache_directory() if directory is None else os.fspath(directory))
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor, no override of it
    jax.config.update("jax_compilation_cache_max_size", -1)  # no per-write eviction: trim_cache, once
    if max_size_bytes != -1:
        trim_cache(path, max_size_bytes)
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    jax_cache.reset_cache()  # JAX decides once whether to use a cache: let it decide again, with this one
    return path


def trim_cache(directory: str, max_size_bytes: int) -> int:
    """Removes the least recently used files of ``directory`` (by access time, else modification time)
    until the rest hold at most ``max_size_bytes``; returns how many were removed."""
    entries = []
    with os.scandir(directory) as scan:
        for entry in scan:
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                entries.append((max(stat.st_atime, stat.st_mtime), stat.st_size, entry.path))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in sorted(entries):
        if total <= max_size_bytes:
            break
        try:
            os.remove(path)
        except FileNotFoundError:  # another process trimmed it first
            pass
        total -= size
        removed += 1
    return removed
