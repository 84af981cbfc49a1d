"""Per-step observation of training, computed inside the step: no host callback, so it fuses.

``make_train_step(..., step_stats=StepStats())`` adds to each step's metrics the global gradient norm,
the update norm and the learning rate (and, with ``layers=True``, per-layer gradient and parameter
norms). Their names start with ``"step/"``: the drivers keep them per step (``fit``'s history gets
``history["step/grad_norm"]``, one float per update) instead of averaging them over the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nnjax._src.types import Array, Params

STEP_PREFIX = "step/"  # metrics under this prefix are per-step series, never averaged over an epoch


class StepStats(NamedTuple):
    """What the train step records at every update, beside the loss.

    Always ``step/grad_norm`` (global L2 norm of the gradient) and ``step/update_norm`` (of the update the
    optimizer applied); ``step/learning_rate`` when the optimizer keeps it in its state
    (``optax.inject_hyperparams``) or ``schedule`` is given; and the drivers add ``step/loss``.

    Attributes:
      layers: also ``step/grad_norm/<layer>`` and ``step/param_norm/<layer>`` (after the update) for each
        top-level entry of the params dict that holds arrays (``dense_0``, ``encoder``, ...).
      schedule: the learning-rate schedule ``step -> rate`` the optimizer was built with (Optax's schedules
        are functions the optimizer state does not expose); evaluated at the update's step.

    Example:
      >>> model = nnjax.serial(nnjax.Dense(4), nnjax.Relu(), nnjax.Dense(1))
      >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> ts = nnjax.init_train_state(model, opt, jax.random.key(0), (3,))
      >>> step = nnjax.make_train_step(model, nnjax.losses.mse, opt, step_stats=nnjax.StepStats(layers=True))
      >>> ts, metrics = step(ts, (jnp.ones((8, 3)), jnp.zeros((8, 1))))
      >>> sorted(metrics)
      ['loss', 'step/grad_norm', 'step/grad_norm/dense_0', 'step/grad_norm/dense_2', 'step/learning_rate',
       'step/param_norm/dense_0', 'step/param_norm/dense_2', 'step/update_norm']
      >>> round(float(metrics["step/learning_rate"]), 4)
      0.1
    """

    layers: bool = False
    schedule: Callable[[Array], Array] | None = None


def as_step_stats(where: str, step_stats: Any) -> StepStats | None:
    """``step_stats`` as given to a driver: None/False (off), True (``StepStats()``) or a ``StepStats``."""
    if step_stats is None or step_stats is False:
        return None
    if step_stats is True:
        return StepStats()
    if not isinstance(step_stats, StepStats):
        raise TypeError(
            f"{where}: argument `step_stats` expected True, False, None or an nnjax.StepStats, "
            f"given {type(step_stats).__name__}."
        )
    return step_stats


def find_hyperparams(opt_state: Any) -> dict[str, Any] | None:
    """The ``hyperparams`` dict of the first ``optax.inject_hyperparams`` state inside ``opt_state``, or None."""
    hyperparams = getattr(opt_state, "hyperparams", None)
    if isinstance(hyperparams, Mapping):
        return dict(hyperparams)
    children: Any = ()
    if isinstance(opt_state, Mapping):
        children = opt_state.values()
    elif isinstance(opt_state, (tuple, list)):
        children = opt_state
    for child in children:
        found = find_hyperparams(child)
        if found is not None:
            return found
    return None


def step_statistics(
    stats: StepStats, step: Array, grads: Params, updates: Params, new_params: Params, new_opt_state: Any
) -> dict[str, Array]:
    """The ``step/*`` metrics of one update at ``step`` (traceable); see ``StepStats``."""
    out = {f"{STEP_PREFIX}grad_norm": optax.tree.norm(grads), f"{STEP_PREFIX}update_norm": optax.tree.norm(updates)}
    hyperparams = find_hyperparams(new_opt_state) or {}
    if stats.schedule is not None:
        out[f"{STEP_PREFIX}learning_rate"] = jnp.asarray(stats.schedule(step), jnp.float32)
    elif "learning_rate" in hyperparams:
        out[f"{STEP_PREFIX}learning_rate"] = jnp.asarray(hyperparams["learning_rate"], jnp.float32)
    if stats.layers and isinstance(grads, Mapping):
        for name, layer_grads in grads.items():
            if jax.tree.leaves(layer_grads):
                out[f"{STEP_PREFIX}grad_norm/{name}"] = optax.tree.norm(layer_grads)
                out[f"{STEP_PREFIX}param_norm/{name}"] = optax.tree.norm(new_params[name])
    return out
