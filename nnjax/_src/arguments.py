"""Checks of the drivers' scalar arguments (epochs, batch sizes, modes), one place for all of them.

Each raises ``ValueError`` naming the function, the argument, what was expected and what was given.
A bool is never accepted as an int (``epochs=True`` is a mistake, not one epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_int(where: str, name: str, value: Any, *, minimum: int = 0, unit: str = "") -> int:
    """``value`` when it is an int (not a bool) ``>= minimum``; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{where}: argument `{name}` expected {kind}{unit}, given {value!r}.")
    return value


def check_choice(where: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` when it is one of ``choices`` (compared by identity for None and bools); else ValueError."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        expected = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        raise ValueError(f"{where}: argument `{name}` expected {expected}, given {value!r}.")
    return value


def check_fused(where: str, fused: Any) -> str | bool:
    """``fit``'s execution mode: ``"epoch"`` (also for True), ``"all"`` or False."""
    return "epoch" if fused is True else check_choice(where, "fused", fused, ("epoch", "all", False))
