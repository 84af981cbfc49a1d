"""A whole training run as one pure, differentiable function of its hyperparameters.

    run = nnjax.training_run(model, loss, optimizer, x, y, epochs=5, batch_size=32, validation_data=(xv, yv))
    train_state, history = run({"learning_rate": 0.01}, jax.random.key(0))
    hypergradient = jax.grad(lambda h: run(h, key)[1]["val_loss"][-1])({"learning_rate": 0.01})

The run is ``fit(fused="all")``'s program (the same step, data order and validation; ``engine.py``'s
``differentiable_run``) left uncompiled for ``jax.grad``, ``jax.vmap`` and ``jax.jit`` to take whole:
epochs are a ``lax.scan``, each epoch's steps a ``fori_loop`` with static bounds (reverse-differentiable),
and each epoch runs under ``jax.checkpoint`` so the backward pass stores one train state per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.arguments import check_int
from nnjax._src.core import Layer
from nnjax._src.engine import Plan, differentiable_run
from nnjax._src.inference import make_evaluate_fn
from nnjax._src.objective import Loss, Metric, Objective, as_objective
from nnjax._src.train import TrainState, build_train_step, init_train_state
from nnjax._src.training_data import check_fit_data, device_data, epoch_order
from nnjax._src.types import Array, DType, PRNGKey

Hyperparameters = Mapping[str, Any]
OptimizerFactory = Callable[[Hyperparameters], optax.GradientTransformation]


def is_transformation(optimizer: Any) -> bool:
    return hasattr(optimizer, "init") and hasattr(optimizer, "update")


def inject(where: str, opt_state: Any, hyperparameters: Hyperparameters) -> Any:
    """``opt_state`` with ``optax.inject_hyperparams`` values replaced by ``hyperparameters`` (each cast to the
    stored dtype, so a float64 hypergradient check and a float32 run both work)."""
    if not hyperparameters:
        return opt_state
    stored = getattr(opt_state, "hyperparams", None)
    if not isinstance(stored, dict):
        raise ValueError(
            f"{where}: argument `hyperparameters` names {sorted(hyperparameters)}, but the optimizer has no "
            f"injected hyperparameters. Hint: build it with optax.inject_hyperparams(optax.adam)(learning_rate=...), "
            f"or pass a function hyperparameters -> optimizer."
        )
    unknown = sorted(set(hyperparameters) - set(stored))
    if unknown:
        raise ValueError(
            f"{where}: argument `hyperparameters` expected keys among the optimizer's injected "
            f"hyperparameters {sorted(stored)} (and 'params'), given {unknown}."
        )
    values = {k: jnp.asarray(v).astype(jnp.result_type(stored[k])) for k, v in hyperparameters.items()}
    return opt_state._replace(hyperparams={**stored, **values})


def training_run(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation | OptimizerFactory,
    x: Any,
    y: Any = None,
    *,
    epochs: int,
    batch_size: int = 32,
    input_shape: Any = None,
    metrics: Mapping[str, Metric] | None = None,
    validation_data: tuple[Any, Any] | None = None,
    dtype: DType = jnp.float32,
    remat: bool = True,
) -> Callable[[Hyperparameters, PRNGKey], tuple[TrainState, dict[str, Array]]]:
    """A training run as a pure function ``(hyperparameters, key) -> (train_state, history)`` to differentiate.

    The run is ``fit``'s fused run (same step, same data order from the key, same validation), traced
    rather than compiled, so ``jax.grad`` differentiates the final state and the history with respect to
    the hyperparameters (the learning rate, weight decay, any ``optax.inject_hyperparams`` value, the
    initial parameters), ``jax.vmap`` runs many settings or seeds at once, and ``jax.jit`` compiles it.
    Each epoch runs under ``jax.checkpoint`` (``remat``): reverse mode keeps one train state per epoch and
    recomputes the epoch's steps, so memory grows with the number of epochs, not of steps.

    Second derivatives through Adam meet ``sqrt(v)`` at ``v = 0`` (a parameter whose gradient is zero):
    use ``optax.adam(..., eps_root=1e-8)`` (or another small ``eps_root``) in a run you differentiate.

    Args:
      model: the network.
      loss: ``loss(predictions, y) -> scalar`` or an ``nnjax.objective`` (as ``fit``).
      optimizer: an ``optax.inject_hyperparams(...)(...)`` transformation, whose injected values the
        ``hyperparameters`` replace; or a function ``hyperparameters -> optax.GradientTransformation``
        (e.g. ``lambda h: optax.adamw(h["learning_rate"], weight_decay=h["weight_decay"], eps_root=1e-8)``).
      x: inputs ``(n, *input_shape)`` (as ``fit``); kept on the device as constants of the run.
      y: targets ``(n, ...)``, or None for an objective that takes ``x`` alone.
      epochs: how many epochs (static: the length of the scan).
      batch_size: examples per update (clipped to ``n``; the ``n % batch_size`` left over in each shuffled
        epoch are skipped, as in ``fit``).
      input_shape: what ``model.init`` is given (default ``x.shape[1:]``).
      metrics: name -> ``fn(predictions, y)``, averaged per epoch like the loss (loss form only).
      validation_data: ``(x_val, y_val)`` evaluated after every epoch (``train=False``) as ``val_*``.
      dtype: the parameters' dtype (``jnp.float64`` under ``jax.enable_x64`` for finite differences).
      remat: ``jax.checkpoint`` each epoch (set False to trade memory for the recomputation).

    Returns:
      ``run(hyperparameters, key) -> (train_state, history)``: ``hyperparameters`` a dict (``{}`` for
      none) whose ``"params"`` entry, if present, gives the initial parameters (else ``model.init`` with
      ``key``'s first half, as ``init_train_state``), the rest going to the optimizer; ``key`` a typed key
      (the run's root key: initialization, data order, dropout). ``history`` maps ``"loss"``, each metric
      and ``"val_*"`` to ``(epochs,)`` arrays (per-epoch means of the steps), differentiable.

    Raises:
      ValueError: bad data or arguments (as ``fit``), or (when ``run`` is called) hyperparameters that the
        optimizer does not inject.

    Example:
      >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
      >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> run = nnjax.training_run(nnjax.Dense(1), nnjax.losses.mse, opt, x, 2 * x, epochs=3, batch_size=8)
      >>> final_loss = lambda lr: run({"learning_rate": lr}, jax.random.key(0))[1]["loss"][-1]
      >>> bool(jax.grad(final_loss)(0.1) < 0)   # a larger learning rate lowers the final loss here
      True
      >>> jax.vmap(final_loss)(jnp.array([0.01, 0.1, 0.3])).shape
      (3,)
    """
    where = "training_run"
    check_int(where, "epochs", epochs, minimum=1)
    check_int(where, "batch_size", batch_size, minimum=1)
    if not (is_transformation(optimizer) or callable(optimizer)):
        raise TypeError(
            f"{where}: argument `optimizer` expected an optax.GradientTransformation or a function "
            f"hyperparameters -> optimizer, given {type(optimizer).__name__}."
        )
    objective_fn = as_objective(where, model, loss, metrics)
    input_shape, val = check_fit_data(where, model, loss, x, y, input_shape, validation_data)
    n = np.shape(x)[0]
    batch_size = min(batch_size, n)
    steps = n // batch_size
    data = device_data(x, y)
    evaluate_fn = make_evaluate_fn(model, loss, metrics)

    def run(hyperparameters: Hyperparameters, key: PRNGKey) -> tuple[TrainState, dict[str, Array]]:
        settings = dict(hyperparameters or {})
        params = settings.pop("params", None)
        if is_transformation(optimizer):
            tx = optimizer
        else:
            tx = optimizer(settings)
            settings = {}
        train_state = init_train_state(model, tx, key, input_shape, dtype, params=params)
        train_state = train_state.replace(opt_state=inject(where, train_state.opt_state, settings))
        plan = Plan(
            build_train_step(objective_fn, tx),
            data=data,
            order=lambda ts, epoch: epoch_order(ts.key, epoch, n, batch_size),
            steps=steps,
            validate=None if val is None else evaluate_fn,
            validation=() if val is None else val,
        )
        train_state, per_step, validation = differentiable_run(plan, remat=remat)(train_state, jnp.arange(epochs))
        history = {name: jnp.mean(values, axis=1) for name, values in per_step.items()}
        history.update({f"val_{name}": values for name, values in validation.items()})
        return train_state, history

    return run
