"""Many models in one program: ensembles and hyperparameter sweeps as ONE vmapped, compiled step.

The train step is a pure function of one ``TrainState``; ``jax.vmap`` over a *stacked* train state (every
leaf with a leading model axis of size K) trains K models at once. Seeds differ through each model's key;
hyperparameters differ through ``optax.inject_hyperparams``, which keeps them as arrays in the optimizer
state, so one compiled program serves every learning rate, weight decay, ...:

    result = fit_many(model, loss, optax.adamw, x, y, seeds=range(8),
                      hyperparams={"learning_rate": [1e-3, 3e-3, 1e-2, 3e-2]}, epochs=5)   # 32 models
    result.history["loss"].shape            # (32, 5): (model, epoch)
    result.configs[result.best_index]       # {"seed": 3, "learning_rate": 0.003}
    best = result.best()                    # the best model's TrainState, unstacked

Each model draws its initialization, dropout keys and data order from its own key exactly as ``nnjax.fit``
does for one seed, so model ``i`` equals the sequential run ``fit(..., seed=seeds[i])`` to float tolerance.
"""

from __future__ import annotations

import inspect
import itertools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.arguments import (
    check_choice,
    check_fused,
    check_int,
    check_model,
    check_optimizer,
    check_train_state,
    check_training_arguments,
)
from nnjax._src.compile import jit as compile_jit
from nnjax._src.compile import setup_program
from nnjax._src.core import Layer
from nnjax._src.engine import Plan, Progress, Recorder, checkpoints_for, owned, resume_from, step_count, train
from nnjax._src.inference import make_evaluate_fn, make_predict_fn
from nnjax._src.objective import Loss, Metric, Objective, as_objective
from nnjax._src.step_stats import StepStats, as_step_stats
from nnjax._src.train import NONFINITE_MODES, Batch, TrainState, build_train_step, init_train_state, make_train_step
from nnjax._src.training_data import as_arrays, check_fit_data, device_data, epoch_order
from nnjax._src.types import Array, DType, PRNGKey, Shape

OptimizerFn = Callable[..., optax.GradientTransformation]  # (**hyperparams) -> optimizer, e.g. optax.adam
ManyHistory = dict[str, np.ndarray]  # name -> (models, epochs)
ManyCallback = Callable[[int, TrainState, dict[str, np.ndarray]], Any]  # (epoch, train_states, logs) -> stop?


# --- stacking -------------------------------------------------------------------------------------------


def stack_train_states(train_states: Sequence[TrainState]) -> TrainState:
    """Stacks K train states of one structure into one with a leading model axis on every leaf.

    The stacked state is what ``make_many_step`` and ``fit_many(train_states=...)`` take; ``unstack`` is the
    inverse.

    Args:
      train_states: K ``TrainState`` s (or any pytrees) with the same structure and leaf shapes, e.g. from
        ``init_train_state`` with different keys or from several ``fit`` runs.

    Returns:
      One ``TrainState`` whose every leaf is ``(K, *leaf_shape)``.

    Raises:
      ValueError: ``train_states`` is empty, or (from ``jax.tree.map``) their structures differ.

    Example:
      >>> model, opt = nnjax.Dense(2), optax.sgd(0.1)
      >>> states = [nnjax.init_train_state(model, opt, jax.random.key(s), (3,)) for s in range(4)]
      >>> stacked = nnjax.ensemble.stack_train_states(states)
      >>> stacked.params["w"].shape, stacked.step.shape, nnjax.ensemble.num_models(stacked)
      ((4, 3, 2), (4,), 4)
    """
    if not train_states:
        raise ValueError("stack_train_states: expected at least one train state, given none.")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *train_states)


def num_models(train_states: Any) -> int:
    """The size K of the leading model axis of a stacked pytree.

    Args:
      train_states: a stacked ``TrainState`` (or any non-empty pytree of arrays with a leading model axis).

    Returns:
      K, a Python int: the leading dimension of the first leaf.

    Example:
      >>> stacked = nnjax.ensemble.init_many(nnjax.Dense(2), optax.sgd(0.1), [0, 1, 2], (3,))
      >>> nnjax.ensemble.num_models(stacked)
      3
    """
    return int(jax.tree.leaves(train_states)[0].shape[0])


def unstack(train_states: Any) -> list[Any]:
    """The inverse of ``stack_train_states``: a list of K pytrees without the model axis.

    Args:
      train_states: a stacked ``TrainState`` (or any pytree with a leading model axis on every leaf).

    Returns:
      A list of K pytrees like ``train_states``, item ``i`` holding every leaf's ``[i]``.

    Example:
      >>> stacked = nnjax.ensemble.init_many(nnjax.Dense(2), optax.sgd(0.1), [0, 1], (3,))
      >>> first, second = nnjax.ensemble.unstack(stacked)
      >>> first.params["w"].shape, int(second.step)
      ((3, 2), 0)
    """
    return [model_at(train_states, i) for i in range(num_models(train_states))]


@jax.jit
def _model_at(train_states: Any, index: Array) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], train_states)


def model_at(train_states: Any, index: int) -> Any:
    """Every leaf's ``[index]``: model ``index`` of stacked train states, taken by one program whatever the
    index (indexed leaf by leaf, each leaf shape was a compilation of its own: 16 for a 3-layer MLP).

    Raises:
      TypeError: ``index`` is not an integer.
      IndexError: ``index`` is not in ``[-K, K)`` for K models (a traced index would be clamped silently).
    """
    k, index = num_models(train_states), operator.index(index)
    if not -k <= index < k:
        raise IndexError(f"model index {index} is out of range for {k} models.")
    return _model_at(train_states, np.int32(index))


# --- optimizers with per-model hyperparameters ----------------------------------------------------------


def _as_keys(seeds_or_keys: Any) -> PRNGKey:
    """A (K,) array of typed keys from int seeds (``jax.random.key(seed)``, as ``fit(seed=...)``) or keys."""
    if isinstance(seeds_or_keys, jax.Array) and jnp.issubdtype(seeds_or_keys.dtype, jax.dtypes.prng_key):
        return seeds_or_keys
    seeds = [int(s) for s in seeds_or_keys]
    return jnp.stack([jax.random.key(s) for s in seeds])


def _hyperparam_arrays(hyperparams: Mapping[str, Any]) -> dict[str, Array]:
    out = {}
    for name, values in hyperparams.items():
        a = np.asarray(values)
        out[name] = jnp.asarray(a, jnp.float32 if np.issubdtype(a.dtype, np.floating) else a.dtype)
    return out


def injected(optimizer_fn: OptimizerFn, hyperparams: Mapping[str, Any]) -> optax.GradientTransformation:
    """``optax.inject_hyperparams(optimizer_fn)(**hyperparams)``: the hyperparameters live in the optimizer state.

    They are kept as arrays in ``opt_state.hyperparams[name]``, so a stacked state can hold one value per
    model and one compiled step serves them all; the values given here are only the initial ones.

    Args:
      optimizer_fn: an optimizer factory taking the hyperparameters as keyword arguments, e.g. ``optax.adam``.
      hyperparams: ``name -> value`` for ONE model, e.g. ``{"learning_rate": 1e-3}``.

    Returns:
      An ``optax.GradientTransformation`` whose state carries the hyperparameters.

    Example:
      >>> opt = nnjax.ensemble.injected(optax.sgd, {"learning_rate": 0.1})
      >>> state = opt.init({"w": jnp.zeros(2)})
      >>> round(float(state.hyperparams["learning_rate"]), 4)
      0.1
    """
    return optax.inject_hyperparams(optimizer_fn)(**hyperparams)


def init_many(
    model: Layer,
    optimizer: optax.GradientTransformation | OptimizerFn,
    keys: Any,
    input_shape: Shape,
    dtype: DType = jnp.float32,
    *,
    hyperparams: Mapping[str, Any] | None = None,
) -> TrainState:
    """K train states stacked along a leading model axis, initialized in one vmapped call.

    Args:
      model: the network.
      optimizer: an Optax optimizer shared by all models, or (with ``hyperparams``) a factory such as
        ``optax.adam`` called as ``optimizer(**hyperparams)`` through ``optax.inject_hyperparams``.
      keys: K int seeds or a ``(K,)`` array of typed keys (``jax.random.split(key, K)``; raw ``key_data`` is
        not accepted); seed ``s`` gives the model ``init_train_state`` gives for ``jax.random.key(s)`` (the
        one ``fit(seed=s)`` trains).
      input_shape: one example's shape (no batch axis).
      dtype: the dtype of the floating parameters.
      hyperparams: name -> K values, one per model (e.g. ``{"learning_rate": [1e-3, 1e-2]}``); floats are
        stored as float32.

    Returns:
      A ``TrainState`` whose every leaf has a leading axis of size K.

    Raises:
      TypeError: a factory without ``hyperparams``, or ``hyperparams`` with an already built optimizer.
      ValueError: a hyperparameter does not have one value per model.

    Example:
      >>> model = nnjax.Dense(1)
      >>> ts = nnjax.ensemble.init_many(model, optax.sgd, [0, 1], (4,), hyperparams={"learning_rate": [0.1, 0.01]})
      >>> ts.params["w"].shape, [round(v, 4) for v in ts.opt_state.hyperparams["learning_rate"].tolist()]
      ((2, 4, 1), [0.1, 0.01])
    """
    check_model("init_many", model)
    check_optimizer("init_many", optimizer, factory_allowed=bool(hyperparams))
    keys = _as_keys(keys)
    if not hyperparams:
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                "init_many: argument `optimizer` is a factory but no `hyperparams` were given. Hint: pass an "
                "optimizer (`optax.adam(1e-3)`) or hyperparams (`hyperparams={'learning_rate': [...]}`)."
            )
        return _init_stacked(lambda k: init_train_state(model, optimizer, k, input_shape, dtype), keys)
    if isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "init_many: `hyperparams` need an optimizer factory such as `optax.adam` (called with them), "
            f"given an already built {type(optimizer).__name__}."
        )
    hp = _hyperparam_arrays(hyperparams)
    sizes = {name: v.shape[:1] for name, v in hp.items()}
    if any(s != keys.shape[:1] for s in sizes.values()):
        raise ValueError(
            f"init_many: expected one value per model ({keys.shape[0]}) for each hyperparameter, given {sizes}."
        )
    return _init_stacked(lambda k, h: init_train_state(model, injected(optimizer, h), k, input_shape, dtype), keys, hp)


def _init_stacked(init_one: Callable[..., TrainState], *per_model: Any) -> TrainState:
    """``jax.vmap(init_one)(*per_model)``: K train states stacked, as ONE compiled program at top level (op by op,
    each random draw, slice and broadcast of K models was a compilation of its own: 15-30 of them); under a
    transformation, traced into the caller's program."""
    return setup_program(jax.vmap(init_one))(*per_model)


def make_many_step(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation,
    *,
    metrics: Mapping[str, Metric] | None = None,
    shared_batch: bool = False,
    jit: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """The train step of K stacked models: ``jax.vmap`` of ``make_train_step``'s pure step.

    Args:
      model: the network (one model's; all K share it).
      loss: ``loss(predictions, targets) -> scalar`` or an ``nnjax.objective``, as ``make_train_step``.
      optimizer: the optimizer of ONE model (for swept hyperparameters: ``injected(factory, one_model_values)``
        or ``ManyResult.optimizer``; the values used are those in each model's ``opt_state``).
      metrics: optional ``name -> fn(predictions, y)`` for the short form.
      shared_batch: all models see the same batch; otherwise every leaf of the batch is ``(K, batch, ...)``,
        one batch per model.
      jit: ``nnjax.jit(..., donate_argnums=0)`` (default: do not reuse the input states) or the plain vmapped
        function.

    Returns:
      ``(train_states, batch) -> (train_states, metrics)`` with metrics of shape ``(K,)``.

    Raises:
      ValueError: ``metrics`` given with a general objective.
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``.

    Example:
      >>> model, opt = nnjax.Dense(1), optax.sgd(0.1)
      >>> ts = nnjax.ensemble.init_many(model, opt, [0, 1, 2], (2,))
      >>> step = nnjax.ensemble.make_many_step(model, nnjax.losses.mse, opt, shared_batch=True)
      >>> ts, metrics = step(ts, (jnp.ones((4, 2)), jnp.zeros((4, 1))))
      >>> metrics["loss"].shape, ts.step.tolist()
      ((3,), [1, 1, 1])
    """
    step = make_train_step(model, loss, optimizer, metrics=metrics, jit=False)
    many = jax.vmap(step, in_axes=(0, None if shared_batch else 0))
    return compile_jit(many, donate_argnums=0) if jit else many


# --- fit_many -------------------------------------------------------------------------------------------


class ManyResult(NamedTuple):
    """What ``fit_many`` returns.

    Attributes:
      train_states: the K final train states, stacked (leading model axis).
      history: name -> array ``(K, epochs)``: ``loss``, each metric, ``val_*``.
      configs: one dict per model, ``{"seed": ..., <hyperparam>: ...}``, in model order.
      best_index: the model with the best final ``select`` value (NaN counts as worst).
      optimizer: the optimizer of one model (hyperparameters injected), to keep training with
        ``make_many_step`` or, after ``best()``, ``make_train_step``/``fit(train_state=...)``.

    ``best(index=None)`` returns model ``index``'s train state (default ``best_index``) without the model axis.

    Example:
      >>> ts = nnjax.ensemble.init_many(nnjax.Dense(1), optax.sgd(0.1), [0, 1], (2,))
      >>> history = {"loss": np.array([[0.5, 0.3], [0.4, 0.1]])}   # (models, epochs)
      >>> result = nnjax.ManyResult(ts, history, [{"seed": 0}, {"seed": 1}], 1, optax.sgd(0.1))
      >>> result.configs[result.best_index], result.best().params["w"].shape, result.best(0).step.shape
      ({'seed': 1}, (2, 1), ())
    """

    train_states: TrainState
    history: ManyHistory
    configs: list[dict[str, Any]]
    best_index: int
    optimizer: optax.GradientTransformation

    def best(self, index: int | None = None) -> TrainState:
        """The train state of model ``index`` (default: ``best_index``), without the model axis; IndexError
        for an index outside ``[-K, K)``."""
        return model_at(self.train_states, self.best_index if index is None else index)

    def aggregate(self, select: str | None = None, mode: str = "min") -> Aggregate:
        """The history per hyperparameter setting over seeds: ``nnjax.ensemble.aggregate(self, ...)``."""
        return aggregate(self, select=select, mode=mode)


class Aggregate(NamedTuple):
    """``fit_many``'s history per hyperparameter setting, over the seeds (``aggregate``'s result).

    Attributes:
      settings: one dict per setting (a config without its ``"seed"``), in order of first appearance.
      models: for each setting, the indices of its models in ``ManyResult`` (one per seed).
      mean: name -> ``(settings, epochs)`` mean over the seeds of each history series.
      std: name -> ``(settings, epochs)`` standard deviation over the seeds (``ddof=1``; 0 for one seed).
      best_index: the setting with the best final mean of ``select`` (NaN counts as worst).
      select: the series that chose it.

    ``best_setting`` is ``settings[best_index]``.

    Example:
      >>> configs = [{"seed": s, "lr": lr} for s in (0, 1) for lr in (0.1, 0.01)]
      >>> history = {"loss": np.array([[0.5, 0.2], [0.6, 0.5], [0.5, 0.4], [0.7, 0.6]])}
      >>> result = nnjax.ManyResult(None, history, configs, 0, None)
      >>> summary = result.aggregate()
      >>> summary.best_setting, summary.mean["loss"][0].tolist(), summary.models
      ({'lr': 0.1}, [0.5, 0.30000000000000004], [[0, 2], [1, 3]])
    """

    settings: list[dict[str, Any]]
    models: list[list[int]]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    best_index: int
    select: str

    @property
    def best_setting(self) -> dict[str, Any]:
        """The best setting's hyperparameters (``settings[best_index]``)."""
        return self.settings[self.best_index]


def aggregate(result: ManyResult, *, select: str | None = None, mode: str = "min") -> Aggregate:
    """Groups ``fit_many``'s models by hyperparameter setting and averages each history series over seeds.

    A sweep's ``best_index`` picks one seed's model; this picks the setting whose mean over its seeds is
    best, and reports the spread, e.g. ``fit_many(..., seeds=range(5), hyperparams={"learning_rate": [...]})``.

    Args:
      result: a ``ManyResult`` (its ``history`` and ``configs`` are read).
      select: the series whose final mean chooses the best setting (default ``"val_loss"`` when present,
        else ``"loss"``).
      mode: ``"min"`` or ``"max"``.

    Returns:
      An ``Aggregate``: ``settings``, ``models``, ``mean``/``std`` per series ``(settings, epochs)``,
      ``best_index`` and ``best_setting``.

    Raises:
      ValueError: ``select`` is not a history series, or ``mode`` is not ``"min"``/``"max"``.

    Example:
      >>> configs = [{"seed": s, "lr": lr} for s in (0, 1, 2) for lr in (0.1, 0.01)]
      >>> final = np.array([0.3, 0.2, 0.5, 0.25, 0.4, 0.3])   # lr 0.1: mean 0.4; lr 0.01: mean 0.25
      >>> result = nnjax.ManyResult(None, {"loss": final[:, None]}, configs, 0, None)
      >>> nnjax.ensemble.aggregate(result).best_setting
      {'lr': 0.01}
    """
    check_choice("aggregate", "mode", mode, ("min", "max"))
    history = {name: np.asarray(values, np.float64) for name, values in result.history.items()}
    if select is None:
        select = "val_loss" if "val_loss" in history else "loss"
    if select not in history:
        raise ValueError(f"aggregate: argument `select` expected one of {sorted(history)}, given {select!r}.")
    settings: list[dict[str, Any]] = []
    models: list[list[int]] = []
    for i, config in enumerate(result.configs):
        setting = {k: v for k, v in config.items() if k != "seed"}
        if setting not in settings:
            settings.append(setting)
            models.append([])
        models[settings.index(setting)].append(i)
    mean = {name: np.stack([values[m].mean(axis=0) for m in models]) for name, values in history.items()}
    std = {
        name: np.stack([values[m].std(axis=0, ddof=1) if len(m) > 1 else np.zeros(values.shape[1:]) for m in models])
        for name, values in history.items()
    }
    final = mean[select].reshape(len(settings), -1)[:, -1]
    worst = np.inf if mode == "min" else -np.inf
    final = np.where(np.isfinite(final), final, worst)
    best = int(np.argmin(final) if mode == "min" else np.argmax(final))
    return Aggregate(settings, models, mean, std, best, select)


def sweep_configs(
    seeds: Iterable[int], hyperparams: Mapping[str, Sequence[Any]] | None, grid: bool = True
) -> list[dict]:
    """The per-model configurations: the grid ``seeds × values × ...`` or the lists zipped.

    Args:
      seeds: the int seeds.
      hyperparams: ``name -> list of values`` (None or ``{}``: seeds only).
      grid: True for every combination (seed outermost, then the hyperparameters in the order given);
        False for the lists zipped (all of one length; a single seed is repeated).

    Returns:
      A list of dicts ``{"seed": s, name: value, ...}``, one per model, in model order (the order of
      ``fit_many``'s models and of ``ManyResult.configs``).

    Raises:
      ValueError: ``grid=False`` with lists of different lengths.

    Example:
      >>> nnjax.ensemble.sweep_configs([0, 1], {"learning_rate": [0.1, 0.01]})
      [{'seed': 0, 'learning_rate': 0.1}, {'seed': 0, 'learning_rate': 0.01},
       {'seed': 1, 'learning_rate': 0.1}, {'seed': 1, 'learning_rate': 0.01}]
      >>> nnjax.ensemble.sweep_configs([0], {"learning_rate": [0.1, 0.01], "b1": [0.9, 0.8]}, grid=False)
      [{'seed': 0, 'learning_rate': 0.1, 'b1': 0.9}, {'seed': 0, 'learning_rate': 0.01, 'b1': 0.8}]
    """
    if isinstance(seeds, int) or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise TypeError(f"fit_many: argument `seeds` expected a list of int seeds, e.g. [0, 1, 2], given {seeds!r}.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("fit_many: argument `seeds` expected at least one seed, given none. Hint: `seeds=[0]`.")
    hyperparams = {k: list(np.asarray(v).reshape(-1).tolist()) for k, v in (hyperparams or {}).items()}
    empty = [name for name, values in hyperparams.items() if not values]
    if empty:
        raise ValueError(
            f"fit_many: argument `hyperparams` expected at least one value per name, given none for {empty}."
        )
    names = list(hyperparams)
    if grid:
        return [
            dict(zip(["seed", *names], combo, strict=True)) for combo in itertools.product(seeds, *hyperparams.values())
        ]
    lengths = {name: len(v) for name, v in hyperparams.items()} | ({"seeds": len(seeds)} if len(seeds) > 1 else {})
    if len(set(lengths.values())) > 1:
        given = ", ".join(f"`{name}` {length}" for name, length in lengths.items())
        raise ValueError(
            f"fit_many: with grid=False every list must have one length (the lists are zipped), given {given}. "
            f"Hint: grid=True trains every combination."
        )
    lengths = set(lengths.values())
    k = lengths.pop() if lengths else len(seeds)
    seeds = seeds * k if len(seeds) == 1 else seeds
    return [{"seed": seeds[i], **{n: hyperparams[n][i] for n in names}} for i in range(k)]


def _best_index(history: ManyHistory, select: str, mode: str) -> int:
    if select not in history:
        raise ValueError(f"fit_many: argument `select` expected one of {sorted(history)}, given {select!r}.")
    final = np.asarray(history[select][:, -1], np.float64)
    worst = np.inf if mode == "min" else -np.inf
    final = np.where(np.isfinite(final), final, worst)
    return int(np.argmin(final) if mode == "min" else np.argmax(final))


def fit_many(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation | OptimizerFn,
    x: Any,
    y: Any = None,
    *,
    input_shape: Any = None,
    seeds: Iterable[int] = (0,),
    hyperparams: Mapping[str, Sequence[Any]] | None = None,
    grid: bool = True,
    epochs: int = 10,
    batch_size: int = 32,
    metrics: Mapping[str, Metric] | None = None,
    validation_data: tuple[Any, Any] | None = None,
    train_states: TrainState | None = None,
    fused: bool | str = "epoch",
    select: str | None = None,
    mode: str = "min",
    callbacks: Sequence[ManyCallback] = (),
    progress: bool = True,
    progress_every: int | None = None,
    nonfinite: str | None = None,
    step_stats: bool | StepStats | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    keep: int | None = 3,
    checkpoint_every: int = 1,
) -> ManyResult:
    """Trains K models at once, one compiled vmapped program per epoch (or per run); like K ``fit`` calls.

    Model ``i`` with config ``{"seed": s, **h}`` is what ``fit(model, loss, optimizer(**h), x, y, seed=s)``
    trains (same initialization, dropout keys and data order), up to float rounding.

    Args:
      model: the network, shared by all K models.
      loss: ``loss(predictions, y)`` or a general ``nnjax.objective`` (its aux joins the history), as ``fit``.
      optimizer: an Optax optimizer shared by all models, or a factory (``optax.adam``, or your own
        ``lambda learning_rate, weight_decay: optax.chain(...)``) called with each model's ``hyperparams``;
        they are injected with ``optax.inject_hyperparams`` so one program serves every value.
      x: inputs ``(n, *input_shape)``, shared by all models (each draws its own order), as ``fit``.
      y: targets ``(n, ...)``; optional for a general objective, as ``fit``.
      input_shape: what ``model.init`` is given (default ``x.shape[1:]``).
      seeds: the seeds (initialization, dropout, data order).
      hyperparams: name -> list of values, e.g. ``{"learning_rate": [1e-3, 1e-2]}``.
      grid: models are the product ``seeds × hyperparams`` (default) or the lists zipped (``False``); see
        ``sweep_configs`` for the order.
      epochs: train until this many epochs are done in total, as ``fit``.
      batch_size: examples per update (clipped to ``n``), as ``fit``.
      metrics: name -> ``fn(predictions, y)`` (loss form only), averaged over each epoch's batches.
      validation_data: ``(x_val, y_val)`` (``x_val`` alone when ``y`` is None), evaluated for every model
        after each epoch as ``val_loss``, ``val_<metric or aux>``.
      train_states: continue from these stacked states (from ``ManyResult.train_states``); give the same
        ``seeds``, ``hyperparams`` and ``grid`` as before (they must describe as many models).
      fused: ``"epoch"`` (default; one program per epoch), ``"all"`` (one program for the run) or ``False``
        (a Python loop over the vmapped, jitted step).
      select: the history entry whose final value picks ``best_index`` (default ``"val_loss"`` with
        validation data, else ``"loss"``).
      mode: ``"min"`` (lower ``select`` is better) or ``"max"``.
      callbacks: ``(epoch, train_states, logs) -> stop?`` after each epoch; ``logs`` values are ``(K,)`` arrays.
        One that returns True stops training; every callback still runs that epoch.
      progress: show a tqdm bar (steps of all models together) and one line per epoch with the models' means.
      progress_every: at most this many steps between progress updates (default: about 4 a second).
      nonfinite: ``None``, ``"skip"`` (each model rejects its own non-finite updates; ``history["nonfinite"]``
        counts them) or ``"halt"`` (a model that meets NaN/Inf stays at its last finite state, its later
        logs NaN, and a ``RuntimeWarning`` names it; the others train on), as ``fit``.
      step_stats: per-step series per model (``history["step/grad_norm"]``: ``(K, steps)``), as ``fit``.
      checkpoint_dir: save the stacked train states there, as ``fit`` (every ``checkpoint_every`` epochs and
        after the last; with ``fused="all"`` once, after the run); ``keep`` as ``fit``.
      resume: continue from the newest intact checkpoint in ``checkpoint_dir``, exactly (as ``fit``).
      keep: how many of the newest checkpoints to keep (``None``: all).
      checkpoint_every: save every this many epochs (the last epoch is always saved).

    Returns:
      ``ManyResult(train_states, history, configs, best_index, optimizer)``; ``history[name]`` is ``(K, epochs)``
      (``(K, steps)`` for the ``step/*`` series).

    Raises:
      ValueError: bad data or arguments (as ``fit``: ``fused``, ``epochs``, ``batch_size``, ``validation_data``,
        ...), a bad ``mode``, ``select`` not in the history, zipped lists of different lengths, or
        ``train_states`` holding another number of models than the configs.
      TypeError: ``hyperparams`` with an already built optimizer, bad inputs or labels (as ``fit``), or a
        ``loss`` neither callable nor an ``nnjax.objective``.

    Example:
      >>> x = np.linspace(-1, 1, 16, dtype=np.float32)[:, None]
      >>> r = nnjax.fit_many(nnjax.Dense(1), nnjax.losses.mse, optax.sgd, x, 2 * x, seeds=[0, 1],
      ...                    hyperparams={"learning_rate": [0.1, 0.01]}, epochs=2, batch_size=8, progress=False)
      >>> r.history["loss"].shape                        # (2 seeds x 2 learning rates, 2 epochs)
      (4, 2)
      >>> r.configs[1], r.configs[r.best_index]["learning_rate"]
      ({'seed': 0, 'learning_rate': 0.01}, 0.1)
    """
    check_training_arguments("fit_many", model, optimizer, callbacks, factory_allowed=True)
    x, y = as_arrays(x), as_arrays(y)
    fused = check_fused("fit_many", fused)
    check_choice("fit_many", "mode", mode, ("min", "max"))
    check_int("fit_many", "epochs", epochs)
    check_int("fit_many", "batch_size", batch_size, minimum=1)
    check_choice("fit_many", "nonfinite", nonfinite, NONFINITE_MODES)
    objective_fn = as_objective("fit_many", model, loss, metrics)
    input_shape, val = check_fit_data("fit_many", model, loss, x, y, input_shape, validation_data)
    configs = sweep_configs(seeds, hyperparams, grid)
    opt, init_optimizer = sweep_optimizer(optimizer, configs, list(hyperparams or {}))
    n = np.shape(x)[0]
    batch_size = min(batch_size, n)
    steps = n // batch_size
    config = {"fit_many": {"examples": int(n), "batch_size": batch_size, "steps_per_epoch": steps, "configs": configs}}
    checkpoints = checkpoints_for("fit_many", checkpoint_dir, resume=resume, every=checkpoint_every, keep=keep,
                                  config=config)

    def init(like: bool = False) -> TrainState:
        hp = {name: [c[name] for c in configs] for name in hyperparams or {}}
        fn = lambda: init_many(model, init_optimizer, [c["seed"] for c in configs], input_shape, hyperparams=hp)  # noqa: E731
        return jax.eval_shape(fn) if like else fn()

    restored = resume_from("fit_many", checkpoints, init(like=True), steps) if resume else None
    if restored is not None:
        train_states = restored[0]
    elif train_states is None:
        train_states = init()
    else:
        train_states = owned(train_states)
    if num_models(train_states) != len(configs):
        k = num_models(train_states)
        raise ValueError(f"fit_many: `train_states` hold {k} models, the configs {len(configs)}.")
    first_epoch = step_count(train_states) // steps
    evaluate_fn = jax.vmap(make_evaluate_fn(model, loss, metrics), in_axes=(0, None, None))
    plan = Plan(
        build_train_step(objective_fn, opt, nonfinite=nonfinite, step_stats=as_step_stats("fit_many", step_stats)),
        many=True,
        halt=nonfinite == "halt",
        data=device_data(x, y),
        order=lambda ts, epoch: jnp.swapaxes(  # (steps, K, batch); lax.map, as vmap would run both cond branches
            jax.lax.map(lambda key: epoch_order(key, epoch, n, batch_size), ts.key), 0, 1),
        steps=steps,
        validate=None if val is None else evaluate_fn,
        validation=() if val is None else val,
    )
    total = max(0, epochs - first_epoch) * steps
    recorder = Recorder("fit_many", epochs=epochs, many=True, callbacks=callbacks, checkpoints=checkpoints,
                        progress=Progress(progress and total > 0, total),
                        objective=objective_fn, progress_every=progress_every, nonfinite=nonfinite)
    train_states = train(plan, train_states, first_epoch, epochs, mode=fused, recorder=recorder)
    history = {name: np.stack(values, axis=1) for name, values in recorder.history.items()}  # (K, epochs or steps)
    best = _best_index(history, select or ("val_loss" if val is not None else "loss"), mode) if history else 0
    return ManyResult(train_states, history, configs, best, opt)


def sweep_optimizer(
    optimizer: optax.GradientTransformation | OptimizerFn, configs: list[dict[str, Any]], names: list[str]
) -> tuple[optax.GradientTransformation, Any]:
    """``fit_many``'s optimizer: ``(one model's optimizer, what init_many is given)``.

    With swept hyperparameters the factory is injected (``optax.inject_hyperparams``): each model's values
    live in its ``opt_state``, and one model's optimizer serves all.
    """
    if names:
        if isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                "fit_many: `hyperparams` need an optimizer factory such as `optax.adam`, given an already built "
                "optimizer. Hint: fit_many(model, loss, optax.adam, x, y, hyperparams={'learning_rate': [...]})."
            )
        check_hyperparameter_names(optimizer, names)
        return injected(optimizer, {name: configs[0][name] for name in names}), optimizer
    opt = optimizer if isinstance(optimizer, optax.GradientTransformation) else optimizer()
    return opt, opt


def check_hyperparameter_names(factory: OptimizerFn, names: list[str]) -> None:
    """Raises TypeError when ``names`` are not arguments of ``factory`` or leave a required one out."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [name for name in names if name not in parameters]
    required = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty and p.kind is not
                inspect.Parameter.VAR_POSITIONAL and n not in names]
    if unknown or required:
        factory_name = getattr(factory, "__name__", repr(factory))
        problem = f"unknown {unknown}" if unknown else f"no values for the required {required}"
        raise TypeError(
            f"fit_many: argument `hyperparams` expected names of arguments of the optimizer factory {factory_name} "
            f"({list(parameters)}), given {problem}."
        )


def ensemble_predict(model: Layer, train_states: TrainState, x: Any, *, batch_size: int = 1024) -> Array:
    """Every model's predictions for ``x``: ``(K, n, *output_shape)``; average them for an ensemble.

    Each model runs in inference mode (``train=False``), as ``nnjax.predict``.

    Args:
      model: the network the K stacked states were trained for.
      train_states: a stacked ``TrainState`` (e.g. ``ManyResult.train_states``).
      x: ``(n, *input_shape)`` inputs, shared by all models.
      batch_size: examples computed together (keyword-only).

    Returns:
      A device array ``(K, n, *output_shape)``; ``.mean(axis=0)`` is the ensemble's prediction.

    Example:
      >>> model = nnjax.Dense(2)
      >>> ts = nnjax.ensemble.init_many(model, optax.sgd(0.1), [0, 1, 2], (3,))
      >>> predictions = nnjax.ensemble.ensemble_predict(model, ts, np.ones((5, 3), np.float32))
      >>> predictions.shape, predictions.mean(axis=0).shape
      ((3, 5, 2), (5, 2))
    """
    check_model("ensemble_predict", model)
    check_train_state("ensemble_predict", train_states, required=True)
    predict_fn = jax.vmap(make_predict_fn(model, batch_size), in_axes=(0, None))
    return compile_jit(predict_fn)(train_states, jnp.asarray(x))


__all__ = [
    "Aggregate",
    "ManyResult",
    "aggregate",
    "ensemble_predict",
    "fit_many",
    "init_many",
    "injected",
    "make_many_step",
    "num_models",
    "stack_train_states",
    "sweep_configs",
    "unstack",
]
