"""The one switch that picks nnjax's formulations: ``nnjax.config.kernels``.

    with nnjax.config.kernels("generic"):       # the accelerator forms, on any backend
        ...
    NNJAX_KERNELS=generic python -m pytest     # the same for a whole process

``"auto"`` (the default) takes the CPU forms on the CPU backend and the generic forms elsewhere;
``"generic"`` and ``"cpu"`` force one set on any backend. ``generic=("conv",)`` forces single kernels to
their generic form within the CPU set (to find which form matters; the names are in ``nnjax.kernels``).

The choice is read when JAX traces a function. It is kept in JAX's own configuration (thread-local, and
part of every jit cache key), so a function jitted under one choice compiles again under another
instead of running the stale program.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence

import jax

MODES = ("auto", "generic", "cpu")
KERNEL_NAMES = ("conv", "max_pool", "rnn_input", "rnn_layout", "compiler_options")

try:  # JAX's configuration states: thread-local, read from the environment, and in the jit cache key
    from jax._src import config as _jax_config

    _IN_KEYS = {"include_in_jit_key": True, "include_in_trace_context": True}
    _MODE = _jax_config.enum_state(
        "nnjax_kernels", MODES, "auto", "nnjax's formulations: auto, generic or cpu.", **_IN_KEYS
    )
    _NAMES = sorted(KERNEL_NAMES)
    _SUBSETS = tuple(",".join(c) for r in range(len(_NAMES) + 1) for c in itertools.combinations(_NAMES, r))
    _FORCED = _jax_config.enum_state(  # an enum of every sorted subset: JAX's string states are not in the keys
        "nnjax_generic_kernels", _SUBSETS, "", "nnjax kernels forced to their generic form, sorted, comma-separated.",
        **_IN_KEYS,
    )

    def _current() -> tuple[str, str]:
        return _MODE.value, _FORCED.value

    @contextlib.contextmanager
    def _set(mode: str, forced: str) -> Iterator[None]:
        with _MODE(mode), _FORCED(forced):
            yield

except (ImportError, AttributeError, TypeError):  # a JAX without them: the switch works for new traces only
    _state = {"mode": os.environ.get("NNJAX_KERNELS", "auto"), "forced": os.environ.get("NNJAX_GENERIC_KERNELS", "")}

    def _current() -> tuple[str, str]:
        return _state["mode"], _state["forced"]

    @contextlib.contextmanager
    def _set(mode: str, forced: str) -> Iterator[None]:
        saved = dict(_state)
        _state.update(mode=mode, forced=forced)
        try:
            yield
        finally:
            _state.update(saved)


@contextlib.contextmanager
def kernels(mode: str, *, generic: Sequence[str] = ()) -> Iterator[None]:
    """Within the block, nnjax's layers take the formulations of ``mode``.

    A context manager. The choice applies to what JAX traces inside the block (it is part of the jit
    cache key, so a function jitted outside is traced again inside); the previous choice is restored on
    exit.

    Args:
      mode: ``"auto"`` (per backend), ``"generic"`` (the accelerator forms everywhere) or ``"cpu"``.
      generic: kernel names (``nnjax.config.KERNEL_NAMES``) forced to their generic form all the same.

    Yields:
      None.

    Raises:
      ValueError: an unknown mode or kernel name (also a single string for ``generic``).

    Example:
      >>> before = nnjax.config.active_kernels()
      >>> with nnjax.config.kernels("generic"):
      ...     print(nnjax.config.active_kernels())   # layers traced here take the generic forms
      generic
      >>> with nnjax.config.kernels("cpu", generic=("conv",)):   # the CPU set, but the generic conv
      ...     print(nnjax.config.active_kernels())
      cpu
      >>> nnjax.config.active_kernels() == before
      True
    """
    if mode not in MODES:
        raise ValueError(f"nnjax.config.kernels: argument `mode` expected one of {MODES}, given {mode!r}.")
    unknown = sorted(set(generic) - set(KERNEL_NAMES))
    if unknown or isinstance(generic, str):
        raise ValueError(
            f"nnjax.config.kernels: argument `generic` expected a sequence of names from {KERNEL_NAMES}, "
            f"given {generic!r}."
        )
    with _set(mode, ",".join(sorted(generic))):
        yield


def active_kernels() -> str:
    """The set in use now: ``"cpu"`` or ``"generic"`` (``"auto"`` resolved by JAX's default backend).

    Returns:
      ``"cpu"`` or ``"generic"``: the mode of the innermost ``nnjax.config.kernels`` block, else of
      ``$NNJAX_KERNELS`` (default ``"auto"``: ``"cpu"`` on the CPU backend, ``"generic"`` elsewhere).
      Kernels forced generic with ``kernels(..., generic=...)`` are not reflected here.

    Example:
      >>> nnjax.config.active_kernels() in ("cpu", "generic")
      True
      >>> with nnjax.config.kernels("generic"):
      ...     print(nnjax.config.active_kernels())
      generic
    """
    mode, _ = _current()
    if mode == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "generic"
    return mode


def use_cpu_form(name: str) -> bool:
    """True when kernel ``name`` takes its CPU form now: the CPU set is active and ``name`` is not forced generic."""
    return active_kernels() == "cpu" and name not in _current()[1].split(",")


__all__ = ["KERNEL_NAMES", "MODES", "active_kernels", "kernels", "use_cpu_form"]
