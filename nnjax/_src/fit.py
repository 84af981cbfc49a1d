"""``fit``, ``evaluate`` and ``predict``: training and inference loops over in-memory arrays.

Each epoch visits the examples in an order drawn from the run's key and the epoch number, in
mini-batches of ``batch_size`` (``batch_size = len(x)`` is batch gradient descent, ``1`` stochastic
gradient descent). The last ``len(x) % batch_size`` examples of each shuffled epoch are left out so
every batch has the same shape (one compilation). By default a whole epoch runs as ONE compiled
program (``jax.lax.scan`` over the steps, data on the device); ``fused=False`` runs a Python loop
with one jitted step per batch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.core import Layer
from nnjax._src.errors import check_integer_labels, check_same_leading
from nnjax._src.train import (
    DATA_STREAM,
    Loss,
    Metric,
    TrainState,
    init_train_state,
    make_train_step,
    stream_key,
)
from nnjax._src.types import Array

History = dict[str, list[float]]


class FitResult(NamedTuple):
    """What ``fit`` returns: the final train state and the per-epoch history (``history["loss"][e]``)."""

    train_state: TrainState
    history: History


def check_dataset(where: str, model: Layer, x: Any, y: Any, output_shape: tuple | None = None) -> None:
    """Validates a data set where it enters: same length, not empty, finite inputs, labels in range.

    Raises:
      ValueError: lengths differ, the set is empty, inputs hold NaN/Inf, or labels are out of range.
      TypeError: integer inputs to a network expecting floats (hint: scale them).
    """
    check_same_leading(where, x=x, y=y)
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
    if output_shape is not None and np.issubdtype(np.asarray(y[:1]).dtype, np.integer):
        per_example = np.shape(y)[1:]
        if len(output_shape) == len(per_example) + 1:
            check_integer_labels(where, np.asarray(y), output_shape[-1])


def _mean_metrics(metrics: list[dict[str, Array]]) -> dict[str, Array]:
    return jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)), *metrics)


def predict(model: Layer, train_state: TrainState, x: Any, *, batch_size: int = 1024) -> Array:
    """The model's outputs for ``x`` in inference mode, computed in batches of ``batch_size``.

    Shapes: ``x: (n, *input_shape) -> (n, *output_shape)``. The last batch is padded, so one compiled
    program serves every batch.
    """
    apply = jax.jit(model.apply, static_argnames="train")
    n = np.shape(x)[0]
    if n <= batch_size:
        return apply(train_state.params, train_state.state, jnp.asarray(x))[0]
    outputs = []
    for start in range(0, n, batch_size):
        batch = np.asarray(x[start : start + batch_size])
        size = batch.shape[0]
        if size < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - size, axis=0)])
        outputs.append(apply(train_state.params, train_state.state, jnp.asarray(batch))[0][:size])
    return jnp.concatenate(outputs)


def evaluate(
    model: Layer,
    train_state: TrainState,
    x: Any,
    y: Any,
    *,
    loss: Loss,
    metrics: Mapping[str, Metric] | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Loss and metrics over a whole data set, in inference mode; returns Python floats."""
    predictions = predict(model, train_state, x, batch_size=batch_size)
    y = jnp.asarray(y)
    values = {"loss": loss(predictions, y), **{name: fn(predictions, y) for name, fn in (metrics or {}).items()}}
    return {name: float(value) for name, value in values.items()}


def fit(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    x: Any,
    y: Any,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    metrics: Mapping[str, Metric] | None = None,
    validation_data: tuple[Any, Any] | None = None,
    train_state: TrainState | None = None,
    fused: bool = True,
    verbose: bool = True,
) -> FitResult:
    """Trains ``model`` on ``(x, y)`` with mini-batch gradient descent and returns the state and history.

    Args:
      model: the network; ``loss``: ``loss(predictions, y) -> scalar``; ``optimizer``: any Optax optimizer.
      x, y: inputs ``(n, *input_shape)`` and targets ``(n, ...)``, NumPy or JAX arrays.
      epochs: passes over the data. batch_size: examples per update (clipped to ``n``).
      seed: seeds initialization, dropout and data order (ignored for init when ``train_state`` is given).
      metrics: name -> ``fn(predictions, y)``, averaged over each epoch's batches.
      validation_data: ``(x_val, y_val)``, evaluated after each epoch as ``val_loss``, ``val_<metric>``.
      train_state: continue from this state instead of initializing.
      fused: run each epoch as one compiled ``lax.scan`` (default) or as a Python loop of jitted steps.
      verbose: print one line per epoch.

    Returns:
      ``FitResult(train_state, history)``; ``history`` maps ``loss``, each metric, and ``val_*`` to
      per-epoch floats.

    Raises:
      ValueError / TypeError: bad data (see ``check_dataset``) or arguments.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: argument `epochs` expected a non-negative int, given {epochs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: argument `batch_size` expected a positive int, given {batch_size!r}.")
    input_shape = tuple(np.shape(x)[1:])
    check_dataset("fit", model, x, y, model.output_shape(input_shape))
    if validation_data is not None:
        check_dataset("fit(validation_data)", model, *validation_data, model.output_shape(input_shape))
    if train_state is None:
        train_state = init_train_state(model, optimizer, jax.random.key(seed), input_shape)

    n = np.shape(x)[0]
    batch_size = min(batch_size, n)
    steps = n // batch_size
    x, y = jnp.asarray(x), jnp.asarray(y)
    step = make_train_step(model, loss, optimizer, metrics=metrics, jit=not fused)

    def epoch_order(key, epoch):
        order = jax.random.permutation(stream_key(key, DATA_STREAM, epoch), n)
        return order[: steps * batch_size].reshape(steps, batch_size)

    def fused_epoch(train_state, x, y, epoch):
        def body(ts, idx):
            return step(ts, (x[idx], y[idx]))

        train_state, per_step = jax.lax.scan(body, train_state, epoch_order(train_state.key, epoch))
        return train_state, jax.tree.map(jnp.mean, per_step)

    fused_epoch = jax.jit(fused_epoch, donate_argnums=0)
    order_fn = jax.jit(epoch_order)
    history: History = {}
    first_epoch = int(train_state.step) // steps
    for epoch in range(first_epoch, first_epoch + epochs):
        start = time.perf_counter()
        if fused:
            train_state, epoch_metrics = fused_epoch(train_state, x, y, epoch)
        else:
            per_step = []
            for idx in order_fn(train_state.key, epoch):
                train_state, m = step(train_state, (x[idx], y[idx]))
                per_step.append(m)
            epoch_metrics = _mean_metrics(per_step)
        values = {name: float(v) for name, v in epoch_metrics.items()}
        if validation_data is not None:
            val = evaluate(model, train_state, *validation_data, loss=loss, metrics=metrics)
            values.update({f"val_{name}": v for name, v in val.items()})
        for name, value in values.items():
            history.setdefault(name, []).append(value)
        if verbose:
            shown = "  ".join(f"{name} {value:.4f}" for name, value in values.items())
            print(f"epoch {epoch + 1}/{first_epoch + epochs}  {shown}  ({time.perf_counter() - start:.2f}s)", flush=True)
    return FitResult(train_state, history)
