"""Many models in one program: seeds and hyperparameter sweeps trained as one vmapped XLA program."""

from nnjax._src.ensemble import (
    Aggregate,
    ManyResult,
    aggregate,
    ensemble_predict,
    fit_many,
    init_many,
    injected,
    make_many_step,
    num_models,
    stack_train_states,
    sweep_configs,
    unstack,
)

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
