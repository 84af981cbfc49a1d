"""Training on data that streams from the host: device prefetching and ``fit_stream``.

When the data does not fit on the device (or comes from files, a generator, a data loader), ``fit``'s
fused epochs cannot run. ``fit_stream`` keeps the Python loop of jitted steps and overlaps the
host-to-device copy of the next batches with the current step (``prefetch_to_device``), so the
accelerator does not wait for ``device_put``.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nnjax._src.compile import jit as compile_jit
from nnjax._src.core import Layer
from nnjax._src.fit import Callback, FitResult, History, _ordered, _Progress, make_evaluate_fn
from nnjax._src.objective import Loss, Metric, Objective
from nnjax._src.train import Batch, TrainState, init_train_state, make_train_step


def prefetch_to_device(batches: Iterable[Any], size: int = 2, sharding: Any = None) -> Iterator[Any]:
    """Yields the batches of ``batches`` already on the device, ``size`` of them in flight ahead.

    ``jax.device_put`` is asynchronous: putting the next ``size`` batches while the current step runs
    overlaps the copy with compute. ``sharding`` (e.g. ``NamedSharding(mesh, P("data"))``) places each
    batch across devices for data-parallel training; ``None`` puts it on the default device.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"prefetch_to_device: argument `size` expected a positive int, given {size!r}.")
    queue: collections.deque = collections.deque()
    iterator = iter(batches)
    for batch in itertools.islice(iterator, size):
        queue.append(jax.device_put(batch, sharding))
    while queue:
        current = queue.popleft()
        for batch in itertools.islice(iterator, 1):
            queue.append(jax.device_put(batch, sharding))
        yield current


def fit_stream(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation,
    batches: Callable[[int], Iterable[Batch]],
    *,
    epochs: int = 10,
    initial_epoch: int = 0,
    input_shape: tuple | None = None,
    seed: int = 0,
    metrics: Mapping[str, Metric] | None = None,
    validation_data: tuple[Any, Any] | None = None,
    train_state: TrainState | None = None,
    callbacks: Sequence[Callback] = (),
    prefetch: int = 2,
    sharding: Any = None,
    progress: bool = True,
    progress_every: int = 10,
) -> FitResult:
    """Trains on batches streamed from the host: ``batches(epoch)`` returns that epoch's ``(x, y)`` batches.

    Args:
      loss: ``loss(predictions, y)``, or a general ``nnjax.objective`` given each batch as it comes.
      batches: ``epoch -> iterable of (x, y)`` host batches (NumPy arrays; any pytree for an objective), e.g.
        ``lambda e: nnjax.data.batches(x, y, 128, seed=e)`` or a reader over files. Give every batch one
        shape (drop or pad the last) so the step compiles once.
      epochs, initial_epoch: run epochs ``initial_epoch .. epochs - 1`` (set ``initial_epoch`` when
        continuing from a ``train_state``; the stream's epoch count is not recorded in it).
      input_shape: what ``model.init`` is given; default: one example's shape in the first batch (its
        first element when it is a tuple).
      prefetch: batches copied to the device ahead of the step (``prefetch_to_device``).
      sharding: where to put each batch (data parallel: shard along the batch axis).
      Others: as in ``fit``. Progress counts steps within each epoch.

    Returns:
      ``FitResult(train_state, history)``, per-epoch means of ``loss`` and ``metrics`` and ``val_*``.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit_stream: argument `epochs` expected a non-negative int, given {epochs!r}.")
    if train_state is None:
        if input_shape is None:
            first = next(iter(batches(0)))
            first_x = first[0] if isinstance(first, (tuple, list)) else first
            input_shape = tuple(jnp.shape(first_x)[1:])
        input_shape = tuple(input_shape) if isinstance(input_shape, list) else input_shape
        train_state = init_train_state(model, optimizer, jax.random.key(seed), input_shape)
    step = make_train_step(model, loss, optimizer, metrics=metrics)
    if validation_data is not None and isinstance(loss, Objective) and not isinstance(validation_data, (tuple, list)):
        validation_data = (validation_data, None)  # the inputs alone
    evaluate_fn = compile_jit(make_evaluate_fn(model, loss, metrics))
    val = None if validation_data is None else tuple(None if a is None else jnp.asarray(a) for a in validation_data)
    history: History = {}
    for epoch in range(initial_epoch, epochs):
        start = time.perf_counter()
        bar = _Progress(progress, None, int(train_state.step), progress_every)
        sums, count = None, 0
        for batch in prefetch_to_device(batches(epoch), prefetch, sharding):
            train_state, step_metrics = step(train_state, batch)
            sums = step_metrics if sums is None else jax.tree.map(jnp.add, sums, step_metrics)
            count += 1
            if bar.bar is not None and count % bar.every == 0:
                bar.report(train_state.step, step_metrics["loss"])
        if count == 0:
            raise ValueError(f"fit_stream: `batches({epoch})` yielded no batch.")
        logs = jax.tree.map(lambda total, n=count: total / n, sums)
        if val is not None:
            logs.update({f"val_{k}": v for k, v in evaluate_fn(train_state, *val).items()})
        logs = _ordered(logs)
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
        bar.epoch_end(epoch, epochs, int(train_state.step), logs, time.perf_counter() - start)
        bar.close()
        if any([bool(cb(epoch, train_state, logs)) for cb in callbacks]):
            break
    return FitResult(train_state, history)
