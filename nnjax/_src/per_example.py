"""Per-example gradients as a primitive, and DP-SGD built on them.

    grads = per_example_grads(model, loss, params, state, (x, y))   # every leaf: (batch, *param_shape)

``loss`` is a ``loss(predictions, targets)`` or a general ``nnjax.objective`` (then ``batch`` is any pytree
whose leaves share a leading batch axis).

It is ``jax.vmap`` of ``jax.grad`` over the batch, each example seen as a batch of one. It costs about one
batched backward pass (no Python loop) and is what differential privacy, influence functions, gradient
noise scales and data-attribution methods need.

DP-SGD (Abadi et al., 2016) clips each example's gradient to a global L2 norm, sums, adds Gaussian noise of
standard deviation ``l2_norm_clip * noise_multiplier`` and divides by the batch size. The aggregation is
Optax's own (``optax.contrib.differentially_private_aggregate``); ``make_dp_train_step`` feeds it per-example
gradients and draws its noise from the train state's key stream, so any Optax optimizer (Adam, momentum,
schedules) can follow it and ``init_train_state`` needs no special optimizer.

Each example is run as a batch of one: layers that use batch statistics in training (BatchNorm) see a
batch of one, which is what DP requires anyway (batch statistics mix examples); prefer LayerNorm/GroupNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from nnjax._src.compile import jit as compile_jit
from nnjax._src.core import Layer
from nnjax._src.errors import check_number
from nnjax._src.objective import Aux, Loss, Metric, Objective, as_objective, value_and_grad
from nnjax._src.step_stats import StepStats
from nnjax._src.train import Batch, Gradient, GradientFn, TrainState, build_train_step, check_nonfinite_mode
from nnjax._src.types import Array, Params, PRNGKey, State


def _example_keys(key: PRNGKey | None, n: int) -> PRNGKey | None:
    return None if key is None else jax.random.split(key, n)


def per_example_value_and_grads(
    model: Layer,
    loss: Loss | Objective,
    params: Params,
    state: State,
    batch: Batch,
    *,
    key: PRNGKey | None = None,
    train: bool = True,
    metrics: Mapping[str, Metric] | None = None,
) -> tuple[tuple[Array, tuple[State, Aux]], Params]:
    """Each example's loss, new state, aux and gradient, computed by ``vmap(value_and_grad)``.

    Args:
      model: the network. loss: ``loss(predictions, targets) -> scalar`` or an ``nnjax.objective``
        (called on a batch of one).
      params, state: the model's parameters and state (shared by all examples).
      batch: ``(x, y)`` with ``x: (batch, *input_shape)``, ``y: (batch, ...)``; for an objective, any
        pytree whose leaves have the leading batch axis.
      key: randomness for training-mode layers (Dropout); example ``i`` gets ``jax.random.split(key, batch)[i]``.
      train: run the model in training mode (default, as in the train step).
      metrics: for the short form, ``fn(predictions, y)`` computed on each example alone, in the aux.

    Returns:
      ``((losses, (new_states, aux)), grads)`` as ``jax.value_and_grad(..., has_aux=True)`` gives them, with
      a leading batch axis on every leaf: ``losses: (batch,)``, each aux value ``(batch,)``, ``new_states``
      and ``grads`` like ``state`` and ``params`` with ``(batch, ...)`` leaves.

    Raises:
      ValueError: ``metrics`` given with a general objective.
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``, or an objective's aux is not a
        dict of named scalars.

    Example:
      >>> model = nnjax.Dense(2)
      >>> params, state = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
      >>> (losses, (_, aux)), grads = nnjax.per_example.per_example_value_and_grads(
      ...     model, nnjax.losses.mse, params, state, (x, y), metrics={"mae": nnjax.metrics.mae})
      >>> losses.shape, aux["mae"].shape, grads["w"].shape
      ((4,), (4,), (4, 3, 2))
    """
    objective_fn = as_objective("per_example_value_and_grads", model, loss, metrics)
    n = jax.tree.leaves(batch)[0].shape[0]

    def one(example, k):
        one_batch = jax.tree.map(lambda a: a[None], example)  # a batch of one
        return value_and_grad(objective_fn, params, state, one_batch, key=k, train=train)

    keys = _example_keys(key, n)
    return jax.vmap(one, in_axes=(0, None if keys is None else 0))(batch, keys)


def per_example_grads(
    model: Layer,
    loss: Loss | Objective,
    params: Params,
    state: State,
    batch: Batch,
    *,
    key: PRNGKey | None = None,
    train: bool = True,
) -> Params:
    """The gradient of ``loss`` for each example of ``batch``: ``grads[...][i] = grad(loss on example i alone)``.

    Their mean over the batch axis is the batch gradient of a mean-reduced loss (without batch-coupled
    layers such as BatchNorm, and with the same keys). See ``per_example_value_and_grads`` for the losses
    and aux too.

    Args:
      model: the network.
      loss: ``loss(predictions, targets) -> scalar`` or an ``nnjax.objective`` (called on a batch of one).
      params: the model's parameters (shared by all examples).
      state: the model's state.
      batch: ``(x, y)`` with ``x: (batch, *input_shape)``, ``y: (batch, ...)``; for an objective, any pytree
        whose leaves have the leading batch axis.
      key: randomness for training-mode layers (Dropout); example ``i`` gets ``jax.random.split(key, batch)[i]``.
      train: run the model in training mode (default).

    Returns:
      A pytree like ``params`` whose every leaf is ``(batch, *param_shape)``.

    Raises:
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``, or an objective's aux is not a
        dict of named scalars.

    Example:
      >>> model = nnjax.serial(nnjax.Dense(2))
      >>> params, state = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.arange(12.0).reshape(4, 3) / 10, jnp.zeros((4, 2))
      >>> grads = nnjax.per_example_grads(model, nnjax.losses.mse, params, state, (x, y))
      >>> grads["dense_0"]["w"].shape     # (batch, in, out)
      (4, 3, 2)
      >>> batch_grads = jax.grad(lambda p: nnjax.losses.mse(model.apply(p, state, x)[0], y))(params)
      >>> bool(jnp.allclose(grads["dense_0"]["w"].mean(axis=0), batch_grads["dense_0"]["w"], atol=1e-6))
      True
    """
    return per_example_value_and_grads(model, loss, params, state, batch, key=key, train=train)[1]


def per_example_norms(grads: Params) -> Array:
    """The global L2 norm of each example's gradient (over all leaves): ``(batch,)``.

    Args:
      grads: per-example gradients, a pytree whose every leaf is ``(batch, ...)`` (from ``per_example_grads``).

    Returns:
      A float ``(batch,)`` array: ``sqrt`` of the sum of squares of every leaf of example ``i``.

    Example:
      >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]]), "b": jnp.array([4.0, 0.0])}
      >>> nnjax.per_example.per_example_norms(grads).tolist()
      [5.0, 1.0]
    """
    return jax.vmap(optax.tree.norm)(grads)


def clip_per_example(grads: Params, max_norm: float | Array) -> Params:
    """Scales each example's gradient so its global L2 norm is at most ``max_norm``.

    Optax's ``clip_by_global_norm`` applied to each example; gradients already within the bound are
    unchanged.

    Args:
      grads: per-example gradients, a pytree whose every leaf is ``(batch, ...)``.
      max_norm: the bound on each example's global L2 norm (a positive float or scalar array).

    Returns:
      A pytree like ``grads``: example ``i`` scaled by ``min(1, max_norm / norm_i)``.

    Example:
      >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]]), "b": jnp.array([4.0, 0.0])}
      >>> clipped = nnjax.per_example.clip_per_example(grads, 2.0)
      >>> [round(v, 4) for v in nnjax.per_example.per_example_norms(clipped).tolist()]
      [2.0, 1.0]
      >>> [round(v, 4) for v in clipped["w"][0].tolist()]
      [1.2, 0.0]
    """
    clip = optax.clip_by_global_norm(max_norm)
    return jax.vmap(lambda g: clip.update(g, clip.init(g))[0])(grads)


def _reduce_state(new_states: State) -> State:
    """One state from per-example states: the mean of floating leaves, the first example's of others."""
    return jax.tree.map(lambda a: jnp.mean(a, axis=0) if jnp.issubdtype(a.dtype, jnp.inexact) else a[0], new_states)


def make_dp_train_step(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation,
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    metrics: Mapping[str, Metric] | None = None,
    jit: bool = True,
    nonfinite: str | None = None,
    step_stats: StepStats | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """A DP-SGD train step ``(train_state, (x, y)) -> (train_state, metrics)``, same contract as ``make_train_step``.

    Per-example gradients are clipped to ``l2_norm_clip``, summed, noised with ``N(0, (l2_norm_clip *
    noise_multiplier)^2)`` and divided by the batch size by ``optax.contrib.differentially_private_aggregate``;
    the result goes to ``optimizer`` (any Optax optimizer, e.g. ``optax.sgd(0.1)``; initialize with the
    usual ``init_train_state(model, optimizer, ...)``). Noise and dropout keys come from the train state's
    step key, so runs are reproducible, vmappable (many DP models at once) and resumable.

    The privacy budget (epsilon, delta) of a run depends on ``noise_multiplier``, the sampling rate and the
    number of steps; compute it with an accountant (e.g. ``dp_accounting``). Note that ``fit`` shuffles
    and partitions the data each epoch rather than Poisson-sampling it.

    Args:
      model: the network (prefer LayerNorm/GroupNorm to BatchNorm: each example runs as a batch of one).
      loss: ``loss(predictions, targets) -> scalar`` or an ``nnjax.objective``.
      optimizer: any ``optax.GradientTransformation``, applied to the privatized gradient.
      l2_norm_clip: the bound on each example's gradient norm (``C``; keyword-only).
      noise_multiplier: noise standard deviation relative to ``C`` (``sigma``); 0 gives clipped SGD.
      metrics: as ``make_train_step``; here each metric (and a general objective's aux) is computed on each
        example alone and averaged.
      jit: return the step compiled by ``nnjax.jit`` with the train state donated (default) or the plain
        function.
      nonfinite: the non-finite guard (None, ``"skip"`` or ``"halt"``), as ``make_train_step``.
      step_stats: per-step statistics (an ``nnjax.StepStats``), as ``make_train_step``.

    Returns:
      The step ``(train_state, batch) -> (train_state, metrics)``; ``metrics`` holds ``"loss"`` (the mean of
      the examples' losses), each metric or aux, and ``clipped_fraction``, the fraction of examples whose
      gradient norm exceeded ``C``. The new model state is the mean of the examples' new states (floating
      leaves; the first example's for the others).

    Raises:
      ValueError: ``metrics`` given with a general objective, or a bad ``nonfinite``.
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``.

    Example:
      >>> model, opt = nnjax.Dense(2), optax.sgd(0.1)
      >>> ts = nnjax.init_train_state(model, opt, jax.random.key(0), (3,))
      >>> dp_step = nnjax.per_example.make_dp_train_step(model, nnjax.losses.mse, opt, l2_norm_clip=1e-3,
      ...                                                  noise_multiplier=1.0)
      >>> ts, metrics = dp_step(ts, (jnp.ones((4, 3)), jnp.ones((4, 2))))   # every gradient norm exceeds 1e-3
      >>> int(ts.step), sorted(metrics), float(metrics["clipped_fraction"])
      (1, ['clipped_fraction', 'loss'], 1.0)
    """

    check_nonfinite_mode("make_dp_train_step", nonfinite)
    check_number("make_dp_train_step", "l2_norm_clip", l2_norm_clip, low=0.0,
                 what="a positive number (the bound on each example's gradient norm)")
    if l2_norm_clip == 0:
        raise ValueError("make_dp_train_step: argument `l2_norm_clip` expected a positive number (the bound on each "
                         "example's gradient norm), given 0: every gradient would be clipped to zero.")
    check_number("make_dp_train_step", "noise_multiplier", noise_multiplier, low=0.0,
                 what="a non-negative number (the noise's standard deviation relative to l2_norm_clip)")
    objective_fn = as_objective("make_dp_train_step", model, loss, metrics)
    gradient = dp_gradient(model, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier)
    step = build_train_step(objective_fn, optimizer, gradient=gradient, nonfinite=nonfinite, step_stats=step_stats)
    return compile_jit(step, donate_argnums=0) if jit else step


def dp_gradient(model: Layer, *, l2_norm_clip: float, noise_multiplier: float) -> GradientFn:
    """DP-SGD's gradient for ``build_train_step``: per-example gradients clipped, summed, noised, averaged.

    The step key is split in two: one half for the model (example ``i`` gets its own split), the other for
    the noise. The loss and aux are the examples' means; the new model state their mean (floating leaves).
    """

    def gradient(objective_fn: Objective, train_state: TrainState, batch: Batch, key: PRNGKey) -> Gradient:
        model_key, noise_key = jax.random.split(key)
        (values, (new_states, aux)), grads = per_example_value_and_grads(
            model, objective_fn, train_state.params, train_state.state, batch, key=model_key
        )
        from optax.contrib import differentially_private_aggregate  # imported here: optax.contrib is slow to import

        aggregate = differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=noise_key)
        noised, _ = aggregate.update(grads, aggregate.init(train_state.params))
        aux = {**jax.tree.map(jnp.mean, aux), "clipped_fraction": jnp.mean(per_example_norms(grads) > l2_norm_clip)}
        return Gradient(jnp.mean(values), _reduce_state(new_states), aux, noised, train_state.opt_state)

    return gradient


__all__ = [
    "clip_per_example",
    "make_dp_train_step",
    "per_example_grads",
    "per_example_norms",
    "per_example_value_and_grads",
]
