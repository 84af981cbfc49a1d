"""The epoch engine under ``fit``, ``fit_many`` and ``fit_stream``: one loop, three ways to run an epoch.

A driver describes its run as a ``Plan`` (the pure step, the data and each epoch's order, validation)
and a ``Recorder`` (history, progress, callbacks, checkpoints, what a halt means); ``train`` runs it:

- ``"epoch"``: each epoch is compiled ``lax.fori_loop`` over its steps, called in chunks of steps; the
  progress bar advances between chunks (``Chunks`` sizes them), so no compiled program holds a host
  callback and every program can be kept in JAX's persistent compilation cache.
- ``"all"``: the whole run, validation included, is one program (``lax.scan`` over epochs).
- ``False``: a Python loop of the jitted step over batches gathered on the device (``fit(fused=False)``)
  or streamed from the host (``fit_stream``).

All three give the same numbers: the same step, the same order, and the per-step metrics reduced to
epoch logs in one place (``epoch_logs``).
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.arguments import check_choice, check_int
from nnjax._src.checkpoint import check_writable, checkpoint_lock, latest_step, restore_checkpoint, save_checkpoint
from nnjax._src.checks import at_top_level, checks_enabled
from nnjax._src.compile import jit as compile_jit
from nnjax._src.compile import setup_jit
from nnjax._src.errors import NonFiniteError
from nnjax._src.kernels import jit_options
from nnjax._src.objective import Objective
from nnjax._src.step_stats import STEP_PREFIX
from nnjax._src.train import Batch, TrainState, jit_train_step, nonfinite_leaf
from nnjax._src.training_data import gather_batches, take
from nnjax._src.types import Array

APPLIED = "_applied"  # per-step flag under nonfinite="halt": the update was applied (not halted or rejected)
LOOP_CHUNK = 32  # batches gathered per dispatch by the loop over in-memory data
Logs = dict[str, Any]  # name -> float (one model) or (K,) array (fit_many)


class Plan(NamedTuple):
    """One run's training as the engine needs it from a driver.

    Attributes:
      step: the pure train step of ONE model ``(train_state, batch) -> (train_state, metrics)``.
      many: the train states are stacked on a leading model axis (``fit_many``): the step is vmapped and
        each model takes its own batch.
      halt: the step was built with ``nonfinite="halt"``: a model that meets NaN/Inf stays at its last
        finite state for the rest of the run.
      data: the device pytree batches are taken from (``take(data, order[i])``); None for a stream.
      order: traceable ``(train_state, epoch) -> (steps, [K,] batch)`` example indices; None for a stream.
      steps: steps per epoch; None for a stream.
      validate: traceable ``(train_state, *validation) -> {name: value}`` (the names without ``val_``), or None.
      validation: the device arrays ``validate`` takes after the train state: ``(x_val, y_val)``.

    The compiled programs take ``data`` and ``validation`` as arguments, never as constants: a program
    compiled for one data set serves another of the same shapes, and no data set is baked into an
    executable (or into the persistent cache, whose key hashes the program).
    """

    step: Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]
    many: bool = False
    halt: bool = False
    data: Any = None
    order: Callable[[TrainState, Array], Array] | None = None
    steps: int | None = None
    validate: Callable[..., dict[str, Array]] | None = None
    validation: tuple[Any, ...] = ()


def carried_step(plan: Plan) -> Callable[..., tuple[TrainState, Array, dict[str, Array]]]:
    """The step the engine runs: ``(train_state, halted, batch) -> (train_state, halted, metrics)``.

    Under ``halt``, a model stays where it halted: later updates are no-ops, their ``"nonfinite"`` 0 and
    their ``APPLIED`` flag False. Vmapped over the model axis for ``fit_many``.
    """

    def one(train_state, halted, batch):
        new, metrics = plan.step(train_state, batch)
        if not plan.halt:
            return new, halted, metrics
        rejected = metrics["nonfinite"] > 0
        metrics = {**metrics, "nonfinite": jnp.where(halted, 0, metrics["nonfinite"])}
        metrics[APPLIED] = jnp.logical_not(halted | rejected)
        return optax.tree.where(halted, train_state, new), halted | rejected, metrics

    return jax.vmap(one) if plan.many else one


def owned(train_state: TrainState) -> TrainState:
    """A copy of a caller's train state for the engine to donate: the caller's arrays are never deleted."""
    return jax.tree.map(jnp.copy, train_state)


def zeros(shape: tuple[int, ...], dtype: Any) -> Array:
    """Zeros: copied to the device at top level (``jnp.zeros`` there compiles a program per shape),
    staged with ``jnp.zeros`` under a trace (not baked into the program as a constant)."""
    return jax.device_put(np.zeros(shape, dtype)) if at_top_level() else jnp.zeros(shape, dtype)


def no_halt(train_state: TrainState) -> Array:
    """The initial ``halted`` flag: False, one per model for ``fit_many``."""
    return zeros(np.shape(train_state.step), bool)


# --- fused epochs ------------------------------------------------------------------------------------------


class EpochCarry(NamedTuple):
    """What a fused epoch carries from one chunk of steps to the next."""

    train_state: TrainState
    halted: Array  # bool, () or (K,)
    order: Array  # (steps, [K,] batch) example indices of this epoch
    per_step: dict[str, Array]  # name -> (steps, [K,] ...) metrics of each step


def run_steps(step: Callable[..., Any], carry: EpochCarry, data: Any, start: Any, stop: Any) -> EpochCarry:
    """Steps ``start .. stop - 1`` of the epoch in ``carry``, each by ``step`` (``carried_step(plan)``) on its
    batch of ``data``; traceable (Python bounds make a ``scan``)."""

    def body(i, loop):
        train_state, halted, per_step = loop
        train_state, halted, metrics = step(train_state, halted, take(data, carry.order[i]))
        return train_state, halted, {name: per_step[name].at[i].set(value) for name, value in metrics.items()}

    loop = jax.lax.fori_loop(start, stop, body, (carry.train_state, carry.halted, carry.per_step))
    return carry._replace(train_state=loop[0], halted=loop[1], per_step=loop[2])


def empty_per_step(
    plan: Plan, step: Callable[..., Any], train_state: TrainState, order: Any, data: Any
) -> dict[str, Array]:
    """Zero buffers ``(steps, [K,] ...)`` for each per-step metric of ``step`` on batches of ``data``, shaped
    by tracing it once."""
    batch = jax.eval_shape(lambda o, d: take(d, o[0]), order, data)
    shapes = jax.eval_shape(step, train_state, no_halt(train_state), batch)[2]
    return {name: zeros((plan.steps, *s.shape), s.dtype) for name, s in shapes.items()}


def epoch_program(step: Callable[..., Any]) -> Callable[[EpochCarry, Any, Any, Any], EpochCarry]:
    """``(carry, data, start, stop) -> carry``, compiled: steps ``start .. stop - 1`` of the epoch whose
    order ``carry`` holds, each by ``step`` (the carry donated). One program serves every chunk size."""

    def chunk(carry: EpochCarry, data: Any, start: Array, stop: Array) -> EpochCarry:
        return run_steps(step, carry, data, start, stop)

    return compile_jit(chunk, donate_argnums=0)


def run_program(plan: Plan) -> Callable[..., tuple[TrainState, Array, dict[str, Array], dict[str, Array]]]:
    """``(train_state, halted, epochs, data, validation) -> (train_state, halted, per_step, validation)``,
    compiled: the whole run as one ``lax.scan`` over ``epochs`` of ``plan``'s run on ``data`` (validated on
    ``validation``); the ``per_step`` and ``validation`` results gain a leading epoch axis."""

    step = carried_step(plan)

    def run(train_state: TrainState, halted: Array, epochs: Array, data: Any, validation: tuple[Any, ...]):
        def one_epoch(loop, epoch):
            order = plan.order(loop[0], epoch)
            carry = EpochCarry(*loop, order, empty_per_step(plan, step, loop[0], order, data))
            carry = run_steps(step, carry, data, 0, plan.steps)
            logs = plan.validate(carry.train_state, *validation) if plan.validate is not None else {}
            return (carry.train_state, carry.halted), (carry.per_step, logs)

        (train_state, halted), (per_step, validation) = jax.lax.scan(one_epoch, (train_state, halted), epochs)
        return train_state, halted, per_step, validation

    return compile_jit(run, donate_argnums=0)


def differentiable_run(plan: Plan, *, remat: bool = True) -> Callable[..., tuple[TrainState, dict, dict]]:
    """``(train_state, epochs) -> (train_state, per_step, validation)``, traceable and not compiled: the run
    of ``run_program`` (one ``lax.scan`` over ``epochs``, each epoch a ``fori_loop`` with static bounds,
    so reverse-differentiable) for ``jax.grad``/``jax.vmap``/``jax.jit`` to take whole. ``remat`` wraps
    each epoch in ``jax.checkpoint``: the backward pass keeps one train state per epoch and recomputes
    an epoch's steps, so memory grows with the number of epochs, not of steps. No halting (``plan.halt``
    must be False). The data are closed over: constants of the program of whoever compiles ``run``."""

    step = carried_step(plan)

    def one_epoch(train_state, epoch):
        order = plan.order(train_state, epoch)
        per_step = empty_per_step(plan, step, train_state, order, plan.data)
        carry = EpochCarry(train_state, no_halt(train_state), order, per_step)
        carry = run_steps(step, carry, plan.data, 0, plan.steps)
        validation = plan.validate(carry.train_state, *plan.validation) if plan.validate is not None else {}
        return carry.train_state, (carry.per_step, validation)

    body = jax.checkpoint(one_epoch) if remat else one_epoch

    def run(train_state: TrainState, epochs: Array):
        train_state, (per_step, validation) = jax.lax.scan(body, train_state, epochs)
        return train_state, per_step, validation

    return run


class Chunks:
    """Sizes the chunks of a fused epoch so the progress bar moves about every ``interval`` seconds.

    The first chunk of a run is one step, to time it; later chunks take ``interval`` worth of steps (at most
    ``most``), and an epoch that takes less than about ``interval`` runs as one chunk. Without a bar an epoch
    is one chunk. Each chunk boundary costs one dispatch and one host sync: 0.55 ms on a 2-core CPU, 0.2% of a
    0.25 s chunk (``benchmarks/progress_overhead.py``).
    """

    def __init__(self, steps: int, enabled: bool, interval: float = 0.25, most: int | None = None):
        self.steps, self.enabled, self.interval, self.most = steps, enabled, interval, most
        self.seconds_per_step: float | None = None

    def next_size(self, start: int) -> int:
        remaining = self.steps - start
        if not self.enabled:
            return remaining
        if self.seconds_per_step is None:
            return 1
        size = max(1, int(self.interval / max(self.seconds_per_step, 1e-9)))
        if self.most is not None:
            return min(size, self.most, remaining)
        return remaining if remaining <= 1.5 * size else size

    def observe(self, size: int, seconds: float) -> None:
        self.seconds_per_step = seconds / size


# --- reduction of per-step metrics ---------------------------------------------------------------------


def epoch_logs(per_step: Mapping[str, Any]) -> tuple[Logs, dict[str, np.ndarray]]:
    """An epoch's logs and per-step series from its per-step metrics ``name -> (steps, [K,] ...)``.

    Logs are means over the steps whose update was applied (all of them, except under the non-finite
    guard: rejected or halted updates are left out; NaN when none was applied), computed in float64;
    ``"nonfinite"`` is summed (the number of rejected updates). Metrics named ``step/...`` are the series,
    kept per step, with ``step/loss`` beside them.
    """
    per_step = {name: np.asarray(value) for name, value in per_step.items()}
    if "nonfinite" in per_step:
        applied = per_step.pop(APPLIED, per_step["nonfinite"] == 0)
    else:
        applied = np.ones(per_step["loss"].shape[:1], bool)
    applied = applied.astype(np.float64)
    count = applied.sum(axis=0)
    logs: Logs = {}
    series: dict[str, np.ndarray] = {}
    for name, values in per_step.items():
        if name.startswith(STEP_PREFIX):
            series[name] = values
        elif name == "nonfinite":
            logs[name] = values.sum(axis=0)
        else:
            mask = applied.reshape(applied.shape + (1,) * (values.ndim - applied.ndim))
            total = np.sum(np.where(mask > 0, values.astype(np.float64), 0.0), axis=0)
            logs[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if series:
        series[f"{STEP_PREFIX}loss"] = per_step["loss"]
    return logs, series


def ordered(logs: Mapping[str, Any], many: bool) -> Logs:
    """Logs loss first, validation last; host floats (one model) or float arrays ``(K,)`` (fit_many)."""
    keys = sorted(logs, key=lambda k: (k.startswith("val_"), k.removeprefix("val_") != "loss", k))
    return {k: np.asarray(logs[k], np.float64) if many else float(logs[k]) for k in keys}


# --- progress, checkpoints and the record of a run ------------------------------------------------------


class Progress:
    """A tqdm bar over a run's steps, advanced from the host between compiled chunks (process 0 only).

    The bar appears at ``start()``, which the engine calls once the run's programs are compiled, so its
    rate and time estimate measure training, not the compiler.
    """

    def __init__(self, enabled: bool, total: int | None):
        self.enabled = enabled and jax.process_index() == 0
        self.total, self.bar = total, None

    def start(self) -> None:
        if self.enabled and self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="step", dynamic_ncols=True)

    def update(self, steps: int) -> None:
        """Moves the bar on by ``steps`` steps (trained, not just dispatched: the caller synced)."""
        if self.bar is not None:
            self.bar.update(steps)

    def epoch_line(self, epoch: int, epochs: int, logs: Logs, seconds: float) -> None:
        if self.bar is not None:
            shown = "  ".join(f"{name} {float(np.mean(value)):.4f}" for name, value in logs.items())
            self.bar.write(f"epoch {epoch + 1}/{epochs}  {shown}  ({seconds:.2f}s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Checkpoints(NamedTuple):
    """When and how a run saves checkpoints (``save_checkpoint`` at epoch ends)."""

    directory: str
    every: int = 1
    keep: int | None = 3
    best_metric: str | None = None
    best_mode: str = "min"
    config: Mapping[str, Any] | None = None

    def save(self, train_state: TrainState, logs: Logs, epochs_done: int) -> None:
        metrics = {k: float(np.mean(v)) for k, v in logs.items()}  # fit_many: the models' mean
        config = {**(self.config or {}), "epochs_done": epochs_done}
        save_checkpoint(self.directory, train_state, metrics=metrics, config=config, keep=self.keep,
                        best_metric=self.best_metric, best_mode=self.best_mode, overwrite=True)


HaltedAt = Callable[[], tuple[int, int | None, Batch]]  # () -> (index in the epoch, steps per epoch, batch)


class Recorder:
    """The record of a run: history, the epoch line, every callback every epoch, checkpoints, halts.

    ``history`` maps each log to one value per epoch (a float, or a ``(K,)`` array for ``fit_many``) and
    each per-step series ``step/...`` to one value (or ``(K,)`` array) per step.
    """

    def __init__(self, where: str, *, epochs: int, many: bool, progress: Progress,
                 callbacks: Sequence[Callable[..., Any]] = (), checkpoints: Checkpoints | None = None,
                 objective: Objective | None = None, progress_every: int | None = None, nonfinite: str | None = None):
        self.where, self.epochs, self.many, self.progress = where, epochs, many, progress
        if progress_every is not None:
            check_int(where, "progress_every", progress_every, minimum=1)
        self.progress_every = progress_every
        self.callbacks, self.checkpoints, self.objective = list(callbacks), checkpoints, objective
        self.history: dict[str, list[Any]] = {}
        self.halted_models: set[int] = set()
        self.nonfinite, self.warned_nonfinite = nonfinite, False

    def epoch(self, epoch: int, train_state: TrainState, logs: Logs, series: Mapping[str, np.ndarray],
              seconds: float, *, save: bool = True) -> bool:
        """Records one epoch; returns True when a callback asks to stop (after every callback has run)."""
        logs = ordered(logs, self.many)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)
        for name, values in series.items():  # (steps, [K]): floats, or (K,) arrays for fit_many
            self.history.setdefault(name, []).extend(list(values) if self.many else values.tolist())
        self.progress.epoch_line(epoch, self.epochs, logs, seconds)
        self.warn_nonfinite(epoch, logs)
        stop = any([bool(callback(epoch, train_state, logs)) for callback in self.callbacks])
        last = stop or epoch + 1 == self.epochs
        if save and self.checkpoints is not None and (last or (epoch + 1) % self.checkpoints.every == 0):
            self.checkpoints.save(train_state, logs, epoch + 1)
        return stop

    def warn_nonfinite(self, epoch: int, logs: Logs) -> None:
        """Under the default policy (``nonfinite=None``), warns once per run at the end of the first epoch whose
        loss is NaN or Inf."""
        loss = np.asarray(logs.get("loss", 0.0), np.float64)
        bad = np.flatnonzero(~np.isfinite(loss)).tolist()
        if self.nonfinite is not None or self.warned_nonfinite or not bad:  # "halt"/"skip" report on their own
            return
        self.warned_nonfinite = True
        which = f"models {bad} have" if self.many else "it has"
        warnings.warn(
            f"{self.where}: the loss of epoch {epoch + 1} is not finite ({which} a NaN or Inf loss); training goes on "
            f"from non-finite parameters. Hint: pass nonfinite='halt' to stop at the first such step and name the "
            f"parameter that went non-finite, or nonfinite='skip' to skip such updates; lower the learning rate and "
            f"check the data (labels out of range give a NaN loss).", RuntimeWarning, stacklevel=4)

    def check_halt(self, train_state: TrainState, halted: np.ndarray, epoch: int, halted_at: HaltedAt) -> None:
        """After an epoch: raise ``NonFiniteError`` if the model halted, or warn naming the models that
        halted in it (fit_many). ``halted_at()`` gives the halted update's place in its epoch, the number of
        steps per epoch (None for a stream) and its batch."""
        if not np.any(halted):
            return
        if self.many:
            new = sorted(set(np.flatnonzero(halted).tolist()) - self.halted_models)
            self.halted_models.update(new)
            if new:
                warnings.warn(f"{self.where}: models {new} met a non-finite loss or gradient in epoch {epoch + 1} and "
                              f"stay at their last finite state; their later logs are NaN.", RuntimeWarning,
                              stacklevel=4)
            return
        at = int(train_state.step)
        index, steps, batch = halted_at()
        leaf = nonfinite_leaf(self.objective, train_state, batch)
        saved = ""
        if self.checkpoints is not None:
            newest = latest_step(self.checkpoints.directory)
            saved = f" Checkpoints in {self.checkpoints.directory}: " + (
                "none yet." if newest is None else f"the newest is step {newest}.")
        of = "" if steps is None else f" of {steps}"
        raise NonFiniteError(
            f"{self.where}: non-finite loss or gradient at step {at} (epoch {epoch + 1}, batch {index}{of}): the "
            f"first non-finite leaf is {leaf}. Training halted; the error's `train_state` is the last finite state "
            f"(step {at}).{saved} Hint: lower the learning rate, check the data, or pass nonfinite='skip'.",
            step=at, leaf=leaf, train_state=train_state)


def checkpoints_for(
    where: str, directory: Any, *, resume: bool, every: Any, keep: Any, best_metric: str | None = None,
    best_mode: str = "min", config: Mapping[str, Any] | None = None,
) -> Checkpoints | None:
    """A driver's checkpoint arguments checked at the call (not at the first save); None without a directory.

    Raises:
      ValueError: ``every`` or ``keep`` not a positive int (``keep`` may be None), ``resume`` without a
        directory, or ``best_mode`` not ``"min"``/``"max"``.
      CheckpointError: the directory cannot be created or written (``CheckpointWriteError``), or another
        process is writing checkpoints there (``CheckpointLockedError``): found before any training is lost.
    """
    check_int(where, "checkpoint_every", every, minimum=1, unit=" (epochs)")
    if keep is not None:
        check_int(where, "keep", keep, minimum=1)
    check_choice(where, "best_mode", best_mode, ("min", "max"))
    if resume and directory is None:
        raise ValueError(f"{where}: argument `resume=True` needs `checkpoint_dir`, given None.")
    if directory is None:
        return None
    path = check_writable(directory, where)  # created, written to, and not locked by another writer
    return Checkpoints(path, every, keep, best_metric, best_mode, config)


def resume_from(where: str, checkpoints: Checkpoints, like: Any, steps: int | None) -> tuple[Any, int] | None:
    """The newest intact checkpoint restored into ``like``, and the epochs it had done; None when there is none.

    With ``steps`` (in-memory data) the epochs done are ``step // steps``, and a checkpoint saved with
    another number of steps per epoch (or mid-epoch) is refused: the run could not continue exactly.
    """
    if latest_step(checkpoints.directory) is None:
        return None
    train_state, info = restore_checkpoint(checkpoints.directory, like)
    config = info.get("config") or {}
    if steps is None:
        return train_state, int(config.get("epochs_done", 0))
    saved = config.get(where, {}).get("steps_per_epoch", steps)
    at = step_count(train_state)
    if saved != steps or at % steps:
        raise ValueError(
            f"{where}: cannot resume exactly from step {at} in {checkpoints.directory}: it was saved with {saved} "
            f"steps per epoch, this run has {steps}."
        )
    return train_state, at // steps


# --- the loop over epochs ------------------------------------------------------------------------------


def step_count(train_state: TrainState) -> int:
    """The step count of a train state (of the first model of a stacked one)."""
    return int(np.asarray(train_state.step).reshape(-1)[0])


EpochRunner = Callable[[TrainState, Array, int, Progress], tuple[TrainState, Array, dict[str, Any], HaltedAt]]


def train(plan: Plan, train_state: TrainState, first_epoch: int, epochs: int, *, mode: str | bool,
          recorder: Recorder, batches: Callable[[int], Iterable[Batch]] | None = None) -> TrainState:
    """Runs epochs ``first_epoch .. epochs - 1`` of ``plan``; returns the final train state.

    ``mode``: ``"epoch"``, ``"all"`` or ``False`` (a loop of the jitted step; ``batches(epoch)``, when
    given, yields a stream's device batches). Stops early when a callback asks to, or when every model
    has halted (``Recorder.check_halt`` raises for one model, before the halted epoch is recorded).
    """
    if first_epoch >= epochs:
        return train_state
    lock = contextlib.nullcontext() if recorder.checkpoints is None else checkpoint_lock(
        recorder.checkpoints.directory, where=recorder.where)  # one writer per directory, for the whole run
    with lock:
        return _train(plan, train_state, first_epoch, epochs, mode=mode, recorder=recorder, batches=batches)


def _train(plan: Plan, train_state: TrainState, first_epoch: int, epochs: int, *, mode: str | bool,
           recorder: Recorder, batches: Callable[[int], Iterable[Batch]] | None) -> TrainState:
    try:
        if mode == "all":
            return _train_all(plan, train_state, first_epoch, epochs, recorder)
        if mode == "epoch":
            run_epoch = _fused_epochs(plan, train_state, recorder.progress, recorder.progress_every)
        else:
            run_epoch = _loop_epochs(plan, batches, recorder.where, recorder.progress_every or LOOP_CHUNK)
        validate = None if plan.validate is None else validate_program(plan)
        recorder.progress.start()
        halted = no_halt(train_state)
        for epoch in range(first_epoch, epochs):
            start = time.perf_counter()
            train_state, halted, per_step, halted_at = run_epoch(train_state, halted, epoch, recorder.progress)
            all_halted = False
            if plan.halt:
                recorder.check_halt(train_state, np.asarray(halted), epoch, halted_at)
                all_halted = bool(np.all(np.asarray(halted)))
            logs, series = epoch_logs(per_step)
            if validate is not None:
                logs.update({f"val_{k}": v for k, v in validate(train_state, *plan.validation).items()})
            if recorder.epoch(epoch, train_state, logs, series, time.perf_counter() - start) or all_halted:
                break
        return train_state
    finally:
        recorder.progress.close()


def _train_all(plan: Plan, train_state: TrainState, first_epoch: int, epochs: int, recorder: Recorder):
    """The whole run as one program; then each epoch is recorded (checkpointed once, at the end)."""
    recorder.progress.start()
    start = time.perf_counter()
    train_state, halted, per_step, validation = kept_run_program(plan)(
        train_state, no_halt(train_state), np.arange(first_epoch, epochs, dtype=np.int32), plan.data, plan.validation)
    per_step, validation, halted = jax.device_get((per_step, validation, halted))
    seconds = (time.perf_counter() - start) / (epochs - first_epoch)
    recorder.progress.update((epochs - first_epoch) * plan.steps)
    epoch, index = divmod(step_count(train_state), plan.steps)
    recorder.check_halt(train_state, halted, epoch,
                        lambda: (index, plan.steps, take(plan.data, plan.order(train_state, epoch)[index])))

    def logs_of(i: int) -> tuple[Logs, dict[str, np.ndarray]]:
        logs, series = epoch_logs({name: values[i] for name, values in per_step.items()})
        return {**logs, **{f"val_{name}": values[i] for name, values in validation.items()}}, series

    for i, epoch in enumerate(range(first_epoch, epochs)):
        if recorder.epoch(epoch, train_state, *logs_of(i), seconds, save=False):
            break
    if recorder.checkpoints is not None:  # once, with the last epoch's logs: the run is done, whatever stopped
        recorder.checkpoints.save(train_state, ordered(logs_of(-1)[0], recorder.many), epochs)
    return train_state


def kept_per_plan(build: Callable[[Plan], Any]) -> Callable[[Plan], Any]:
    """``build(plan)``, kept for the last 32 plans (without their data: the programs take the data as
    arguments) under the checked mode and XLA options it was built with. A driver that hands the engine
    the same plan functions again (``fit_plan``) runs the jitted programs it already traced and compiled."""
    kept = functools.lru_cache(maxsize=32)(lambda spec, mode: build(spec))

    def get(plan: Plan) -> Any:
        spec = plan._replace(data=None, validation=())
        try:
            hash(spec)
        except TypeError:  # unhashable parts: built afresh
            return build(spec)
        return kept(spec, (checks_enabled(), repr(jit_options())))

    return get


def _fused_programs(plan: Plan) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """``(step, epoch program, order program)`` of ``_fused_epochs``."""
    # The step is traced once, for the buffers' shapes and for the program; the checked mode stages its
    # checks while tracing the program (checkify), so it traces the step there again.
    step = carried_step(plan) if checks_enabled() else jax.jit(carried_step(plan))
    return step, epoch_program(step), setup_jit(plan.order)


fused_programs = kept_per_plan(_fused_programs)
validate_program = kept_per_plan(lambda plan: compile_jit(plan.validate))
kept_run_program = kept_per_plan(run_program)


def _fused_epochs(plan: Plan, train_state: TrainState, progress: Progress, most: int | None) -> EpochRunner:
    """Epochs as compiled chunks of steps (``epoch_program``), sized by ``Chunks`` for the progress bar;
    each epoch's order is drawn by a setup program of its own (compiled for compile time, ``setup_jit``)."""
    step, program, draw_order = fused_programs(plan)
    chunks = Chunks(plan.steps, progress.enabled, most=most)
    order = jax.eval_shape(plan.order, train_state, 0)
    per_step = empty_per_step(plan, step, train_state, order, plan.data)
    carry = EpochCarry(train_state, no_halt(train_state), order, per_step)
    # Compiled before the first epoch, so the bar's first estimate times the steps, not the compiler; every
    # chunk runs that executable (the jitted function would compile again for arguments placed otherwise:
    # a restored train state is committed to its device, and so is all it computes).
    compiled = program.lower(carry, plan.data, np.int32(0), np.int32(0)).compile()
    program = program if checks_enabled() else compiled  # the checked mode raises its checks' errors on calls
    buffers = carry.per_step  # donated to each epoch's first chunk, returned by its last

    def run_epoch(train_state, halted, epoch, progress):
        nonlocal buffers
        carry = EpochCarry(train_state, halted, draw_order(train_state, np.int32(epoch)), buffers)
        start = 0
        while start < plan.steps:
            size = chunks.next_size(start)
            began = time.perf_counter()
            carry = program(carry, plan.data, np.int32(start), np.int32(start + size))
            start += size
            if chunks.enabled or plan.halt:
                halted = np.asarray(carry.halted)  # the host sync that times the chunk
                chunks.observe(size, time.perf_counter() - began)
                progress.update(size)
                if plan.halt and np.all(halted):
                    break
        per_step = jax.device_get(carry.per_step)
        buffers = carry.per_step

        def halted_at():
            index = step_count(carry.train_state) - epoch * plan.steps
            return index, plan.steps, take(plan.data, carry.order[index])

        return carry.train_state, carry.halted, per_step, halted_at

    return run_epoch


def _loop_epochs(
    plan: Plan, batches: Callable[[int], Iterable[Batch]] | None, where: str, every: int
) -> EpochRunner:
    """Epochs as a Python loop of the jitted step over ``batches(epoch)`` or the in-memory data's order;
    the bar advances every ``every`` steps."""
    if plan.many:
        step = compile_jit(carried_step(plan), donate_argnums=0)
    else:  # one model: the jitted step that passes the fewest arrays (jit_train_step); a halt stops the loop
        jitted = jit_train_step(plan.step)

        def step(train_state, halted, batch):
            train_state, metrics = jitted(train_state, batch)
            return train_state, np.asarray(plan.halt and bool(metrics["nonfinite"])), metrics

    order = compile_jit(plan.order) if batches is None else None
    gather = compile_jit(gather_batches)

    def device_batches(train_state: TrainState, epoch: int) -> Iterator[Batch]:
        if batches is not None:
            yield from batches(epoch)
            return
        rows = order(train_state, epoch)
        for at in range(0, plan.steps, LOOP_CHUNK):
            yield from gather(plan.data, rows[at : at + LOOP_CHUNK])

    def run_epoch(train_state, halted, epoch, progress):
        per_step, batch = [], None
        for batch in device_batches(train_state, epoch):
            train_state, halted, metrics = step(train_state, halted, batch)
            per_step.append(metrics)
            if progress.enabled and len(per_step) % every == 0:
                jax.block_until_ready(metrics)  # the bar counts trained steps, not dispatched ones
                progress.update(every)
            if plan.halt and np.all(np.asarray(halted)):
                break
        if not per_step:
            raise ValueError(f"{where}: `batches({epoch})` yielded no batch.")
        progress.update(len(per_step) % every)
        stacked = jax.device_get(jax.tree.map(lambda *values: jnp.stack(values), *per_step))
        return train_state, halted, stacked, lambda last=batch: (len(per_step) - 1, plan.steps, last)

    return run_epoch
