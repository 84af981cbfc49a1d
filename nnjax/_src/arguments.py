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


def check_model(where: str, model: Any) -> None:
    """Raises TypeError unless ``model`` is a ``Layer`` (a list of layers or an uncalled constructor is not)."""
    from nnjax._src.core import Layer

    if isinstance(model, Layer):
        return
    if isinstance(model, (list, tuple)):
        hint = "compose layers into one model with `nnjax.serial(*layers)`"
    elif callable(model):
        hint = f"call the constructor, e.g. `{getattr(model, '__name__', 'Dense')}(...)`, to build a layer"
    else:
        hint = "build it from nnjax layers, e.g. `nnjax.serial(nnjax.Dense(64), nnjax.Relu(), nnjax.Dense(10))`"
    raise TypeError(f"{where}: argument `model` expected a Layer, given {type(model).__name__}. Hint: {hint}.")


def is_optimizer(optimizer: Any) -> bool:
    """True for an Optax ``GradientTransformation`` (anything with callable ``init`` and ``update``)."""
    return callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))


def check_optimizer(where: str, optimizer: Any, *, factory_allowed: bool = False) -> None:
    """Raises TypeError unless ``optimizer`` is an Optax ``GradientTransformation`` (or, where
    ``factory_allowed``, a function of hyperparameters returning one)."""
    if is_optimizer(optimizer) or (factory_allowed and callable(optimizer)):
        return
    if isinstance(optimizer, str):
        hint = f"Keras names optimizers by string; nnjax takes Optax's, e.g. `optax.{optimizer.lower()}(1e-3)`"
    elif callable(optimizer):
        hint = f"call the factory with its learning rate, e.g. `{getattr(optimizer, '__name__', 'adam')}(1e-3)`"
    else:
        hint = "e.g. `optax.adam(1e-3)`"
    raise TypeError(
        f"{where}: argument `optimizer` expected an optax.GradientTransformation, given "
        f"{type(optimizer).__name__} {optimizer!r}. Hint: {hint}."
    )


def check_callbacks(where: str, callbacks: Any) -> None:
    """Raises TypeError unless ``callbacks`` is a list or tuple of functions ``(epoch, train_state, logs)``."""
    if isinstance(callbacks, (list, tuple)) and all(callable(c) for c in callbacks):
        return
    if callable(callbacks):
        hint = "put a single callback in a list, `callbacks=[callback]`"
    else:
        hint = "`callbacks=[fn]` with `fn(epoch, train_state, logs) -> stop?`"
    bad = callbacks if not isinstance(callbacks, (list, tuple)) else next(c for c in callbacks if not callable(c))
    raise TypeError(
        f"{where}: argument `callbacks` expected a list of functions (epoch, train_state, logs) -> stop?, given "
        f"{type(bad).__name__} {bad!r}. Hint: {hint}."
    )


def check_train_state(where: str, train_state: Any, *, required: bool = False) -> None:
    """Raises TypeError unless ``train_state`` is a ``TrainState`` (or None, when not ``required``)."""
    from nnjax._src.train import TrainState

    if isinstance(train_state, TrainState) or (train_state is None and not required):
        return
    hint = (
        ("to start from given weights pass them as `params=` (a fresh optimizer state is made)" if not required
         else "pass the TrainState that fit or init_train_state returned (`result.train_state`), not its params")
        if isinstance(train_state, dict)
        else "build one with `nnjax.init_train_state(model, optimizer, jax.random.key(0), input_shape)`"
    )
    raise TypeError(
        f"{where}: argument `train_state` expected an nnjax.TrainState, given {type(train_state).__name__}. "
        f"Hint: {hint}."
    )


def check_training_arguments(
    where: str, model: Any, optimizer: Any, callbacks: Any, train_state: Any = None, *, factory_allowed: bool = False
) -> None:
    """The checks every driver makes of what it trains, how, and what it calls back (see the checks above)."""
    check_model(where, model)
    check_optimizer(where, optimizer, factory_allowed=factory_allowed)
    check_callbacks(where, callbacks)
    check_train_state(where, train_state)
