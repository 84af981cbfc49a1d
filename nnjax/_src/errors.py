"""nnjax's own errors and the trace-time checks that raise them.

Every check here looks only at shapes and dtypes (static under ``jax.jit``), so it runs once
while tracing and costs nothing in the compiled program. Values are checked only where data
enters eagerly (``fit``, datasets, losses called outside ``jit``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class LayerError(ValueError):
    """A layer got input it cannot use. The message names the layer and its position."""


class LayerTypeError(TypeError):
    """A layer got input of the wrong dtype. The message names the layer and its position."""


def with_location(error: Exception, where: str) -> Exception:
    """Returns ``error`` with ``where`` (e.g. ``"serial[2] Dense(10)"``) prepended to its message."""
    return type(error)(f"{where} > {error}")


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values known now (not a tracer inside ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def check_float_input(layer: str, x: Any, argument: str = "x") -> None:
    """Raises LayerTypeError when ``x`` is not floating point (e.g. uint8 pixels)."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise LayerTypeError(
            f"{layer}: argument `{argument}` expected a floating-point array, given dtype {dtype} "
            f"with shape {tuple(jnp.shape(x))}. Hint: scale integer inputs first, e.g. "
            f"`x.astype(jnp.float32) / 255.0` for 8-bit pixels."
        )


def check_rank(layer: str, x: Any, min_rank: int, what: str, argument: str = "x") -> None:
    """Raises LayerError when ``x`` has fewer than ``min_rank`` dimensions."""
    if jnp.ndim(x) < min_rank:
        raise LayerError(
            f"{layer}: argument `{argument}` expected {what} (rank >= {min_rank}), "
            f"given shape {tuple(jnp.shape(x))}."
        )


def check_integer_labels(where: str, labels: Any, num_classes: int | None = None) -> None:
    """Checks integer class labels: dtype at trace time, value range when values are concrete.

    Raises:
      TypeError: labels are not integers (float or one-hot labels given to an integer-label loss).
      ValueError: a concrete label lies outside ``[0, num_classes)``.
    """
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"{where}: argument `labels` expected integer class indices, given dtype {dtype} with shape "
            f"{tuple(jnp.shape(labels))}. Hint: for one-hot or soft labels use "
            f"`softmax_cross_entropy_soft`; otherwise convert with `labels.astype(jnp.int32)`."
        )
    if num_classes is not None and is_concrete(labels) and np.size(labels) > 0:
        values = np.asarray(labels)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_classes:
            bad = values[(values < 0) | (values >= num_classes)]
            raise ValueError(
                f"{where}: argument `labels` expected values in [0, {num_classes}) for {num_classes} "
                f"classes, given values in [{low}, {high}] ({bad.size} out of range, e.g. {int(bad[0])})."
            )


def check_same_leading(where: str, **arrays: Any) -> None:
    """Raises ValueError when the arrays' leading (batch) dimensions differ."""
    sizes = {name: jnp.shape(a)[0] if jnp.ndim(a) else None for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        given = ", ".join(f"`{n}` {tuple(jnp.shape(a))}" for n, a in arrays.items())
        raise ValueError(f"{where}: expected the same number of examples in each argument, given {given}.")
