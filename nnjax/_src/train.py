"""The training state and the pure train and eval steps.

    step(train_state, batch) -> (train_state, metrics)     # batch = (x, y), or what a general objective takes

One step minimizes an objective (``nnjax.objective``): a ``loss(predictions, targets)`` is the short form
of one. The step is a pure function: ``jax.jit`` compiles it once, ``jax.vmap`` over stacked train states
trains many models in one program, and ``jax.lax.scan`` fuses many steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.arguments import check_model, check_optimizer
from nnjax._src.compile import jit as compile_jit
from nnjax._src.compile import setup_program
from nnjax._src.core import Layer
from nnjax._src.errors import first_nonfinite
from nnjax._src.freeze import frozen_predicate, stop_frozen_gradients
from nnjax._src.layer_checks import check_input_shape, check_key, check_param_dtype
from nnjax._src.objective import Aux, Loss, Metric, Objective, as_objective, value_and_grad
from nnjax._src.step_stats import StepStats, step_statistics
from nnjax._src.types import Array, DType, Params, PRNGKey, Shape, State

Batch = Any  # (inputs, targets) for a loss; any pytree of arrays with a leading batch axis for an objective


class TrainState(NamedTuple):
    """Everything a training run carries, as one pytree.

    Attributes:
      step: int32 scalar array, number of batches trained on so far (updates applied, or skipped by the
        non-finite guard).
      params: the model's parameters.
      state: the model's state (e.g. BatchNorm statistics); ``{}`` when stateless.
      opt_state: the Optax optimizer's state.
      key: the run's root key, kept as raw ``jax.random.key_data`` (a uint32 array: a typed key costs
        extra Python work at every jitted call); each update's key and each epoch's data order are
        derived from it and the step (``stream_key``), so a run is reproducible and resumable from any step.

    A NamedTuple, so it is a pytree: ``jax.jit``, ``jax.vmap`` (a stacked state trains many models, see
    ``nnjax.ensemble``) and checkpoints take it whole. Build it with ``init_train_state``.

    Example:
      >>> ts = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> int(ts.step), jax.tree.map(jnp.shape, ts.params), ts.state
      (0, {'b': (2,), 'w': (3, 2)}, {})
      >>> int(ts.replace(step=jnp.asarray(5, jnp.int32)).step)
      5
    """

    step: Array
    params: Params
    state: State
    opt_state: optax.OptState
    key: PRNGKey

    def replace(self, **changes: Any) -> TrainState:
        """A copy with the given fields replaced: ``train_state.replace(params=new_params)``."""
        return self._replace(**changes)


def init_train_state(
    model: Layer,
    optimizer: optax.GradientTransformation,
    key: PRNGKey,
    input_shape: Shape,
    dtype: DType = jnp.float32,
    *,
    params: Params | None = None,
    state: State | None = None,
) -> TrainState:
    """Initializes the model and the optimizer: the ``TrainState`` at step 0.

    ``key`` is split in two: one half initializes the parameters, the other becomes the run's root key
    (``TrainState.key``), from which every update's key and every epoch's data order are derived. Pure in
    ``key``: ``jax.vmap(lambda k: init_train_state(model, opt, k, shape))(keys)`` builds an ensemble.

    Args:
      model: the network (a ``Layer``).
      optimizer: any ``optax.GradientTransformation``; its state is ``optimizer.init(params)``.
      key: a typed key (``jax.random.key(seed)``); ``fit(seed=s)`` uses ``jax.random.key(s)``.
      input_shape: one example's shape, without the batch axis (e.g. ``(784,)``), or what ``model.init``
        takes (per-part shapes for ``nnjax.named``).
      dtype: the dtype of the floating parameters.
      params: start from these parameters (e.g. pretrained ones) instead of initializing them; they must
        have the structure, shapes and dtypes ``model.init`` gives.
      state: the model state to start from (default: ``model.init``'s).

    Returns:
      ``TrainState(step=0, params, state, opt_state, key)`` with ``key`` stored as raw key data (uint32).

    Raises:
      LayerError: ``input_shape`` does not suit the model (raised by ``model.init``).
      ValueError: ``params`` or ``state`` does not match what ``model.init`` gives (every difference named).

    Example:
      >>> model = nnjax.serial(nnjax.Dense(4), nnjax.Relu(), nnjax.Dense(1))
      >>> ts = nnjax.init_train_state(model, optax.adam(1e-3), jax.random.key(0), (3,))
      >>> int(ts.step), jax.tree.map(jnp.shape, ts.params)["dense_0"]
      (0, {'b': (4,), 'w': (3, 4)})
    """
    check_model("init_train_state", model)
    check_optimizer("init_train_state", optimizer)
    check_key("init_train_state", key)
    check_input_shape("init_train_state", input_shape)
    check_param_dtype("init_train_state", dtype)
    if params is not None or state is not None:
        expected_params, expected_state = jax.eval_shape(lambda k: model.init(k, input_shape, dtype), key)
        check_like("params", params, expected_params)
        check_like("state", state, expected_state)
    return initialize(model, optimizer, key, input_shape, dtype, params, state)


def seeded_train_state(
    model: Layer, optimizer: optax.GradientTransformation, seed: int, input_shape: Shape
) -> TrainState:
    """``init_train_state(model, optimizer, jax.random.key(seed), input_shape)``, the same state, with the key
    made inside the compiled initialization (two small programs fewer to compile or load: ``fit``)."""
    if not isinstance(seed, (int, np.integer)) or not -(2**31) <= seed < 2**31:
        return init_train_state(model, optimizer, jax.random.key(seed), input_shape)
    check_model("init_train_state", model)
    check_optimizer("init_train_state", optimizer)
    check_input_shape("init_train_state", input_shape)
    return initialize(model, optimizer, np.int32(seed), input_shape, jnp.float32)


def initialize(
    model: Layer, optimizer: optax.GradientTransformation, key: PRNGKey | Array, input_shape: Shape, dtype: DType,
    params: Params | None = None, state: State | None = None,
) -> TrainState:
    """Runs ``init_program`` for these arguments (``key``: a key, or an int32 seed); the arguments are checked."""
    shape_leaves, shape_def = jax.tree.flatten(input_shape)
    return init_program(model, optimizer, shape_def, tuple(shape_leaves), jnp.dtype(dtype))(key, params, state)


@functools.lru_cache(maxsize=64)
def init_program(
    model: Layer, optimizer: optax.GradientTransformation, shape_def: Any, shape_leaves: tuple, dtype: Any
) -> Callable[[PRNGKey, Params | None, State | None], TrainState]:
    """``init_train_state``'s work as ONE compiled program, whatever the model's depth (op by op, each
    parameter shape's random draw was a compilation of its own). Given ``params``/``state`` are copied
    into new arrays (a jitted step donates its train state: never the caller's arrays). Cached per model,
    optimizer, input shape and dtype. Under eager ``jax.vmap`` the program is compiled batched, still as
    one (op by op, 8 vmapped MLPs compiled for ~8 s); inside a staging transformation (``jax.jit``,
    ``eval_shape``, ``scan``) it is traced as part of the caller's program instead."""
    input_shape = jax.tree.unflatten(shape_def, shape_leaves)

    def build(key: PRNGKey | Array, params: Params | None, state: State | None) -> TrainState:
        if key.dtype == jnp.int32 and key.ndim == 0:  # a seed (seeded_train_state)
            key = jax.random.key(key)
        init_key, train_key = jax.random.split(key)
        fresh = model.init(init_key, input_shape, dtype) if params is None or state is None else (None, None)
        params = fresh[0] if params is None else jax.tree.map(jnp.copy, params)
        state = fresh[1] if state is None else jax.tree.map(jnp.copy, state)
        if jnp.issubdtype(train_key.dtype, jax.dtypes.prng_key):
            train_key = jax.random.key_data(train_key)  # raw data: cheaper to pass through jit every step
        return TrainState(jnp.zeros((), jnp.int32), params, state, optimizer.init(params), train_key)

    return setup_program(build)


def check_like(name: str, given: Any, expected: Any) -> None:
    """Checks that ``given`` (None: nothing given) has ``expected``'s paths, shapes and dtypes; ValueError
    naming every difference otherwise."""
    if given is None:
        return
    leaves = jax.tree_util.tree_leaves_with_path
    have = {jax.tree_util.keystr(p): (jnp.shape(v), jnp.result_type(v)) for p, v in leaves(given)}
    want = {jax.tree_util.keystr(p): (v.shape, v.dtype) for p, v in leaves(expected)}
    problems = [f"{path}: missing" for path in want if path not in have]
    problems += [f"{path}: not in the model" for path in have if path not in want]
    problems += [
        f"{path}: expected {want[path][0]} {want[path][1]}, given {have[path][0]} {have[path][1]}"
        for path in want
        if path in have and have[path] != want[path]
    ]
    if problems:
        raise ValueError(f"init_train_state: argument `{name}` does not match the model's: {'; '.join(problems)}.")


STEP_STREAM, DATA_STREAM, EVAL_STREAM = 0, 1, 2


def stream_key(key: PRNGKey, stream: int, index: Array | int) -> PRNGKey:
    """Key number ``index`` of an independent stream (updates, data order) derived from a run's root key.

    ``key`` is a typed key or its raw ``jax.random.key_data`` (as ``TrainState.key`` holds it); the
    result is a typed key.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return jax.random.fold_in(jax.random.fold_in(key, stream), index)


def step_key(train_state: TrainState) -> PRNGKey:
    """The key for the update at ``train_state.step`` (dropout and other training randomness).

    ``fold_in`` of the run's root key with the update stream and the step: a different key for every step,
    the same one whenever that step is run again (a resumed run draws the same dropout masks).

    Args:
      train_state: a ``TrainState`` (its ``key`` and ``step`` are read).

    Returns:
      A typed key (scalar), the one the train step passes to the objective as ``key``.

    Example:
      >>> ts = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> first, second = nnjax.step_key(ts), nnjax.step_key(ts.replace(step=ts.step + 1))
      >>> bool(jnp.array_equal(jax.random.key_data(first), jax.random.key_data(second)))
      False
      >>> bool(jnp.array_equal(jax.random.key_data(first), jax.random.key_data(nnjax.step_key(ts))))
      True
    """
    return stream_key(train_state.key, STEP_STREAM, train_state.step)


def eval_key(train_state: TrainState) -> PRNGKey:
    """The key a general objective gets in evaluation: fixed for the run.

    Every evaluation of a stochastic objective (a VAE's sampled latents) draws the same noise, so epochs
    compare fairly. It is independent of ``step_key``'s keys and does not change with ``train_state.step``.

    Args:
      train_state: a ``TrainState`` (only its root ``key`` is read).

    Returns:
      A typed key (scalar), the one ``make_eval_step``, ``evaluate`` and ``fit``'s validation use.

    Example:
      >>> ts = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> later = ts.replace(step=ts.step + 100)
      >>> bool(jnp.array_equal(jax.random.key_data(nnjax.eval_key(ts)), jax.random.key_data(nnjax.eval_key(later))))
      True
    """
    return stream_key(train_state.key, EVAL_STREAM, 0)


NONFINITE_MODES = (None, "skip", "halt")


def check_nonfinite_mode(where: str, nonfinite: Any) -> None:
    """Raises ValueError unless ``nonfinite`` is None, ``"skip"`` or ``"halt"``."""
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"{where}: argument `nonfinite` expected None, 'skip' or 'halt', given {nonfinite!r}.")


def all_finite(*trees: Any) -> Array:
    """A bool scalar: True when no floating leaf of ``trees`` holds NaN or Inf (traceable)."""
    flags = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(trees)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def nonfinite_leaf(objective_fn: Objective, train_state: TrainState, batch: Batch) -> str | None:
    """Names what is first non-finite in the update at ``train_state.step`` for ``batch``: ``"loss"``,
    a gradient leaf such as ``"params/dense_0/w"``, or a model state leaf ``"state/..."``; None if all are finite.

    Recomputes that one update outside compiled code; ``fit`` calls it to explain a halt.
    """
    (value, (new_state, _)), grads = value_and_grad(
        objective_fn, train_state.params, train_state.state, batch, key=step_key(train_state)
    )
    bad = first_nonfinite({"params": grads})
    if bad is None:
        bad = first_nonfinite({"state": new_state})
    if bad is None and not bool(jnp.isfinite(value)):
        bad = "loss"
    return bad


def make_train_step(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation,
    *,
    metrics: Mapping[str, Metric] | None = None,
    jit: bool = True,
    nonfinite: str | None = None,
    step_stats: StepStats | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """Returns the pure train step ``(train_state, batch) -> (train_state, metrics)``.

    One step: the objective in training mode with the step's key (``step_key``), its gradient by
    ``jax.value_and_grad``, ``optimizer.update``, ``optax.apply_updates``. The metrics are ``"loss"`` and
    the objective's aux (for a ``loss``: ``metrics``, each ``fn(predictions, y)`` on the same forward
    pass), as device arrays (no host sync).

    Args:
      model: the network (its ``apply`` runs the short form; a general objective calls it itself).
      loss: ``loss(predictions, targets) -> scalar`` (e.g. ``nnjax.losses.softmax_cross_entropy``), the
        batch then being ``(x, y)``; or an ``nnjax.objective``, given the batch as it is.
      optimizer: any ``optax.GradientTransformation``.
      metrics: optional extra metrics of the short form (a general objective returns them in its aux).
      jit: return the step compiled by ``nnjax.jit`` (``jax.jit`` with nnjax's compiler options; the input
        train state is donated: do not reuse it);
        ``jit=False`` returns the plain function, to ``vmap``/``scan``/``jit`` yourself.
      nonfinite: what to do when the loss, a gradient or the new model state holds NaN or Inf.
        ``None``: nothing (the update is applied). ``"skip"``: apply no update (params, state and
        opt_state unchanged) but count the batch in ``step``, so data order and keys stay on schedule.
        ``"halt"``: return the train state unchanged, ``step`` included, so the caller stops at the
        last finite state (``fit`` raises ``NonFiniteError`` naming the step and leaf). With either,
        metrics gain ``"nonfinite"``: 1 for a rejected update, else 0. (``optax.apply_if_finite`` is
        not used: it checks only the gradient, lets updates through after ``max_consecutive_errors``,
        and changes the shape of ``opt_state``.)
      step_stats: an ``nnjax.StepStats``: add the per-step ``"step/grad_norm"``, ``"step/update_norm"``,
        ``"step/learning_rate"`` (and per-layer norms) to the metrics, computed inside the step.

    Returns:
      The step ``(train_state, batch) -> (new_train_state, metrics)``: ``new_train_state.step`` is one more
      (unless halted); ``metrics`` maps ``"loss"`` and each metric or aux name (and ``"nonfinite"``) to a
      scalar device array.

    Raises:
      ValueError: ``nonfinite`` is not None, ``"skip"`` or ``"halt"``; or ``metrics`` given with a general
        objective.
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``; when the step is traced, an
        objective's aux that is not a dict of named scalars.

    Example:
      >>> model = nnjax.Dense(2)
      >>> ts = nnjax.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (3,))
      >>> step = nnjax.make_train_step(model, nnjax.losses.mse, optax.sgd(0.1), metrics={"mae": nnjax.metrics.mae})
      >>> ts, metrics = step(ts, (jnp.ones((4, 3)), jnp.zeros((4, 2))))   # the old ts is donated: rebind it
      >>> int(ts.step), sorted(metrics), metrics["loss"].shape
      (1, ['loss', 'mae'], ())
    """
    check_model("make_train_step", model)
    check_optimizer("make_train_step", optimizer)
    check_nonfinite_mode("make_train_step", nonfinite)
    objective_fn = as_objective("make_train_step", model, loss, metrics)
    step = build_train_step(objective_fn, optimizer, nonfinite=nonfinite, step_stats=step_stats)
    return jit_train_step(step) if jit else step


class Gradient(NamedTuple):
    """What a gradient function gives the train step: the objective's value and aux, and the gradient.

    Attributes:
      loss: the scalar the step reports as ``"loss"``.
      state: the model's new state.
      aux: named scalars joining the step's metrics.
      grads: the gradient the optimizer is given (like ``params``).
      opt_state: the optimizer state the update starts from, and the one kept when the non-finite guard
        rejects the update (the train state's own, except where the gradient owns part of it: a loss scale).
    """

    loss: Array
    state: State
    aux: Aux
    grads: Params
    opt_state: optax.OptState


GradientFn = Callable[[Objective, TrainState, Batch, PRNGKey], Gradient]  # (objective, ts, batch, key) -> Gradient


def plain_gradient(objective_fn: Objective, train_state: TrainState, batch: Batch, key: PRNGKey) -> Gradient:
    """The objective's gradient by ``jax.value_and_grad``, in training mode with ``key``."""
    params, state = train_state.params, train_state.state
    (value, (new_state, aux)), grads = value_and_grad(objective_fn, params, state, batch, key=key)
    return Gradient(value, new_state, aux, grads, train_state.opt_state)


def build_train_step(
    objective_fn: Objective,
    optimizer: optax.GradientTransformation,
    *,
    gradient: GradientFn = plain_gradient,
    nonfinite: str | None = None,
    step_stats: StepStats | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """The one pure train step behind ``make_train_step``, the DP-SGD step and the loss-scaled step.

    ``gradient`` is what varies (plain, per-example clipped and noised, loss-scaled); the step key, the
    optimizer update, the step count, the non-finite guard and the per-step statistics are the same for
    all. See ``make_train_step`` for ``nonfinite`` and ``step_stats``. With an optimizer from
    ``nnjax.freeze``, the objective stops the frozen leaves' gradients (``jax.lax.stop_gradient``), so
    whatever ``gradient`` is, their backward pass is not computed.
    """
    frozen = frozen_predicate(optimizer)
    if frozen is not None:
        objective_fn = stop_frozen_gradients(objective_fn, frozen)

    def step(train_state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        g = gradient(objective_fn, train_state, batch, step_key(train_state))
        updates, opt_state = optimizer.update(g.grads, g.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        new = train_state.replace(step=train_state.step + 1, params=params, state=g.state, opt_state=opt_state)
        step_metrics = {"loss": g.loss, **g.aux}
        if step_stats is not None:
            step_metrics.update(step_statistics(step_stats, train_state.step, g.grads, updates, params, opt_state))
        if nonfinite is not None:
            finite = all_finite(g.loss, g.grads, g.state)
            kept = train_state.replace(step=train_state.step + 1, opt_state=g.opt_state)
            new = optax.tree.where(finite, new, kept if nonfinite == "skip" else train_state)
            step_metrics["nonfinite"] = jnp.logical_not(finite).astype(jnp.int32)
        return new, step_metrics

    return step


def jit_train_step(step: Callable[[TrainState, Batch], tuple[TrainState, Any]]) -> Callable[..., Any]:
    """Compiles a pure train step with the train state donated, except its root key.

    Each array a jitted call returns costs dispatch time, which dominates a tiny step (an input costs
    far less). So the key is passed in but not returned (the step never changes it), and a model state
    without arrays (``{}`` or nested empty dicts: most models) is not passed at all: it is rebuilt
    inside from its structure. ``train_state.step`` is always the device's int32 counter. The general
    compiled function is ``.compiled``.
    """

    def inner(fields: tuple, key: PRNGKey, batch: Batch):
        new, step_metrics = step(TrainState(*fields, key), batch)
        return (new.step, new.params, new.state, new.opt_state), step_metrics

    compiled = compile_jit(inner, donate_argnums=0)

    def compile_stateless(state_def: Any) -> Callable[..., Any]:
        def inner_stateless(fields: tuple, key: PRNGKey, batch: Batch):
            step_count, params, opt_state = fields
            state = jax.tree.unflatten(state_def, [])
            new, step_metrics = step(TrainState(step_count, params, state, opt_state, key), batch)
            if jax.tree.structure(new.state) != state_def:
                raise ValueError(
                    f"make_train_step: the model's state had no arrays, so the new state must have none either "
                    f"(same structure {state_def}), given {jax.tree.structure(new.state)}."
                )
            return (new.step, new.params, new.opt_state), step_metrics

        return compile_jit(inner_stateless, donate_argnums=0)

    by_structure: dict[Any, Callable[..., Any]] = {}  # array-free state structure -> its compiled step
    stateless: list[Any] = [object(), None]  # the last array-free state object seen, its compiled step

    def jitted_step(train_state: TrainState, batch: Batch) -> tuple[TrainState, Any]:
        step_count, params, state, opt_state, key = train_state  # one unpack: this runs every step
        if state is not stateless[0]:
            leaves, state_def = jax.tree.flatten(state)
            if leaves:
                (step_count, params, state, opt_state), step_metrics = compiled(
                    (step_count, params, state, opt_state), key, batch
                )
                return TrainState(step_count, params, state, opt_state, key), step_metrics
            if state_def not in by_structure:
                by_structure[state_def] = compile_stateless(state_def)
            stateless[:] = [state, by_structure[state_def]]
        (step_count, params, opt_state), step_metrics = stateless[1]((step_count, params, opt_state), key, batch)
        return TrainState(step_count, params, state, opt_state, key), step_metrics

    jitted_step.compiled = compiled
    return jitted_step


def make_eval_step(
    model: Layer, loss: Loss | Objective, *, metrics: Mapping[str, Metric] | None = None, jit: bool = True
) -> Callable[[TrainState, Batch], dict[str, Array]]:
    """Returns the pure eval step ``(train_state, batch) -> metrics``: the objective with ``train=False``.

    ``train=False`` means BatchNorm's running statistics and no Dropout; a general objective gets the run's
    evaluation key (``eval_key``). The train state is neither changed nor donated. For a whole data set at
    once see ``nnjax.evaluate``.

    Args:
      model: the network.
      loss: ``loss(predictions, targets) -> scalar`` (the batch is then ``(x, y)``) or an ``nnjax.objective``.
      metrics: optional ``name -> fn(predictions, y)`` for the short form.
      jit: return the step compiled by ``nnjax.jit`` (default) or the plain function.

    Returns:
      The step ``(train_state, batch) -> metrics``, a dict of scalar device arrays: ``"loss"`` and each
      metric (or the objective's aux).

    Raises:
      ValueError: ``metrics`` given with a general objective.
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``.

    Example:
      >>> model = nnjax.Dense(2)
      >>> ts = nnjax.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (3,))
      >>> eval_step = nnjax.make_eval_step(model, nnjax.losses.mse, metrics={"mae": nnjax.metrics.mae})
      >>> metrics = eval_step(ts, (jnp.ones((4, 3)), jnp.zeros((4, 2))))
      >>> sorted(metrics), metrics["loss"].shape
      (['loss', 'mae'], ())
    """
    check_model("make_eval_step", model)
    objective_fn = as_objective("make_eval_step", model, loss, metrics)

    def eval_step(train_state: TrainState, batch: Batch) -> dict[str, Array]:
        value, (_, aux) = objective_fn(
            train_state.params, train_state.state, batch, key=eval_key(train_state), train=False
        )
        return {"loss": value, **aux}

    return compile_jit(eval_step) if jit else eval_step
