"""What training data goes through before a step sees it: the checks where it enters, and each epoch's order.

The checks (``check_dataset``, ``check_fit_data``) refuse bad data before anything compiles. The order
(``epoch_order``) is drawn from the run's root key and the epoch number alone, so any epoch of a run can
be replayed (resume, a halt's explanation) without the ones before it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src.core import Layer
from nnjax._src.errors import check_integer_labels, check_same_leading
from nnjax._src.objective import Objective
from nnjax._src.train import DATA_STREAM, stream_key
from nnjax._src.types import Array


def check_dataset(where: str, model: Layer, x: Any, y: Any, output_shape: tuple | None = None) -> None:
    """Validates a data set where it enters: same length, not empty, finite inputs, labels in range.
    ``y`` is None for the inputs alone (a general objective's data); ``output_shape`` None skips the labels.

    Raises:
      ValueError: lengths differ, the set is empty, inputs hold NaN/Inf, or labels are out of range.
      TypeError: integer inputs to a network expecting floats (hint: scale them).
    """
    check_same_leading(where, x=x, **({} if y is None else {"y": y}))
    if np.shape(x)[0] == 0:
        raise ValueError(f"{where}: expected at least one example, given an empty data set (x shape {np.shape(x)}).")
    x_dtype = np.asarray(x[:1]).dtype
    if model.input_dtype is None and not np.issubdtype(x_dtype, np.floating):
        raise TypeError(
            f"{where}: argument `x` expected floating-point inputs, given dtype {x_dtype}. "
            f"Hint: scale integer inputs first, e.g. `x.astype(np.float32) / 255.0` for 8-bit pixels."
        )
    if np.issubdtype(x_dtype, np.floating) and not np.isfinite(np.asarray(x)).all():
        raise ValueError(f"{where}: argument `x` holds {int((~np.isfinite(np.asarray(x))).sum())} NaN or Inf values.")
    if model.input_range is not None and np.issubdtype(x_dtype, np.integer):
        check_token_ids(where, model, np.asarray(x))
    if y is not None and np.issubdtype(np.asarray(y[:1]).dtype, np.inexact) and not np.isfinite(np.asarray(y)).all():
        raise ValueError(
            f"{where}: argument `y` holds {int((~np.isfinite(np.asarray(y))).sum())} NaN or Inf values. Hint: drop "
            f"or impute the examples with missing targets before training."
        )
    if y is not None and output_shape is not None and np.issubdtype(np.asarray(y[:1]).dtype, np.integer):
        if len(output_shape) == len(np.shape(y)[1:]) + 1:
            check_integer_labels(where, np.asarray(y), output_shape[-1])


def check_token_ids(where: str, model: Layer, x: np.ndarray) -> None:
    """Raises ValueError when integer inputs fall outside ``model.input_range`` (an Embedding's vocabulary)."""
    low, high = model.input_range
    if x.size and (x.min() < low or x.max() >= high):
        bad = x[(x < low) | (x >= high)]
        raise ValueError(
            f"{where}: argument `x` expected token ids in [{low}, {high}) (the vocabulary of the model's "
            f"embedding), given values in [{int(x.min())}, {int(x.max())}] ({bad.size} out of range, e.g. "
            f"{int(bad[0])}). Hint: build the model for the tokenizer's vocabulary size."
        )


def as_arrays(data: Any) -> Any:
    """``data`` with Python lists turned into NumPy arrays (``fit(model, loss, opt, [[0.1, 0.2]], [1])``)."""
    return np.asarray(data) if isinstance(data, list) else data


def check_fit_data(
    where: str, model: Layer, loss: Any, x: Any, y: Any, input_shape: Any, validation_data: Any
) -> tuple[Any, tuple[Array, Array | None] | None]:
    """Checks ``fit``'s (and ``fit_many``'s) data against the objective's form (a loss's labels against the
    model's output shape); returns the input shape for ``init`` and the validation set as
    ``(x_val, y_val or None)`` device arrays.

    Raises:
      ValueError: no ``y`` for a loss, or validation data that does not match the training data's form.
    """
    general = isinstance(loss, Objective)
    if y is None and not general:
        raise ValueError(
            f"{where}: argument `y` expected the targets of loss(predictions, targets), given None. Hint: an "
            f"objective that takes the inputs alone is written with @nnjax.objective."
        )
    input_shape = tuple(np.shape(x)[1:]) if input_shape is None else input_shape
    output_shape = None if general else model.output_shape(input_shape)
    check_dataset(where, model, x, y, output_shape)
    return input_shape, check_validation_data(where, model, validation_data, inputs_alone=y is None,
                                              output_shape=output_shape)


def check_validation_data(
    where: str, model: Layer, validation_data: Any, *, inputs_alone: bool, output_shape: tuple | None
) -> tuple[Array, Array | None] | None:
    """Checks ``validation_data`` as ``check_dataset`` checks training data; returns ``(x_val, y_val or None)``
    as device arrays (None for None). ``inputs_alone``: the objective takes inputs without targets.

    Raises:
      ValueError: a form that does not match the training data's (a pair where inputs alone are expected,
        or the reverse), or data that ``check_dataset`` refuses.
    """
    if validation_data is None:
        return None
    if inputs_alone:
        if isinstance(validation_data, (tuple, list)):
            raise ValueError(
                f"{where}: argument `validation_data` expected the inputs alone (as `x`, since `y` is None), "
                f"given a {type(validation_data).__name__} of {len(validation_data)}."
            )
        x_val, y_val = validation_data, None
    else:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            given = type(validation_data).__name__
            raise ValueError(f"{where}: argument `validation_data` expected (x_val, y_val), given {given}.")
        x_val, y_val = validation_data
    check_dataset(f"{where}(validation_data)", model, x_val, y_val, output_shape)
    return jnp.asarray(x_val), None if y_val is None else jnp.asarray(y_val)


def epoch_order(key: jax.Array, epoch: Array | int, n: int, batch_size: int) -> Array:
    """The example indices of one epoch, ``(n // batch_size, batch_size)``, drawn from ``key`` and ``epoch``.

    A shuffle by a stable ``argsort`` of ``n`` 32-bit random keys: ties (probability ~ n^2 / 2^33) keep
    index order.
    """
    steps = n // batch_size
    order = jnp.argsort(jax.random.bits(stream_key(key, DATA_STREAM, epoch), (n,), jnp.uint32)).astype(jnp.int32)
    return order[: steps * batch_size].reshape(steps, batch_size)


def as_data(x: Any, y: Any) -> Any:
    """The data a step's batches are taken from: ``(x, y)``, or ``x`` alone when ``y`` is None."""
    return x if y is None else (x, y)


def device_data(x: Any, y: Any) -> Any:
    """``as_data(x, y)`` on the device: device arrays kept, others (NumPy, array-likes) copied over by
    ``jax.device_put`` (``jnp.asarray`` would compile a program per shape to do it)."""
    return jax.tree.map(lambda a: a if isinstance(a, jax.Array) else jax.device_put(np.asarray(a)), as_data(x, y))


def take(data: Any, idx: Array) -> Any:
    """The batch ``data[idx]`` of every leaf: ``(x[idx], y[idx])`` for ``(x, y)``."""
    return jax.tree.map(lambda a: a[idx], data)


def gather_batches(data: Any, order: Array) -> list[Any]:
    """``[take(data, order[i]) for each row i]`` of ``order: (k, batch_size)``, as one program.

    ``fit(fused=False)`` gathers ``engine.LOOP_CHUNK`` batches per call instead of indexing three times per step:
    each indexing is a dispatch of its own, and they cost more than a small model's step.
    """
    return [take(data, idx) for idx in order]
