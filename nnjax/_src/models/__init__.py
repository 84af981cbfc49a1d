"""The model zoo's shared helpers; the models live in ``resnet``, ``vit``, ``gpt`` and ``mlp``."""

from __future__ import annotations

from typing import Any

from nnjax._src.core import LOCATED_ERRORS, Layer
from nnjax._src.errors import check_number, with_location
from nnjax._src.types import Params, State


def renamed(layer: Layer, name: str) -> Layer:
    """``layer`` under a new readable name; its functions, its type and attributes (a ``Stacked``'s ``block`` and
    ``n``), and so ``summary``'s view of it, are unchanged."""
    new = type(layer)(layer.init, layer.apply, name, layer.input_dtype, layer.input_range)
    if hasattr(layer, "__dict__"):
        new.__dict__.update(layer.__dict__)
    return new


def positive_int(model: str, argument: str, value: Any) -> None:
    """Raises TypeError/ValueError naming ``model`` and ``argument`` unless ``value`` is a positive int."""
    check_number(model, argument, value, low=1, integer=True, what="a positive int")


def drop_rate(model: str, value: Any) -> None:
    """Raises TypeError/ValueError unless ``value`` is a drop probability in [0, 1)."""
    check_number(
        model, "dropout_rate", value, low=0.0, high=1.0, high_inclusive=False, what="a drop probability in [0, 1)"
    )


def run(where: str, part: str, layer: Layer, params: Params, state: State, x: Any, **kwargs: Any) -> tuple[Any, State]:
    """``layer.apply`` with errors located as ``where[part] > ...``."""
    try:
        return layer.apply(params, state, x, **kwargs)
    except LOCATED_ERRORS as error:
        raise with_location(error, f"{where}[{part}]") from None


def init(where: str, part: str, layer: Layer, key: Any, input_shape: Any, dtype: Any) -> tuple[Params, State]:
    """``layer.init`` with errors located as ``where[part] > ...``."""
    try:
        return layer.init(key, input_shape, dtype)
    except LOCATED_ERRORS as error:
        raise with_location(error, f"{where}[{part}]") from None
