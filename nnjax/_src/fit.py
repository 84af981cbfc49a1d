"""``fit``, ``evaluate`` and ``predict``: training and inference over in-memory arrays.

Each epoch visits the examples in an order drawn from the run's key and the epoch number, in
mini-batches of ``batch_size`` (``batch_size = len(x)`` is batch gradient descent, ``1`` is stochastic
gradient descent). The last ``len(x) % batch_size`` examples of each shuffled epoch are left out so
every batch has one shape (one compilation). Three execution modes, same numbers:

- ``fused="epoch"`` (default): each epoch is ONE compiled program, ``jax.lax.scan`` over its steps with
  the data on the device; one host sync per epoch.
- ``fused="all"``: the whole run, validation included, is one compiled program.
- ``fused=False``: a Python loop calling the jitted step once per batch.

Progress is a tqdm bar fed from inside the compiled program through ``jax.debug.callback`` every
``progress_every`` steps, so it never forces a host sync per step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.checkpoint import abstract_train_state, latest_step, restore_checkpoint, save_checkpoint
from nnjax._src.compile import jit as compile_jit
from nnjax._src.core import Layer
from nnjax._src.errors import NonFiniteError, check_integer_labels, check_same_leading
from nnjax._src.objective import Loss, Metric, Objective, as_objective
from nnjax._src.train import (
    DATA_STREAM,
    TrainState,
    check_nonfinite_mode,
    eval_key,
    init_train_state,
    make_train_step,
    nonfinite_leaf,
    stream_key,
)
from nnjax._src.types import Array

History = dict[str, list[float]]
Callback = Callable[[int, TrainState, dict[str, float]], Any]  # (epoch, train_state, logs) -> True to stop


class FitResult(NamedTuple):
    """What ``fit`` (and ``fit_stream``) returns: the final train state and the per-epoch history.

    Attributes:
      train_state: the ``TrainState`` after the last epoch run (or the early stop); pass it to
        ``predict``/``evaluate``, or back to ``fit(train_state=...)`` to continue.
      history: ``name -> [one float per epoch]``: ``"loss"``, each metric or aux, ``"nonfinite"`` (with
        ``nonfinite="skip"``) and ``"val_*"``, e.g. ``history["loss"][e]`` for epoch ``e`` (0-based,
        counted from this call's first epoch). Empty when no epoch was left to run.

    Example:
      >>> x = np.linspace(-1, 1, 16, dtype=np.float32)[:, None]
      >>> result = nnjax.fit(nnjax.Dense(1), nnjax.losses.mse, optax.sgd(0.1), x, 2 * x, epochs=2, progress=False)
      >>> train_state, history = result
      >>> list(history), len(history["loss"]), int(train_state.step)
      (['loss'], 2, 2)
    """

    train_state: TrainState
    history: History


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
    if y is not None and output_shape is not None and np.issubdtype(np.asarray(y[:1]).dtype, np.integer):
        if len(output_shape) == len(np.shape(y)[1:]) + 1:
            check_integer_labels(where, np.asarray(y), output_shape[-1])


def epoch_order(key: jax.Array, epoch: Array | int, n: int, batch_size: int) -> Array:
    """The example indices of one epoch, ``(n // batch_size, batch_size)``, drawn from ``key`` and ``epoch``.

    A shuffle by sorting 32-bit random keys (``shuffled_indices``); ties (probability ~ n^2 / 2^33) keep
    index order. Under ``jax.vmap`` its ``lax.cond`` runs both branches: map over keys with ``lax.map``.
    """
    steps = n // batch_size
    order = shuffled_indices(jax.random.bits(stream_key(key, DATA_STREAM, epoch), (n,), jnp.uint32))
    return order[: steps * batch_size].reshape(steps, batch_size)


def shuffled_indices(bits: Array) -> Array:
    """``jnp.argsort(bits)`` (int32, ties in index order) for a 1-D ``bits``, computed faster when it has no ties.

    Without ties each element's place is its rank: a one-operand sort, a binary search and a scatter,
    2-3x faster on XLA:CPU than ``argsort``'s two-operand sort (3,200 keys: 0.74 vs 1.48 ms; 60,000:
    8.1 vs 22.4 ms, on a 2-core CPU). With ties it is ``argsort``: the result is the same either way.
    """
    n = bits.shape[0]
    sorted_bits = jnp.sort(bits)

    def by_rank():
        rank = jnp.searchsorted(sorted_bits, bits, method="scan")
        return jnp.zeros((n,), jnp.int32).at[rank].set(jnp.arange(n, dtype=jnp.int32), unique_indices=True)

    has_ties = jnp.any(sorted_bits[1:] == sorted_bits[:-1])
    return jax.lax.cond(has_ties, lambda: jnp.argsort(bits).astype(jnp.int32), by_rank)


def as_data(x: Any, y: Any) -> Any:
    """The data a step's batches are taken from: ``(x, y)``, or ``x`` alone when ``y`` is None."""
    return x if y is None else (x, y)


def take(data: Any, idx: Array) -> Any:
    """The batch ``data[idx]`` of every leaf: ``(x[idx], y[idx])`` for ``(x, y)``."""
    return jax.tree.map(lambda a: a[idx], data)


LOOP_CHUNK = 32  # batches gathered per dispatch by fit(fused=False)


def gather_batches(data: Any, order: Array) -> list[Any]:
    """``[take(data, order[i]) for each row i]`` of ``order: (k, batch_size)``, as one program.

    ``fit(fused=False)`` gathers ``LOOP_CHUNK`` batches per call instead of indexing three times per step:
    each indexing is a dispatch of its own, and they cost more than a small model's step.
    """
    return [take(data, idx) for idx in order]


def make_predict_fn(model: Layer, batch_size: int = 1024) -> Callable[[TrainState, Any], Array]:
    """A traceable ``(train_state, x) -> predictions`` over a whole set, ``batch_size`` examples at a time."""

    def predict_fn(train_state: TrainState, x: Any) -> Array:
        def one(xi):
            return model.apply(train_state.params, train_state.state, xi[None], train=False)[0][0]

        return jax.lax.map(one, x, batch_size=min(batch_size, x.shape[0]))

    return predict_fn


def make_evaluate_fn(
    model: Layer, loss: Loss | Objective, metrics: Mapping[str, Metric] | None = None, batch_size: int = 1024
) -> Callable[[TrainState, Any, Any], dict[str, Array]]:
    """A traceable ``(train_state, x, y) -> {"loss": ..., metric or aux: ...}`` over a whole set, ``train=False``.

    A ``loss`` and its metrics see the predictions for the whole set at once (so ``r2_score`` is the
    set's). A general objective runs on chunks of ``batch_size`` examples (``x``, or ``(x, y)`` when ``y``
    is given), chunk ``i`` with ``fold_in(eval_key, i)``; its loss and aux are the chunks' means weighted
    by their sizes, which is the set's mean for a mean-reduced objective.
    """
    if isinstance(loss, Objective):
        return _objective_evaluate_fn(as_objective("evaluate", model, loss, metrics), batch_size)
    predict_fn = make_predict_fn(model, batch_size)

    def evaluate_fn(train_state, x, y):
        predictions = predict_fn(train_state, x)
        return {"loss": loss(predictions, y), **{name: fn(predictions, y) for name, fn in (metrics or {}).items()}}

    return evaluate_fn


def _objective_evaluate_fn(objective_fn: Objective, batch_size: int) -> Callable[..., dict[str, Array]]:
    def evaluate_fn(train_state, x, y=None):
        data = as_data(x, y)
        n = jax.tree.leaves(data)[0].shape[0]
        size = min(batch_size, n)
        chunks, rest = divmod(n, size)
        key = eval_key(train_state)

        def one(i, batch):
            value, (_, aux) = objective_fn(
                train_state.params, train_state.state, batch, key=jax.random.fold_in(key, i), train=False
            )
            return {"loss": value, **aux}

        head = jax.tree.map(lambda a: a[: chunks * size].reshape(chunks, size, *a.shape[1:]), data)
        per_chunk = jax.lax.map(lambda args: one(*args), (jnp.arange(chunks), head))
        total = jax.tree.map(lambda v: jnp.sum(v, axis=0) * size, per_chunk)
        if rest:
            tail = one(chunks, jax.tree.map(lambda a: a[chunks * size :], data))
            total = jax.tree.map(lambda t, v: t + v * rest, total, tail)
        return jax.tree.map(lambda t: t / n, total)

    return evaluate_fn


def _predict(train_state: TrainState, x: Array, *, model: Layer, batch_size: int) -> Array:
    return make_predict_fn(model, batch_size)(train_state, x)


def _evaluate(train_state, x, y, *, model, loss, metrics: tuple, batch_size: int) -> dict[str, Array]:
    return make_evaluate_fn(model, loss, dict(metrics), batch_size)(train_state, x, y)


# Compiled on first use, not at import (compile_jit asks for the backend). The model is a static
# argument (a Layer hashes by its functions): one compilation per model and input shape.
@functools.cache
def compiled_predict() -> Callable[..., Array]:
    return compile_jit(_predict, static_argnames=("model", "batch_size"))


@functools.cache
def compiled_evaluate() -> Callable[..., dict[str, Array]]:
    return compile_jit(_evaluate, static_argnames=("model", "loss", "metrics", "batch_size"))


def predict(model: Layer, train_state: TrainState, x: Any, *, batch_size: int = 1024) -> Array:
    """The model's outputs for ``x`` in inference mode: ``model.apply(..., train=False)``.

    BatchNorm uses its running statistics and Dropout is off. Each example is run as a batch of one
    (``jax.lax.map`` over ``x``, ``batch_size`` of them vectorized at a time), so the outputs do not depend on
    how ``x`` is split. Compiled once per model, batch size and input shape: calling it again does not
    recompile.

    Args:
      model: the network the train state was trained for.
      train_state: a ``TrainState`` (its ``params`` and ``state`` are used).
      x: ``(n, *input_shape)`` inputs, NumPy or JAX.
      batch_size: examples computed together (keyword-only); lower it to save memory.

    Returns:
      A device array ``(n, *output_shape)``: the model's raw outputs (logits for a classifier).

    Raises:
      LayerError, LayerTypeError: ``x`` does not suit the model (raised by its layers while tracing).

    Example:
      >>> model = nnjax.Dense(2)
      >>> ts = nnjax.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (3,))
      >>> nnjax.predict(model, ts, np.ones((5, 3), np.float32)).shape
      (5, 2)
    """
    return compiled_predict()(train_state, jnp.asarray(x), model=model, batch_size=batch_size)


def evaluate(
    model: Layer,
    train_state: TrainState,
    x: Any,
    y: Any = None,
    *,
    loss: Loss | Objective,
    metrics: Mapping[str, Metric] | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Loss and metrics (or a general objective's aux) over a whole data set with ``train=False``.

    ``train=False``: BatchNorm's running statistics, no Dropout. A ``loss`` and its metrics see the
    predictions for the whole set at once (so ``r2_score`` is the set's); a general objective runs on
    chunks of ``batch_size`` examples with the run's ``eval_key`` and its values are the chunks' means
    weighted by size. See ``make_evaluate_fn``.

    Args:
      model: the network.
      train_state: a ``TrainState`` (``params``, ``state`` and ``key`` are used).
      x: inputs ``(n, *input_shape)``, NumPy or JAX; checked as in ``fit``.
      y: targets ``(n, ...)``; may be None only for a general objective, which then gets the inputs alone.
      loss: ``loss(predictions, y) -> scalar`` or an ``nnjax.objective`` (keyword-only).
      metrics: optional ``name -> fn(predictions, y)`` (loss form only).
      batch_size: examples computed together.

    Returns:
      ``{"loss": float, <metric or aux name>: float, ...}`` (Python floats).

    Raises:
      ValueError: bad data (as in ``fit``), ``y`` missing for a loss, or ``metrics`` with a general objective.
      TypeError: integer inputs to a model that expects floats, float labels for an integer-label loss, or
        ``loss`` neither callable nor an ``nnjax.objective``.

    Example:
      >>> model = nnjax.Dense(2)
      >>> ts = nnjax.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (3,))
      >>> x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])   # same inputs: half the labels are right
      >>> logs = nnjax.evaluate(model, ts, x, y, loss=nnjax.losses.softmax_cross_entropy,
      ...                       metrics={"accuracy": nnjax.metrics.accuracy})
      >>> sorted(logs), type(logs["loss"]).__name__, logs["accuracy"]
      (['accuracy', 'loss'], 'float', 0.5)
    """
    as_objective("evaluate", model, loss, metrics)  # raises for a bad `loss` or `metrics`
    check_fit_data("evaluate", model, loss, x, y, None, None)
    values = compiled_evaluate()(
        train_state,
        jnp.asarray(x),
        None if y is None else jnp.asarray(y),
        model=model,
        loss=loss,
        metrics=tuple((metrics or {}).items()),
        batch_size=batch_size,
    )
    return {name: float(value) for name, value in values.items()}


class _Progress:
    """A tqdm bar over a run's steps, fed by host callbacks from compiled code (process 0 only)."""

    def __init__(self, enabled: bool, total: int, first_step: int, every: int):
        self.bar = None
        self.first_step, self.every = first_step, max(1, every)
        if enabled and jax.process_index() == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def report(self, step, loss) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{float(np.mean(loss)):.4f}", refresh=False)
            self.bar.update(max(0, int(np.max(step)) - self.first_step - self.bar.n))

    def in_program(self, train_state: TrainState, metrics: dict[str, Array]) -> None:
        """Call inside a compiled step loop: reports every ``every`` steps without a host sync."""
        if self.bar is None:
            return
        jax.lax.cond(
            train_state.step % self.every == 0,
            lambda: jax.debug.callback(self.report, train_state.step, metrics["loss"]),
            lambda: None,
        )

    def epoch_end(self, epoch: int, epochs: int, step: int, logs: dict[str, float], seconds: float) -> None:
        if self.bar is not None:
            self.bar.n = step - self.first_step
            shown = "  ".join(f"{name} {value:.4f}" for name, value in logs.items())
            self.bar.write(f"epoch {epoch + 1}/{epochs}  {shown}  ({seconds:.2f}s)")
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _epoch_logs(per_step: dict[str, Array]) -> dict[str, Array]:
    """Per-epoch logs from per-step metrics ``(steps, ...)``: means; with a non-finite guard, means over
    the applied updates only and ``"nonfinite"`` summed (the number of rejected updates)."""
    if "nonfinite" not in per_step:
        return jax.tree.map(jnp.mean, per_step)
    per_step = dict(per_step)
    applied = per_step.pop("_applied", per_step["nonfinite"] == 0)
    count = jnp.maximum(jnp.sum(applied), 1)
    logs = {}
    for name, values in per_step.items():
        mask = applied.reshape(applied.shape + (1,) * (values.ndim - 1))
        logs[name] = jnp.sum(jnp.where(mask, values, 0)) / (count * (values.size // max(values.shape[0], 1)))
    logs["nonfinite"] = jnp.sum(per_step["nonfinite"])
    return logs


def _ordered(logs: dict[str, Any]) -> dict[str, float]:
    """Host floats, loss first, validation last."""
    keys = sorted(logs, key=lambda k: (k.startswith("val_"), k.removeprefix("val_") != "loss", k))
    return {k: float(logs[k]) for k in keys}


EpochFn = Callable[[Any, Any], tuple[Any, dict[str, Any]]]  # (train_state, epoch) -> (train_state, logs)


def run_epochs(
    fused: bool | str,
    train_state: Any,
    first_epoch: int,
    epochs: int,
    *,
    run_epoch: EpochFn,
    loop_epoch: EpochFn,
    record: Callable[[int, Any, dict[str, Any], float], bool],
    check: Callable[[Any, dict[str, Any]], None] = lambda train_state, logs: None,
) -> tuple[Any, dict[str, Any]]:
    """The epoch loop of ``fit`` and ``fit_many``; returns the final train state and its epoch's logs.

    ``run_epoch(train_state, epoch)`` is traceable (one ``lax.scan`` over the epoch's batches);
    ``fused="epoch"`` compiles it, ``fused="all"`` compiles a scan of it over every epoch (one
    program), and ``fused=False`` calls ``loop_epoch`` (a Python loop of the jitted step) instead.
    After each epoch's program ``check(train_state, logs)`` may raise (with ``"all"``: once, per-epoch
    logs stacked); ``record(epoch, train_state, logs, seconds)`` returning True stops the loop (with
    ``"all"`` the run is already done; only the recording stops).
    """
    if fused == "all":
        start = time.perf_counter()
        run_all = compile_jit(lambda ts, es: jax.lax.scan(run_epoch, ts, es), donate_argnums=0)
        train_state, all_logs = run_all(train_state, jnp.arange(first_epoch, epochs))
        all_logs = jax.device_get(all_logs)
        check(train_state, all_logs)
        seconds = (time.perf_counter() - start) / (epochs - first_epoch)
        for i, epoch in enumerate(range(first_epoch, epochs)):
            if record(epoch, train_state, {k: v[i] for k, v in all_logs.items()}, seconds):
                break
        return train_state, {k: v[-1] for k, v in all_logs.items()}
    compiled_epoch = compile_jit(run_epoch, donate_argnums=0)
    logs: dict[str, Any] = {}
    for epoch in range(first_epoch, epochs):
        start = time.perf_counter()
        train_state, logs = compiled_epoch(train_state, epoch) if fused == "epoch" else loop_epoch(train_state, epoch)
        check(train_state, logs)
        if record(epoch, train_state, logs, time.perf_counter() - start):
            break
    return train_state, logs


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
    if validation_data is None:
        return input_shape, None
    if y is None:
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
    return input_shape, (jnp.asarray(x_val), None if y_val is None else jnp.asarray(y_val))


def fit(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation,
    x: Any,
    y: Any = None,
    *,
    input_shape: Any = None,
    epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    metrics: Mapping[str, Metric] | None = None,
    validation_data: tuple[Any, Any] | None = None,
    train_state: TrainState | None = None,
    fused: bool | str = "epoch",
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    progress_every: int | None = None,
    nonfinite: str | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    keep: int | None = 3,
    checkpoint_every: int = 1,
    best_metric: str | None = None,
    best_mode: str = "min",
) -> FitResult:
    """Trains ``model`` on ``(x, y)`` with mini-batch gradient descent; returns the state and history.

    The objective is a ``loss(predictions, y)`` or, for anything else, a general ``nnjax.objective``
    (stochastic losses that need a key, models with several parts, auxiliary outputs)::

        @nnjax.objective
        def elbo(params, state, x, *, key, train):          # batch: x[idx] (fit without y)
            ...                                             # params["encoder"], params["decoder"], ...
            return recon + kl, (state, {"reconstruction": recon, "kl": kl})

        vae = nnjax.named(encoder=encoder, decoder=decoder)
        result = fit(vae, elbo, optax.adam(1e-3), x, input_shape={"encoder": (64,), "decoder": (8,)})
        result.history["kl"]                                # the aux, per epoch, beside "loss"

    Args:
      model: the network (a ``Layer``).
      loss: ``loss(predictions, y) -> scalar``, or an ``nnjax.objective`` ``(params, state, batch, *, key,
        train) -> (loss, (new_state, aux))`` given each batch as ``x[idx]`` (no ``y``) or ``(x[idx], y[idx])``,
        the step's key (``step_key``), and ``train=True`` (``False`` in validation, with a fixed key).
      optimizer: any ``optax.GradientTransformation`` (schedules, ``optax.chain``, ``optax.MultiSteps``).
      x: inputs ``(n, *input_shape)``, a NumPy or JAX array (floating point unless the model takes integer
        inputs, e.g. ``Embedding``); checked for NaN/Inf. For a general objective, any array whose examples
        run along the first axis.
      y: targets ``(n, ...)`` (integer class labels are checked against the model's output classes);
        optional (None) for a general objective, which then gets ``x[idx]`` alone.
      input_shape: what ``model.init`` is given (default ``x.shape[1:]``), e.g. per-part shapes for
        ``nnjax.named``.
      epochs: train until this many epochs are done in total (a ``train_state`` from epoch 3 with
        ``epochs=10`` runs epochs 4-10; ``0`` or an already reached count runs none).
      batch_size: examples per update (clipped to ``n``). The ``n % batch_size`` examples left over in each
        shuffled epoch are skipped that epoch.
      seed: seeds initialization, dropout and data order (unused when ``train_state`` is given or resumed).
      metrics: name -> ``fn(predictions, y)``, averaged over each epoch's batches (loss form only: a
        general objective returns its own in its aux).
      validation_data: ``(x_val, y_val)`` (``x_val`` alone when ``y`` is None), evaluated after each
        epoch with ``train=False`` as ``val_loss``, ``val_<metric or aux>`` (see ``make_evaluate_fn``).
      train_state: continue from this state instead of initializing (its ``step`` sets the first epoch).
      fused: ``"epoch"`` (one compiled program per epoch), ``"all"`` (one program for the whole run;
        callbacks then run after it, once per epoch, with the final state), or ``False`` (Python loop);
        ``True`` means ``"epoch"``. All three give the same numbers.
      callbacks: functions ``(epoch, train_state, logs) -> stop?`` called after each epoch (``logs``: that
        epoch's history entries as floats); one that returns True stops training (every callback still runs
        that epoch). The state passed is donated to the next epoch: copy what you keep.
      progress: show a tqdm progress bar and one line per epoch (process 0 only).
      progress_every: steps between progress updates from inside compiled code (default ~20 per epoch).
      nonfinite: ``None``, ``"skip"`` (reject updates whose loss, gradient or model state holds NaN/Inf;
        ``history["nonfinite"]`` counts them per epoch) or ``"halt"`` (stop at the first one and raise
        ``NonFiniteError`` naming the step and the first non-finite leaf; its ``train_state`` is the last
        finite state). See ``make_train_step``.
      checkpoint_dir: save a checkpoint (``save_checkpoint``) there every ``checkpoint_every`` epochs and
        after the last epoch (or an early stop), with the epoch's logs as metrics. Checkpoints are taken
        at epoch ends only (with ``fused="all"``: once, after the run). A non-finite state is never saved
        (``NonFiniteError``).
      resume: continue from the newest intact checkpoint in ``checkpoint_dir`` when there is one (else start
        afresh). Data order and per-step keys derive from the root key and the epoch/step, so a resumed run
        ends bit-identical to an uninterrupted one (same device layout). Without it, a run replaces the
        checkpoints of earlier runs in ``checkpoint_dir`` as it reaches their steps.
      keep: how many of the newest checkpoints to keep (``None``: all).
      checkpoint_every: save every this many epochs (a positive int; the last epoch is always saved).
      best_metric: also keep the best checkpoint by this key of the logs (e.g. ``"val_loss"``); None: only
        the newest.
      best_mode: ``"min"`` or ``"max"``: whether a lower or a higher ``best_metric`` is better.

    Returns:
      ``FitResult(train_state, history)``; ``history`` maps ``loss``, each metric or aux and ``val_*`` to
      per-epoch floats.

    Raises:
      ValueError: bad data (lengths differ, an empty set, NaN/Inf inputs, labels out of range: see
        ``check_dataset``), ``y`` missing for a loss, ``validation_data`` of the wrong form, a bad ``fused``,
        ``epochs``, ``batch_size``, ``nonfinite``, ``checkpoint_every`` or ``keep``, ``resume`` without
        ``checkpoint_dir``, or a checkpoint to resume saved with another number of steps per epoch.
      TypeError: integer inputs to a model that expects floats (hint: scale them), float labels for an
        integer-label loss, or ``loss`` neither callable nor an ``nnjax.objective``.
      NonFiniteError: ``nonfinite="halt"`` met NaN/Inf, or a non-finite state was to be checkpointed.
      CheckpointError: (``resume``) the newest checkpoint does not fit the model
        (``CheckpointMismatchError``) or is unreadable (``CheckpointCorruptError``).

    Example:
      >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
      >>> model = nnjax.Dense(1)
      >>> result = nnjax.fit(model, nnjax.losses.mse, optax.sgd(0.5), x, 2 * x, epochs=3, batch_size=8, progress=False)
      >>> len(result.history["loss"]), result.history["loss"][-1] < 0.01, int(result.train_state.step)
      (3, True, 12)
      >>> round(float(nnjax.predict(model, result.train_state, np.array([[0.5]], np.float32))[0, 0]), 1)   # 2 * 0.5
      1.0
    """
    if fused is True:
        fused = "epoch"
    if fused not in ("epoch", "all", False):
        raise ValueError(f"fit: argument `fused` expected 'epoch', 'all' or False, given {fused!r}.")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: argument `epochs` expected a non-negative int, given {epochs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: argument `batch_size` expected a positive int, given {batch_size!r}.")
    check_nonfinite_mode("fit", nonfinite)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(
            f"fit: argument `checkpoint_every` expected a positive int (epochs), given {checkpoint_every!r}."
        )
    if resume and checkpoint_dir is None:
        raise ValueError("fit: argument `resume=True` needs `checkpoint_dir`, given None.")
    objective_fn = as_objective("fit", model, loss, metrics)
    input_shape, val = check_fit_data("fit", model, loss, x, y, input_shape, validation_data)
    n = np.shape(x)[0]
    batch_size = min(batch_size, n)
    steps = n // batch_size
    fit_config = {"fit": {"examples": int(n), "batch_size": batch_size, "steps_per_epoch": steps, "seed": seed}}
    if resume and latest_step(checkpoint_dir) is not None:
        like = train_state if train_state is not None else abstract_train_state(model, optimizer, input_shape)
        train_state, info = restore_checkpoint(checkpoint_dir, like)
        saved = (info.get("config") or {}).get("fit", {}).get("steps_per_epoch", steps)
        if saved != steps or int(train_state.step) % steps:
            raise ValueError(
                f"fit: cannot resume exactly from step {int(train_state.step)} in {checkpoint_dir}: it was saved with "
                f"{saved} steps per epoch, this run has {steps} ({n} examples, batch_size {batch_size})."
            )
    if train_state is None:
        train_state = init_train_state(model, optimizer, jax.random.key(seed), input_shape)

    first_step = int(train_state.step)
    first_epoch = first_step // steps
    history: History = {}
    if first_epoch >= epochs:
        return FitResult(train_state, history)

    data = jax.tree.map(jnp.asarray, as_data(x, y))
    bar = _Progress(progress, (epochs - first_epoch) * steps, first_step, progress_every or max(1, steps // 20))
    step = make_train_step(model, loss, optimizer, metrics=metrics, jit=not fused, nonfinite=nonfinite)
    evaluate_fn = make_evaluate_fn(model, loss, metrics)

    def run_epoch(train_state, epoch):
        def body(ts, idx):
            ts, step_metrics = step(ts, take(data, idx))
            bar.in_program(ts, step_metrics)
            return ts, step_metrics

        if nonfinite == "halt":
            # After a halt (the step stops advancing) every later update of the run is a no-op.
            def body(ts, idx, body=body):
                halted = ts.step != first_step + (epoch - first_epoch) * steps + idx[1]
                new_ts, step_metrics = body(ts, idx[0])
                step_metrics = {**step_metrics, "nonfinite": jnp.where(halted, 0, step_metrics["nonfinite"])}
                step_metrics["_applied"] = jnp.logical_not(halted) & (step_metrics["nonfinite"] == 0)
                return optax.tree.where(halted, ts, new_ts), step_metrics

        order = epoch_order(train_state.key, epoch, n, batch_size)
        xs = (order, jnp.arange(steps)) if nonfinite == "halt" else order
        train_state, per_step = jax.lax.scan(body, train_state, xs)
        logs = _epoch_logs(per_step)
        if val is not None:
            logs.update({f"val_{k}": v for k, v in evaluate_fn(train_state, *val).items()})
        return train_state, logs

    def halt_if_nonfinite(train_state, logs) -> None:
        """After a run of epochs with ``nonfinite="halt"``: raise if it halted, naming the step and leaf."""
        if nonfinite != "halt" or not np.any(np.asarray(logs["nonfinite"]) > 0):
            return
        at = int(train_state.step)
        epoch, index = first_epoch + (at - first_step) // steps, (at - first_step) % steps
        idx = epoch_order(train_state.key, epoch, n, batch_size)[index]
        leaf = nonfinite_leaf(objective_fn, train_state, take(data, idx))
        newest = None if checkpoint_dir is None else latest_step(checkpoint_dir)
        saved = (
            ""
            if checkpoint_dir is None
            else f" Checkpoints in {checkpoint_dir}: "
            + ("none yet." if newest is None else f"the newest is step {newest}.")
        )
        raise NonFiniteError(
            f"fit: non-finite loss or gradient at step {at} (epoch {epoch + 1}, batch {index} of {steps}): the first "
            f"non-finite leaf is {leaf}. Training halted; the error's `train_state` is the last finite state "
            f"(step {at}).{saved} Hint: lower the learning rate, check the data, or pass nonfinite='skip'.",
            step=at,
            leaf=leaf,
            train_state=train_state,
        )

    def save(train_state, logs) -> None:
        save_checkpoint(
            checkpoint_dir,
            train_state,
            metrics=logs,
            config=fit_config,
            keep=keep,
            best_metric=best_metric,
            best_mode=best_mode,
            overwrite=True,
        )

    def record(epoch, train_state, logs, seconds) -> bool:
        logs = _ordered(logs)
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
        bar.epoch_end(epoch, epochs, (epoch + 1) * steps, logs, seconds)
        stop = any([bool(cb(epoch, train_state, logs)) for cb in callbacks])  # every callback runs
        if (
            checkpoint_dir is not None
            and fused != "all"
            and (stop or (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs)
        ):
            save(train_state, logs)
        return stop

    order_fn = compile_jit(epoch_order, static_argnums=(2, 3))
    gather_fn = compile_jit(gather_batches)
    eval_jit = compile_jit(evaluate_fn)

    def loop_epoch(train_state, epoch):
        per_step = []
        order = order_fn(train_state.key, epoch, n, batch_size)
        batches = (b for at in range(0, steps, LOOP_CHUNK) for b in gather_fn(data, order[at : at + LOOP_CHUNK]))
        for batch in batches:
            train_state, step_metrics = step(train_state, batch)
            per_step.append(step_metrics)
            if bar.bar is not None and len(per_step) % bar.every == 0:
                bar.report(train_state.step, step_metrics["loss"])
            if nonfinite == "halt" and int(step_metrics["nonfinite"]):
                break
        logs = _epoch_logs(jax.tree.map(lambda *v: jnp.stack(v), *per_step))
        if val is not None:
            logs.update({f"val_{k}": v for k, v in eval_jit(train_state, *val).items()})
        return train_state, logs

    try:
        train_state, last_logs = run_epochs(
            fused,
            train_state,
            first_epoch,
            epochs,
            run_epoch=run_epoch,
            loop_epoch=loop_epoch,
            record=record,
            check=halt_if_nonfinite,
        )
        if fused == "all" and checkpoint_dir is not None:
            save(train_state, _ordered(last_logs))
    finally:
        bar.close()
    return FitResult(train_state, history)
