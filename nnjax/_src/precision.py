"""Mixed precision as a policy set once, and dynamic loss scaling for float16.

    policy = Policy(compute_dtype=jnp.bfloat16)            # float32 params, bfloat16 math, float32 outputs
    model = with_policy(nnjax.serial(...), policy)         # the same Layer contract; nothing else changes

``with_policy`` keeps the master parameters in ``param_dtype``; inside ``apply`` it casts parameters,
state and floating inputs to ``compute_dtype`` and the outputs to ``output_dtype``, so the loss is computed
in float32 and the gradients arrive in ``param_dtype`` (the casts are differentiable).

bfloat16 has float32's exponent range and needs nothing more. float16 does not: small gradients flush
to zero. Dynamic loss scaling multiplies the loss by a large ``scale`` before the backward pass, divides the
gradients by it, skips updates whose gradients are not finite (halving ``scale``) and doubles ``scale`` after
``growth_interval`` finite steps. Neither Optax nor the installed packages have it except Flax, whose
``flax.training.dynamic_scale.DynamicScale`` this module uses: ``dynamic_loss_scale(optimizer)`` keeps it in
the optimizer state and ``make_loss_scaled_train_step`` is ``make_train_step`` with scaling.

Gradient accumulation (``optax.MultiSteps``), gradient clipping (``optax.clip_by_global_norm``) and
learning-rate schedules are Optax optimizers and work with ``make_train_step`` and ``fit`` unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nnjax._src.arguments import check_choice
from nnjax._src.compile import jit as compile_jit
from nnjax._src.core import Layer
from nnjax._src.objective import Loss, Metric, Objective, as_objective
from nnjax._src.step_stats import StepStats
from nnjax._src.train import Batch, Gradient, TrainState, build_train_step
from nnjax._src.types import Array, DType, PRNGKey

if TYPE_CHECKING:
    from flax.training.dynamic_scale import DynamicScale


def _cast_floating(tree: Any, dtype: DType) -> Any:
    """Casts the floating-point leaves of ``tree`` to ``dtype``; integer and key leaves are left as they are."""

    def cast(a):
        return jnp.asarray(a, dtype) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype parameters are stored in, computed in, and returned in.

    A frozen dataclass; each field is normalized to a ``numpy.dtype``. Give it to ``with_policy``.

    Attributes:
      param_dtype: the dtype of the stored (master) parameters and state; the optimizer updates these.
      compute_dtype: the dtype of the forward and backward passes (``jnp.bfloat16`` or ``jnp.float16``).
      output_dtype: the dtype of the model's outputs, i.e. of the loss's inputs.
      needs_loss_scaling: (property) True when ``compute_dtype`` is float16: use ``dynamic_loss_scale``.

    Raises:
      ValueError: a field is not a floating dtype (e.g. ``jnp.int32``).

    Example:
      >>> policy = nnjax.Policy(compute_dtype=jnp.bfloat16)   # float32 params, bfloat16 math, float32 outputs
      >>> policy.param_dtype.name, policy.compute_dtype.name, policy.output_dtype.name
      ('float32', 'bfloat16', 'float32')
      >>> policy.needs_loss_scaling, nnjax.Policy(compute_dtype=jnp.float16).needs_loss_scaling
      (False, True)
    """

    param_dtype: DType = jnp.float32
    compute_dtype: DType = jnp.float32
    output_dtype: DType = jnp.float32

    def __post_init__(self):
        for field in ("param_dtype", "compute_dtype", "output_dtype"):
            dtype = jnp.dtype(getattr(self, field))
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"Policy: argument `{field}` expected a floating dtype, given {dtype}.")
            object.__setattr__(self, field, dtype)

    @property
    def needs_loss_scaling(self) -> bool:
        """True for float16 compute, whose gradients underflow without loss scaling."""
        return self.compute_dtype == jnp.dtype(jnp.float16)

    def cast_to_param(self, tree: Any) -> Any:
        """``tree`` with its floating leaves cast to ``param_dtype`` (other leaves unchanged)."""
        return _cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """``tree`` with its floating leaves cast to ``compute_dtype`` (other leaves unchanged)."""
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """``tree`` with its floating leaves cast to ``output_dtype`` (other leaves unchanged)."""
        return _cast_floating(tree, self.output_dtype)


def with_policy(model: Layer, policy: Policy) -> Layer:
    """``model`` under a mixed-precision ``policy``: the same params structure, stored in ``param_dtype``.

    ``init(key, input_shape, dtype=...)`` initializes in ``policy.param_dtype`` (the ``dtype`` argument is
    overridden by the policy). ``apply`` casts params, state and floating inputs to ``compute_dtype`` (integer
    inputs, e.g. token ids, are left alone), runs ``model``, casts the outputs to ``output_dtype`` and the new
    state back to the dtype of the state it was given.

    Args:
      model: the network (a ``Layer``).
      policy: a ``Policy``.

    Returns:
      A ``Layer`` with ``model``'s name and ``input_dtype``: ``init`` gives ``model``'s params and state in
      ``param_dtype``; ``apply`` maps ``x: (batch, *input_shape)`` to ``model``'s outputs in ``output_dtype``
      (same shapes).

    Raises:
      TypeError: ``model`` is not a ``Layer`` or ``policy`` not a ``Policy``.

    Example:
      >>> mlp = nnjax.serial(nnjax.Dense(4), nnjax.Relu(), nnjax.Dense(1))
      >>> model = nnjax.with_policy(mlp, nnjax.Policy(compute_dtype=jnp.bfloat16))
      >>> params, state = model.init(jax.random.key(0), (3,))
      >>> outputs, _ = model.apply(params, state, jnp.ones((2, 3)))   # bfloat16 matmuls, float32 outputs
      >>> params["dense_0"]["w"].dtype.name, outputs.dtype.name, outputs.shape
      ('float32', 'float32', (2, 1))
    """
    if not isinstance(model, Layer):
        raise TypeError(f"with_policy: argument `model` expected a Layer, given {type(model).__name__}.")
    if not isinstance(policy, Policy):
        raise TypeError(f"with_policy: argument `policy` expected a Policy, given {type(policy).__name__}.")

    def init(key, input_shape, dtype=None):
        return model.init(key, input_shape, policy.param_dtype)

    def apply(params, state, x, *, key=None, train=False):
        y, new_state = model.apply(
            policy.cast_to_compute(params),
            policy.cast_to_compute(state),
            policy.cast_to_compute(x),
            key=key,
            train=train,
        )
        new_state = jax.tree.map(lambda new, old: jnp.asarray(new, jnp.result_type(old)), new_state, state)
        return policy.cast_to_output(y), new_state

    return Layer(init, apply, model.name, model.input_dtype)


# --- dynamic loss scaling -------------------------------------------------------------------------------


class LossScaleState(NamedTuple):
    """The optimizer state of ``dynamic_loss_scale(optimizer)``: the loss scale and the inner state.

    Attributes:
      loss_scale: Flax's ``DynamicScale`` (a pytree): ``scale`` (float32 scalar), ``fin_steps`` (finite steps
        since the last change) and the growth/backoff settings.
      inner: the wrapped optimizer's own state.

    Example:
      >>> opt = nnjax.precision.dynamic_loss_scale(optax.sgd(0.1), initial_scale=1024.0)
      >>> opt_state = opt.init({"w": jnp.zeros(3)})
      >>> type(opt_state).__name__, opt_state._fields, float(opt_state.loss_scale.scale)
      ('LossScaleState', ('loss_scale', 'inner'), 1024.0)
    """

    loss_scale: DynamicScale
    inner: optax.OptState


def dynamic_loss_scale(
    optimizer: optax.GradientTransformation,
    *,
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
) -> optax.GradientTransformation:
    """Wraps ``optimizer`` so its state carries a dynamic loss scale (Flax's ``DynamicScale``).

    Use it with ``make_loss_scaled_train_step``, which reads the scale, scales the loss, unscales the
    gradients, skips non-finite updates and adjusts the scale. Its ``update`` passes gradients straight
    to ``optimizer`` (they must be unscaled already).

    Args:
      optimizer: any ``optax.GradientTransformation``, applied to the unscaled gradients.
      initial_scale: the first scale (2**15 is the usual start for float16).
      growth_interval: finite steps in a row after which the scale is multiplied by ``growth_factor``.
      growth_factor: the factor applied to the scale after ``growth_interval`` finite steps.
      backoff_factor: the factor applied to the scale after a non-finite gradient.

    Returns:
      An ``optax.GradientTransformation`` whose state is a ``LossScaleState``; pass this same optimizer to
      ``init_train_state`` and ``make_loss_scaled_train_step``.

    Example:
      >>> opt = nnjax.precision.dynamic_loss_scale(optax.adam(1e-3), initial_scale=2.0**10)
      >>> ts = nnjax.init_train_state(nnjax.Dense(2), opt, jax.random.key(0), (3,))
      >>> float(ts.opt_state.loss_scale.scale), int(ts.opt_state.loss_scale.fin_steps)
      (1024.0, 0)
    """

    def init(params):
        from flax.training.dynamic_scale import DynamicScale  # imported here: flax costs `import nnjax` 0.1 s

        scale = DynamicScale(
            growth_factor=growth_factor,
            backoff_factor=backoff_factor,
            growth_interval=growth_interval,
            fin_steps=jnp.zeros((), jnp.int32),
            scale=jnp.asarray(initial_scale, jnp.float32),
        )
        return LossScaleState(scale, optimizer.init(params))

    def update(updates, state, params=None):
        updates, inner = optimizer.update(updates, state.inner, params)
        return updates, LossScaleState(state.loss_scale, inner)

    return optax.GradientTransformation(init, update)


def make_loss_scaled_train_step(
    model: Layer,
    loss: Loss | Objective,
    optimizer: optax.GradientTransformation,
    *,
    metrics: Mapping[str, Metric] | None = None,
    jit: bool = True,
    nonfinite: str = "skip",
    step_stats: StepStats | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """``make_train_step`` with dynamic loss scaling; ``optimizer`` must be a ``dynamic_loss_scale(...)``.
    ``loss`` is a ``loss(predictions, targets)`` or a general ``nnjax.objective``, as there.

    One step: ``scale * loss`` is differentiated, gradients are divided by ``scale`` (in float32); if every
    gradient is finite the update is applied, otherwise params, model state and optimizer state are kept
    (the step counter still advances): the non-finite guard of ``make_train_step`` in its ``"skip"`` mode,
    which also rejects a non-finite loss or model state. Metrics add ``loss_scale`` (the scale for the next
    step), ``grads_finite`` (1.0 or 0.0) and the guard's ``nonfinite``.

    Args:
      model: the network, usually ``with_policy(..., Policy(compute_dtype=jnp.float16))``.
      loss: ``loss(predictions, targets) -> scalar`` or an ``nnjax.objective``.
      optimizer: a ``dynamic_loss_scale(...)`` optimizer, the same one given to ``init_train_state``.
      metrics: optional ``name -> fn(predictions, y)`` for the short form.
      jit: return the step compiled by ``nnjax.jit`` with the train state donated (default) or the plain
        function.
      nonfinite: ``"skip"`` (default: the update is skipped and the scale backs off) or ``"halt"`` (the step
        returns the train state unchanged, for a driver to stop); loss scaling needs one of them.
      step_stats: per-step statistics (an ``nnjax.StepStats``), as ``make_train_step``.

    Returns:
      The step ``(train_state, batch) -> (train_state, metrics)``; ``metrics`` holds ``"loss"`` (unscaled),
      each metric or aux, ``"loss_scale"`` and ``"grads_finite"``.

    Raises:
      TypeError: ``loss`` is neither callable nor an ``nnjax.objective``; or, when the step runs, the train
        state's ``opt_state`` is not a ``LossScaleState``.
      ValueError: ``metrics`` given with a general objective, or ``nonfinite`` not ``"skip"`` or ``"halt"``.

    Example:
      >>> model = nnjax.with_policy(nnjax.Dense(2), nnjax.Policy(compute_dtype=jnp.float16))
      >>> opt = nnjax.precision.dynamic_loss_scale(optax.sgd(0.1), initial_scale=2.0**10)
      >>> ts = nnjax.init_train_state(model, opt, jax.random.key(0), (3,))
      >>> step = nnjax.precision.make_loss_scaled_train_step(model, nnjax.losses.mse, opt)
      >>> ts, metrics = step(ts, (jnp.ones((4, 3)), jnp.zeros((4, 2))))
      >>> int(ts.step), float(metrics["grads_finite"]), float(metrics["loss_scale"])
      (1, 1.0, 1024.0)
    """

    check_choice("make_loss_scaled_train_step", "nonfinite", nonfinite, ("skip", "halt"))
    objective_fn = as_objective("make_loss_scaled_train_step", model, loss, metrics)
    step = build_train_step(
        objective_fn, optimizer, gradient=loss_scaled_gradient, nonfinite=nonfinite, step_stats=step_stats
    )
    return compile_jit(step, donate_argnums=0) if jit else step


def loss_scaled_gradient(objective_fn: Objective, train_state: TrainState, batch: Batch, key: PRNGKey) -> Gradient:
    """The gradient of ``scale * loss`` divided by ``scale`` (float32), for ``build_train_step``.

    The optimizer state it returns carries the next scale (backed off after a non-finite gradient, grown
    after ``growth_interval`` finite ones), which the step keeps even when the guard rejects the update.
    """
    scaled = train_state.opt_state
    if not isinstance(scaled, LossScaleState):
        raise TypeError(
            "make_loss_scaled_train_step: the train state's optimizer state is not a LossScaleState. Hint: build "
            "the optimizer as `dynamic_loss_scale(optax.adam(...))` and pass that same optimizer to "
            "`init_train_state` and to this function."
        )

    def loss_fn(params):
        return objective_fn(params, train_state.state, batch, key=key, train=True)

    new_scale, finite, (value, (new_state, aux)), grads = scaled.loss_scale.value_and_grad(loss_fn, has_aux=True)(
        train_state.params
    )
    grads = jax.tree.map(lambda g, p: jnp.asarray(g, jnp.result_type(p)), grads, train_state.params)
    aux = {**aux, "loss_scale": new_scale.scale, "grads_finite": finite.astype(jnp.float32)}
    return Gradient(value, new_state, aux, grads, LossScaleState(new_scale, scaled.inner))


__all__ = [
    "LossScaleState",
    "Policy",
    "dynamic_loss_scale",
    "make_loss_scaled_train_step",
    "with_policy",
]
