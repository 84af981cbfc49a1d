"""The checked mode: the value checks that the host cannot make under ``jit``, through ``jax.experimental.checkify``.

    nnjax.config.checks(True)                 # from here on (or: with nnjax.config.checks(True): ...)
    NNJAX_CHECKS=1 python train.py            # the same for a whole process

Off by default. When on, every program nnjax compiles (the train and eval steps, the fused epochs and runs,
``predict`` and ``evaluate``) is functionalized by ``checkify`` and its error raised on the host after the
call, as ``CheckError``; a layer's ``apply`` called outside ``jit`` checks as it runs. What is checked:
class labels in range (the losses), token ids inside the vocabulary (``Embedding``), and each layer's input
and output free of NaN and Inf (the error names the first layer whose output is not finite).

Your own ``jax.jit`` of nnjax code does not see the checks unless functionalized: wrap it,
``nnjax.config.checked(jax.jit(fn))``. Checks run inside the compiled program: they cost a reduction per
layer output (measured in ``benchmarks/checked_mode.py``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

_local = threading.local()  # functionalizing: inside checkify (checks are staged); suspended: inside eval_shape


class CheckError(ValueError):
    """A check of the checked mode failed inside a computation (``nnjax.config.checks(True)``). The message names
    the layer or the argument, as the eager checks do."""


def enabled_by_environment(environ: Any = os.environ) -> bool:
    """The checked mode's starting value: ``NNJAX_CHECKS`` set to anything but ``""``, ``0`` or ``false``."""
    return environ.get("NNJAX_CHECKS", "0").strip().lower() not in ("", "0", "false")


try:  # a JAX configuration state: part of every jit cache key
    from jax._src import config as _jax_config

    _ENABLED = _jax_config.bool_state(
        "nnjax_checks",
        enabled_by_environment(),
        "nnjax's checked mode: value checks inside compiled programs through checkify.",
        include_in_jit_key=True,
        include_in_trace_context=True,
    )

    def checks_enabled() -> bool:
        """True when the checked mode is on.

        Returns:
          Whether ``nnjax.config.checks`` (or ``NNJAX_CHECKS``) turned it on.

        Example:
          >>> nnjax.config.checks_enabled()   # off unless NNJAX_CHECKS=1
          False
        """
        return bool(_ENABLED.value)

    def _set(enabled: bool) -> None:
        jax.config.update("nnjax_checks", enabled)

except (ImportError, AttributeError, TypeError):  # a JAX without them: a process-wide flag
    _fallback = {"on": enabled_by_environment()}

    def checks_enabled() -> bool:
        """True when the checked mode is on."""
        return _fallback["on"]

    def _set(enabled: bool) -> None:
        _fallback["on"] = enabled


class _Restore(contextlib.AbstractContextManager):
    def __init__(self, previous: bool):
        self.previous = previous

    def __exit__(self, *exc: Any) -> None:
        _set(self.previous)


def checks(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Turns the checked mode on (or off); used in a ``with`` statement, restores the previous mode on exit.

    Args:
      enabled: True to check, False to stop checking.

    Returns:
      A context manager that restores the previous mode (ignore it to keep the new mode).

    Raises:
      TypeError: ``enabled`` is not a bool.

    Example:
      >>> with nnjax.config.checks(True):
      ...     nnjax.config.checks_enabled()
      True
      >>> nnjax.config.checks_enabled()
      False
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"checks: argument `enabled` expected True or False, given {enabled!r}.")
    previous = checks_enabled()
    _set(enabled)
    return _Restore(previous)


@contextlib.contextmanager
def _flag(name: str) -> Iterator[None]:
    previous = getattr(_local, name, False)
    setattr(_local, name, True)
    try:
        yield
    finally:
        setattr(_local, name, previous)


def suspended() -> contextlib.AbstractContextManager:
    """No checks are staged inside (``jax.eval_shape`` cannot evaluate a check)."""
    return _flag("suspended")


def at_top_level() -> bool:
    """True when no JAX transformation is tracing (nothing to stage into; ``compiler_options`` apply)."""
    try:
        from jax._src.core import trace_state_clean  # JAX's own test of it; no public name yet
    except ImportError:  # an older or newer JAX: compile as part of whatever runs it
        return False
    return trace_state_clean()


def compiles_on_its_own() -> bool:
    """True when a ``jax.jit`` called here compiles as a program of its own, so its ``compiler_options``
    apply: at top level, or under eager ``jax.vmap`` only (a vmapped jit call is compiled, batched, by
    itself). False under any other transformation (``jax.jit``, ``eval_shape``, ``scan``, ``grad``...):
    there a nested jit is traced into the caller's program, and JAX refuses ``compiler_options`` on it."""
    try:  # JAX's trace stack; no public name yet
        from jax._src.core import EvalTrace, trace_ctx
        from jax._src.interpreters.batching import BatchTrace
    except ImportError:  # an older or newer JAX: compile as part of whatever runs it
        return False
    trace = trace_ctx.trace
    while isinstance(trace, BatchTrace):
        trace = trace.parent_trace
    return isinstance(trace, EvalTrace)


def staging() -> bool:
    """True where a check is staged: the mode is on, inside ``checkify``, and not suspended."""
    return checks_enabled() and getattr(_local, "functionalizing", False) and not getattr(_local, "suspended", False)


def check(predicate: Any, message: str, **values: Any) -> None:
    """A value check of the checked mode: fails when ``predicate`` is False (``{name}`` in ``message`` shows
    ``values[name]``). Does nothing when the mode is off or nothing is functionalized."""
    if staging():
        _checkify().check(predicate, message, **values)


def all_finite(tree: Any) -> Any:
    """True when every floating leaf of ``tree`` is free of NaN and Inf (a traced scalar)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def _checkify() -> Any:
    from jax.experimental import checkify  # imported when first used: not part of `import nnjax`

    return checkify


def _reporting(functional: Callable[..., Any]) -> Callable[..., Any]:
    """Calls a checkify-functionalized ``functional`` with checks staged, and raises ``CheckError`` for the
    error it returns (if any); returns its output."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with _flag("functionalizing"):
            error, out = functional(*args, **kwargs)
        message = error.get()
        if message is not None:
            raise CheckError(f"checked mode: {message}")
        return out

    return run


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` functionalized by ``checkify``: a failed check raises ``CheckError`` after the call.

    Use it around your own ``jax.jit`` of nnjax code in the checked mode: ``checked(jax.jit(fn))``.

    Args:
      fn: any function of arrays (jitted or not) whose computation holds nnjax's checks.

    Returns:
      A function with ``fn``'s signature and outputs.

    Raises:
      CheckError: (when called) a check failed; the message names the layer or the argument.

    Example:
      >>> layer = nnjax.Dense(2)
      >>> params, state = layer.init(jax.random.key(0), (3,))
      >>> with nnjax.config.checks(True):
      ...     nnjax.config.checked(jax.jit(layer.apply))(params, state, jnp.full((1, 3), jnp.nan))
      Traceback (most recent call last):
      ...
      nnjax._src.checks.CheckError: checked mode: Dense(2).apply: argument `x` holds NaN or Inf...
    """
    checkify = _checkify()
    return functools.wraps(fn)(_reporting(checkify.checkify(fn, errors=checkify.user_checks)))


def checked_jit(fn: Callable[..., Any], *, static_argnames: Any = (), **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit`` of ``fn`` functionalized by ``checkify`` (static arguments stay static); a failed check raises
    ``CheckError`` after the call."""
    static_names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)

    def functional(*args: Any, **kwargs: Any) -> Any:
        static = {name: kwargs.pop(name) for name in static_names if name in kwargs}
        body = functools.partial(fn, **static) if static else fn
        checkify = _checkify()
        return checkify.checkify(body, errors=checkify.user_checks)(*args, **kwargs)

    compiled = jax.jit(functional, static_argnames=static_names, **jit_kwargs)
    run = functools.wraps(fn)(_reporting(compiled))

    def lower(*args: Any, **kwargs: Any) -> Any:  # ahead-of-time lowering, as a jitted function has
        with _flag("functionalizing"):
            return compiled.lower(*args, **kwargs)

    run.lower = lower
    return run


__all__ = ["CheckError", "all_finite", "check", "checked", "checked_jit", "checks", "checks_enabled", "suspended"]
