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

    Args:
      batches: any iterable of batches (pytrees of NumPy or JAX arrays, e.g. ``(x, y)`` tuples); it is
        consumed lazily, ``size`` batches ahead of the one yielded.
      size: how many batches are in flight on the device (a positive int); memory grows with it.
      sharding: a ``jax.sharding.Sharding`` (or a pytree of them matching a batch) for ``jax.device_put``;
        ``None``: the default device.

    Yields:
      The batches in order, each a pytree of ``jax.Array`` s of the same structure and shapes.

    Raises:
      ValueError: ``size`` is not a positive int. As this is a generator, the error comes when iteration
        starts (the first ``next``), not at the call.

    Example:
      >>> host = [(np.full((2, 3), i, np.float32), np.zeros(2, np.int32)) for i in range(3)]
      >>> on_device = list(nnjax.prefetch_to_device(host, size=2))
      >>> [(isinstance(x, jax.Array), x.shape, float(x[0, 0])) for x, y in on_device]
      [(True, (2, 3), 0.0), (True, (2, 3), 1.0), (True, (2, 3), 2.0)]
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
      model: the network (a ``Layer``).
      loss: ``loss(predictions, y)``, or a general ``nnjax.objective`` given each batch as it comes.
      optimizer: any ``optax.GradientTransformation``.
      batches: ``epoch -> iterable of (x, y)`` host batches (NumPy arrays; any pytree for an objective), e.g.
        ``lambda e: nnjax.data.batches(x, y, 128, seed=e)`` or a reader over files. Give every batch one
        shape (drop or pad the last) so the step compiles once. Called once per epoch; also once more for
        epoch 0 to peek at the first batch when neither ``input_shape`` nor ``train_state`` is given.
      epochs: run epochs ``initial_epoch .. epochs - 1``.
      initial_epoch: the first epoch's number (set it when continuing from a ``train_state``; the stream's
        epoch count is not recorded in it).
      input_shape: what ``model.init`` is given; default: one example's shape in the first batch (its
        first element when it is a tuple).
      seed: seeds initialization and dropout (the data order is the stream's own); unused with ``train_state``.
      metrics: name -> ``fn(predictions, y)`` (loss form only), averaged over each epoch's batches.
      validation_data: ``(x_val, y_val)`` arrays in memory (``x_val`` alone for an objective that takes the
        inputs alone), evaluated after each epoch with ``train=False`` as ``val_loss``, ``val_<metric>``.
      train_state: continue from this state instead of initializing.
      callbacks: ``(epoch, train_state, logs) -> stop?`` after each epoch, as ``fit``.
      prefetch: batches copied to the device ahead of the step (``prefetch_to_device``).
      sharding: where to put each batch (data parallel: shard along the batch axis).
      progress: show a tqdm bar per epoch (it counts steps within the epoch) and one line per epoch.
      progress_every: steps between progress updates.

    Returns:
      ``FitResult(train_state, history)``, per-epoch means of ``loss`` and ``metrics`` (each batch weighted
      equally) and ``val_*``.

    Raises:
      ValueError: ``epochs`` is not a non-negative int, ``batches(epoch)`` yields no batch, ``prefetch`` is
        not a positive int, or ``metrics`` are given with a general objective.
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``.

    Example:
      >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
      >>> stream = lambda epoch: nnjax.data.batches(x, 2 * x, 8, seed=epoch, drop_last=True)
      >>> result = nnjax.fit_stream(nnjax.Dense(1), nnjax.losses.mse, optax.sgd(0.5), stream, epochs=3, progress=False)
      >>> len(result.history["loss"]), result.history["loss"][-1] < 0.01, int(result.train_state.step)
      (3, True, 12)
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
