"""``fit``: training on in-memory arrays, a thin door onto the epoch engine (``nnjax._src.engine``).

Each epoch visits the examples in an order drawn from the run's key and the epoch number, in
mini-batches of ``batch_size`` (``batch_size = len(x)`` is batch gradient descent, ``1`` is stochastic
gradient descent). The last ``len(x) % batch_size`` examples of each shuffled epoch are left out so
every batch has one shape (one compilation). Three execution modes, same numbers:

- ``fused="epoch"`` (default): each epoch is compiled, its steps a ``lax.fori_loop`` with the data on the
  device, run in chunks between which the progress bar advances.
- ``fused="all"``: the whole run, validation included, is one compiled program.
- ``fused=False``: a Python loop calling the jitted step once per batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from nnjax._src.arguments import check_choice, check_fused, check_int, check_training_arguments
from nnjax._src.checkpoint import abstract_train_state
from nnjax._src.core import Layer
from nnjax._src.engine import Plan, Progress, Recorder, checkpoints_for, owned, resume_from, train
from nnjax._src.inference import make_evaluate_fn
from nnjax._src.objective import Loss, Metric, Objective, as_objective
from nnjax._src.step_stats import StepStats, as_step_stats
from nnjax._src.train import NONFINITE_MODES, TrainState, build_train_step, init_train_state, seeded_train_state
from nnjax._src.training_data import as_arrays, check_fit_data, device_data, epoch_order

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
    params: Any = None,
    state: Any = None,
    fused: bool | str = "epoch",
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    progress_every: int | None = None,
    nonfinite: str | None = None,
    step_stats: bool | StepStats | None = None,
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
      train_state: continue from this state instead of initializing (its ``step`` sets the first epoch). It
        is copied, not donated: ``train_state`` stays usable (fine-tune twice from one pretrained state).
      params: start from these parameters (a pytree like ``model.init``'s) with a fresh optimizer state,
        e.g. pretrained weights; ``state``: the model state to start from (default: ``model.init``'s).
        Both are copied. Not with ``train_state``.
      state: the model state (BatchNorm statistics) to start from with ``params``.
      fused: ``"epoch"`` (one compiled program per epoch), ``"all"`` (one program for the whole run;
        callbacks then run after it, once per epoch, with the final state), or ``False`` (Python loop);
        ``True`` means ``"epoch"``. All three give the same numbers.
      callbacks: functions ``(epoch, train_state, logs) -> stop?`` called after each epoch (``logs``: that
        epoch's history entries as floats); one that returns True stops training (every callback still runs
        that epoch). The state passed is donated to the next epoch: copy what you keep.
      progress: show a tqdm progress bar and one line per epoch (process 0 only). With ``fused="epoch"`` the
        bar advances between compiled chunks of steps, about 4 times a second (compiled programs hold no
        host callback); with ``"all"``, once the run is done.
      progress_every: at most this many steps between progress updates (default: by time, as above, with
        ``fused="epoch"``; every 32 steps with ``fused=False``).
      nonfinite: ``None``, ``"skip"`` (reject updates whose loss, gradient or model state holds NaN/Inf;
        ``history["nonfinite"]`` counts them per epoch) or ``"halt"`` (stop at the first one and raise
        ``NonFiniteError`` naming the step and the first non-finite leaf; its ``train_state`` is the last
        finite state). See ``make_train_step``.
      step_stats: record per-step series in the history, computed inside the compiled step (no host
        callback, so fused runs keep them): ``True`` or an ``nnjax.StepStats`` adds ``history["step/loss"]``,
        ``"step/grad_norm"``, ``"step/update_norm"``, ``"step/learning_rate"`` (when the optimizer exposes
        it) and, with ``StepStats(layers=True)``, per-layer gradient and parameter norms; one float per
        update. ``nnjax.plots.plot_history`` draws them.
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
      per-epoch floats (and the ``step/*`` series, with ``step_stats``, to per-step floats).

    Raises:
      ValueError: bad data (lengths differ, an empty set, NaN/Inf inputs, labels out of range: see
        ``check_dataset``), ``y`` missing for a loss, ``validation_data`` of the wrong form, a bad ``fused``,
        ``epochs``, ``batch_size``, ``nonfinite``, ``checkpoint_every`` or ``keep``, ``resume`` without
        ``checkpoint_dir``, ``params`` with ``train_state``, or a checkpoint to resume saved with another
        number of steps per epoch.
      TypeError: integer inputs to a model that expects floats (hint: scale them), float labels for an
        integer-label loss, or ``loss`` neither callable nor an ``nnjax.objective``.
      NonFiniteError: ``nonfinite="halt"`` met NaN/Inf, or a non-finite state was to be checkpointed.
      CheckpointError: ``checkpoint_dir`` cannot be written (raised before training), or (``resume``) the
        newest checkpoint does not fit the model (``CheckpointMismatchError``) or is unreadable
        (``CheckpointCorruptError``).

    Example:
      >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
      >>> model = nnjax.Dense(1)
      >>> result = nnjax.fit(model, nnjax.losses.mse, optax.sgd(0.5), x, 2 * x, epochs=3, batch_size=8, progress=False)
      >>> len(result.history["loss"]), result.history["loss"][-1] < 0.01, int(result.train_state.step)
      (3, True, 12)
      >>> round(float(nnjax.predict(model, result.train_state, np.array([[0.5]], np.float32))[0, 0]), 1)   # 2 * 0.5
      1.0
    """
    check_training_arguments("fit", model, optimizer, callbacks, train_state)
    x, y = as_arrays(x), as_arrays(y)
    fused = check_fused("fit", fused)
    check_int("fit", "epochs", epochs)
    check_int("fit", "batch_size", batch_size, minimum=1)
    check_choice("fit", "nonfinite", nonfinite, NONFINITE_MODES)
    objective_fn = as_objective("fit", model, loss, metrics)
    input_shape, val = check_fit_data("fit", model, loss, x, y, input_shape, validation_data)
    n = np.shape(x)[0]
    batch_size = min(batch_size, n)
    steps = n // batch_size
    config = {"fit": {"examples": int(n), "batch_size": batch_size, "steps_per_epoch": steps, "seed": seed}}
    checkpoints = checkpoints_for("fit", checkpoint_dir, resume=resume, every=checkpoint_every, keep=keep,
                                  best_metric=best_metric, best_mode=best_mode, config=config)
    train_state = starting_state(model, optimizer, seed, input_shape, train_state, params, state)
    if resume:
        like = abstract_train_state(model, optimizer, input_shape) if train_state is None else train_state
        restored = resume_from("fit", checkpoints, like, steps)
        train_state = restored[0] if restored is not None else train_state
    if train_state is None:
        train_state = seeded_train_state(model, optimizer, seed, input_shape)
    first_step = int(train_state.step)
    plan = fit_plan(model, loss, metrics, optimizer, nonfinite, as_step_stats("fit", step_stats), n, batch_size,
                    validated=val is not None)
    plan = plan._replace(data=device_data(x, y), validation=() if val is None else val)
    bar = Progress(progress and first_step // steps < epochs, (epochs - first_step // steps) * steps)
    recorder = Recorder("fit", epochs=epochs, many=False, progress=bar, callbacks=callbacks, checkpoints=checkpoints,
                        objective=objective_fn, progress_every=progress_every, nonfinite=nonfinite)
    train_state = train(plan, train_state, first_step // steps, epochs, mode=fused, recorder=recorder)
    return FitResult(train_state, recorder.history)


def fit_plan(
    model: Layer, loss: Loss | Objective, metrics: Mapping[str, Metric] | None, optimizer: optax.GradientTransformation,
    nonfinite: str | None, step_stats: StepStats | None, n: int, batch_size: int, *, validated: bool,
) -> Plan:
    """``fit``'s ``Plan`` without its data: the same object for the same arguments (kept for the last 32),
    so a second ``fit`` of a model in a process runs the programs the first one compiled (made afresh, its
    step and order were traced, lowered and compiled again: 0.85 s for the digits MLP). Arguments that
    cannot be hashed (a metric dict's values, say) make a new plan each time."""
    key = (model, loss, None if metrics is None else tuple(metrics.items()), optimizer, nonfinite, step_stats, n,
           batch_size, validated)
    try:
        hash(key)
    except TypeError:
        return _fit_plan.__wrapped__(*key)
    return _fit_plan(*key)


@functools.lru_cache(maxsize=32)
def _fit_plan(
    model: Layer, loss: Loss | Objective, metric_items: tuple[tuple[str, Metric], ...] | None,
    optimizer: optax.GradientTransformation, nonfinite: str | None, step_stats: StepStats | None, n: int,
    batch_size: int, validated: bool,
) -> Plan:
    metrics = None if metric_items is None else dict(metric_items)
    return Plan(
        build_train_step(as_objective("fit", model, loss, metrics), optimizer, nonfinite=nonfinite,
                         step_stats=step_stats),
        halt=nonfinite == "halt",
        order=lambda ts, epoch: epoch_order(ts.key, epoch, n, batch_size),
        steps=n // batch_size,
        validate=make_evaluate_fn(model, loss, metrics) if validated else None,
    )


def starting_state(
    model: Layer, optimizer: optax.GradientTransformation, seed: int, input_shape: Any,
    train_state: TrainState | None, params: Any, state: Any,
) -> TrainState | None:
    """Where ``fit`` starts when the caller says: a copy of ``train_state`` (``owned``), or ``params``/``state``
    with a fresh optimizer state; None when the caller gave neither."""
    if train_state is not None:
        if params is not None or state is not None:
            raise ValueError("fit: arguments `params`/`state` start a new run; `train_state` continues one: give one.")
        return owned(train_state)
    if params is None and state is not None:
        raise ValueError("fit: argument `state` needs `params`, given params=None.")
    if params is None:
        return None
    key = jax.random.key(seed)
    return init_train_state(model, optimizer, key, input_shape, params=params, state=state)
