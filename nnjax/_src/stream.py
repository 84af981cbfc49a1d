"""Training on data that streams from the host: device prefetching and ``fit_stream``.

When the data does not fit on the device (or comes from files, a generator, a data loader), ``fit``'s
fused epochs cannot run. ``fit_stream`` keeps the Python loop of jitted steps and overlaps the
host-to-device copy of the next batches with the current step (``prefetch_to_device``), so the
accelerator does not wait for ``device_put``.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nnjax._src.arguments import check_choice, check_int, check_training_arguments
from nnjax._src.checkpoint import abstract_train_state
from nnjax._src.core import Layer
from nnjax._src.engine import Plan, Progress, Recorder, checkpoints_for, owned, resume_from, train
from nnjax._src.fit import Callback, FitResult
from nnjax._src.inference import make_evaluate_fn
from nnjax._src.objective import Loss, Metric, Objective, as_objective
from nnjax._src.step_stats import StepStats, as_step_stats
from nnjax._src.train import NONFINITE_MODES, Batch, TrainState, build_train_step, seeded_train_state
from nnjax._src.training_data import check_validation_data


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
    progress_every: int | None = None,
    nonfinite: str | None = None,
    step_stats: bool | StepStats | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    keep: int | None = 3,
    checkpoint_every: int = 1,
) -> FitResult:
    """Trains on batches streamed from the host: ``batches(epoch)`` returns that epoch's ``(x, y)`` batches.

    Args:
      model: the network (a ``Layer``).
      loss: ``loss(predictions, y)``, or a general ``nnjax.objective`` given each batch as it comes.
      optimizer: any ``optax.GradientTransformation``.
      batches: ``epoch -> iterable of (x, y)`` host batches (NumPy arrays; any pytree for an objective), e.g.
        ``lambda e: nnjax.data.batches(x, y, 128, seed=e)`` or a reader over files. Give every batch one
        shape (drop or pad the last) so the step compiles once. Called once per epoch; also once more for
        epoch 0 to peek at the first batch when ``input_shape`` is not given and it is needed (no
        ``train_state``, or ``validation_data`` to check, or ``resume``).
      epochs: run epochs ``initial_epoch .. epochs - 1``.
      initial_epoch: the first epoch's number (set it when continuing from a ``train_state``; the stream's
        epoch count is not recorded in it, but it is in checkpoints: ``resume`` restores it).
      input_shape: what ``model.init`` is given; default: one example's shape in the first batch (its
        first element when it is a tuple).
      seed: seeds initialization and dropout (the data order is the stream's own); unused with ``train_state``.
      metrics: name -> ``fn(predictions, y)`` (loss form only), averaged over each epoch's batches.
      validation_data: ``(x_val, y_val)`` arrays in memory (``x_val`` alone for an objective that takes the
        inputs alone), checked as ``fit`` checks it (lengths, NaN/Inf, labels in range) before training, and
        evaluated after each epoch with ``train=False`` as ``val_loss``, ``val_<metric>``.
      train_state: continue from this state instead of initializing (copied, never donated).
      callbacks: ``(epoch, train_state, logs) -> stop?`` after each epoch, as ``fit`` (every callback runs).
      prefetch: batches copied to the device ahead of the step (``prefetch_to_device``).
      sharding: where to put each batch (data parallel: shard along the batch axis).
      progress: show a tqdm bar (it counts steps; a stream's length is unknown) and one line per epoch.
      progress_every: steps between progress updates (default 32).
      nonfinite: ``None``, ``"skip"`` or ``"halt"``, as ``fit`` (a halt raises ``NonFiniteError`` naming the step,
        the epoch, the batch's place in it and the first non-finite leaf).
      step_stats: per-step series in the history, as ``fit``.
      checkpoint_dir: save a checkpoint there every ``checkpoint_every`` epochs and after the last (or an early
        stop), with the epochs done; ``keep`` as ``fit``.
      resume: continue from the newest intact checkpoint in ``checkpoint_dir`` (its train state and epoch count).
      keep: how many of the newest checkpoints to keep (``None``: all).
      checkpoint_every: save every this many epochs.

    Returns:
      ``FitResult(train_state, history)``, per-epoch means of ``loss`` and ``metrics`` (each batch weighted
      equally) and ``val_*``.

    Raises:
      ValueError: ``epochs`` is not a non-negative int, ``batches(epoch)`` yields no batch, ``prefetch`` is
        not a positive int, ``metrics`` are given with a general objective, bad ``validation_data``, a bad
        ``nonfinite``, ``checkpoint_every`` or ``keep``, or ``resume`` without ``checkpoint_dir``.
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``, or ``batches`` is not callable.
      NonFiniteError: ``nonfinite="halt"`` met NaN/Inf, or a non-finite state was to be checkpointed.
      CheckpointError: ``checkpoint_dir`` cannot be written, or (``resume``) its newest checkpoint does not fit.

    Example:
      >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
      >>> stream = lambda epoch: nnjax.data.batches(x, 2 * x, 8, seed=epoch, drop_last=True)
      >>> result = nnjax.fit_stream(nnjax.Dense(1), nnjax.losses.mse, optax.sgd(0.5), stream, epochs=3, progress=False)
      >>> len(result.history["loss"]), result.history["loss"][-1] < 0.01, int(result.train_state.step)
      (3, True, 12)
    """
    check_training_arguments("fit_stream", model, optimizer, callbacks, train_state)
    check_int("fit_stream", "epochs", epochs)
    check_int("fit_stream", "initial_epoch", initial_epoch)
    check_int("fit_stream", "prefetch", prefetch, minimum=1)
    check_choice("fit_stream", "nonfinite", nonfinite, NONFINITE_MODES)
    if not callable(batches):
        raise TypeError(
            f"fit_stream: argument `batches` expected a function epoch -> iterable of batches, given "
            f"{type(batches).__name__}. Hint: wrap a generator as `lambda epoch: make_batches(epoch)`."
        )
    objective_fn = as_objective("fit_stream", model, loss, metrics)
    checkpoints = checkpoints_for("fit_stream", checkpoint_dir, resume=resume, every=checkpoint_every, keep=keep)
    if input_shape is None and (train_state is None or validation_data is not None or resume):
        first = next(iter(batches(0)))
        input_shape = tuple(jnp.shape(first[0] if isinstance(first, (tuple, list)) else first)[1:])
    input_shape = tuple(input_shape) if isinstance(input_shape, list) else input_shape
    general = isinstance(loss, Objective)
    val = check_validation_data(
        "fit_stream", model, validation_data, inputs_alone=general and not isinstance(validation_data, (tuple, list)),
        output_shape=None if general or validation_data is None else model.output_shape(input_shape),
    )
    restored = None
    if resume:
        like = abstract_train_state(model, optimizer, input_shape) if train_state is None else train_state
        restored = resume_from("fit_stream", checkpoints, like, None)
    if restored is not None:
        train_state, initial_epoch = restored
    elif train_state is None:
        train_state = seeded_train_state(model, optimizer, seed, input_shape)
    else:
        train_state = owned(train_state)
    evaluate_fn = make_evaluate_fn(model, loss, metrics)
    plan = Plan(
        build_train_step(
            objective_fn, optimizer, nonfinite=nonfinite, step_stats=as_step_stats("fit_stream", step_stats)
        ),
        halt=nonfinite == "halt",
        validate=None if val is None else evaluate_fn,
        validation=() if val is None else val,
    )
    recorder = Recorder("fit_stream", epochs=epochs, many=False, callbacks=callbacks, checkpoints=checkpoints,
                        progress=Progress(progress and initial_epoch < epochs, None),
                        objective=objective_fn, progress_every=progress_every, nonfinite=nonfinite)
    train_state = train(plan, train_state, initial_epoch, epochs, mode=False, recorder=recorder,
                        batches=lambda epoch: prefetch_to_device(batches(epoch), prefetch, sharding))
    return FitResult(train_state, recorder.history)
