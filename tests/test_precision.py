"""Mixed-precision policies, dynamic loss scaling, and Optax's accumulation/clipping/schedules with the step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src.precision import (
    LossScaleState,
    Policy,
    dynamic_loss_scale,
    make_loss_scaled_train_step,
    with_policy,
)

LOSS = nnjax.losses.softmax_cross_entropy


@pytest.fixture(scope="module")
def data():
    rs = np.random.RandomState(0)
    x = rs.randn(256, 8).astype(np.float32)
    y = (x @ rs.randn(8) > 0).astype(np.int32)
    return x, y


def _mlp():
    return nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(2))


def _close(a, b, atol=1e-6, rtol=1e-5):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=rtol), a, b)


def _numpy(tree):
    """A host copy of ``tree`` (test-side arithmetic in NumPy: eager jnp compiles a program per leaf shape)."""
    return jax.tree.map(np.array, tree)


def _device_copy(tree):
    """New device arrays equal to ``tree``'s (a jitted step donates its input), copied without a program."""
    return jax.tree.map(lambda a: jax.device_put(np.array(a)), tree)


# --- Policy ---------------------------------------------------------------------------------------------


def test_policy_stores_float32_computes_bfloat16_returns_float32(data):
    x, _ = data
    policy = Policy(compute_dtype=jnp.bfloat16)
    model = with_policy(_mlp(), policy)
    # Everything below compiled (op by op, each operation was a program of its own); the two initializations
    # are one program, the second loaded from the compilation cache.
    params, state = jax.jit(model.init, static_argnums=1)(jax.random.key(0), (8,))
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    ref_params, _ = jax.jit(_mlp().init, static_argnums=1)(jax.random.key(0), (8,))
    _close(params, ref_params, atol=0)  # same initialization as the float32 model

    @jax.jit
    def outputs(params, x):
        grads = jax.grad(lambda p: LOSS(model.apply(p, state, x)[0], jnp.zeros(16, jnp.int32)))(params)
        return model.apply(params, state, x)[0], _mlp().apply(params, state, x)[0], grads

    y, y32, grads = outputs(params, x[:16])
    assert y.dtype == jnp.float32
    jaxpr = str(jax.make_jaxpr(lambda p, x: model.apply(p, state, x)[0])(params, x[:16]))
    assert "dot_general" in jaxpr and "bf16[16,32]" in jaxpr  # the matmuls run in bfloat16
    np.testing.assert_allclose(y, y32, atol=5e-2, rtol=5e-2)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_policy_rejects_non_float_dtypes_and_flags_float16():
    with pytest.raises(ValueError, match="compute_dtype"):
        Policy(compute_dtype=jnp.int8)
    assert Policy(compute_dtype=jnp.float16).needs_loss_scaling
    assert not Policy(compute_dtype=jnp.bfloat16).needs_loss_scaling
    with pytest.raises(TypeError, match="Policy"):
        with_policy(_mlp(), "bfloat16")


def test_bfloat16_policy_trains_with_fit_unchanged(data):
    x, y = data
    model = with_policy(_mlp(), Policy(compute_dtype=jnp.bfloat16))
    result = nnjax.fit(
        model,
        LOSS,
        optax.adam(1e-2),
        x,
        y,
        epochs=5,
        batch_size=32,
        progress=False,
        metrics={"acc": nnjax.metrics.accuracy},
    )
    assert result.history["acc"][-1] > 0.9
    assert result.train_state.params["dense_0"]["w"].dtype == jnp.float32


# --- dynamic loss scaling -------------------------------------------------------------------------------


def _tiny_loss(predictions, targets):
    """A loss so small that its float16 gradients flush to zero without loss scaling."""
    return 1e-8 * LOSS(predictions, targets)


def test_loss_scaling_recovers_float16_gradients_that_underflow(data):
    x, y = data
    xb, yb = jnp.asarray(x[:32]), jnp.asarray(y[:32])
    model16 = with_policy(_mlp(), Policy(compute_dtype=jnp.float16))
    sgd = optax.sgd(1e6)  # large rate so the 1e-8-sized updates are visible next to the float32 params
    init = nnjax.init_train_state(_mlp(), sgd, jax.random.key(0), (8,))

    ref, _ = nnjax.make_train_step(_mlp(), _tiny_loss, sgd)(_device_copy(init), (xb, yb))  # float32
    plain16, _ = nnjax.make_train_step(model16, _tiny_loss, sgd)(_device_copy(init), (xb, yb))
    _close(plain16.params, init.params, atol=0)  # every float16 gradient underflowed: no update at all

    opt = dynamic_loss_scale(sgd, initial_scale=2.0**15)
    ts = nnjax.init_train_state(model16, opt, jax.random.key(0), (8,))
    assert isinstance(ts.opt_state, LossScaleState)
    scaled16, metrics = make_loss_scaled_train_step(model16, _tiny_loss, opt)(ts, (xb, yb))
    assert float(metrics["grads_finite"]) == 1.0
    delta_ref = jax.tree.map(lambda a, b: a - b, _numpy(ref.params), _numpy(init.params))
    delta16 = jax.tree.map(lambda a, b: a - b, _numpy(scaled16.params), _numpy(init.params))
    assert float(np.abs(delta_ref["dense_0"]["w"]).max()) > 1e-3
    _close(delta16, delta_ref, atol=2e-3, rtol=5e-2)  # float16 accuracy


def test_loss_scale_backs_off_on_overflow_skips_the_update_and_grows_again(data):
    x, y = data
    xb, yb = jnp.asarray(x[:32]), jnp.asarray(y[:32])
    model16 = with_policy(_mlp(), Policy(compute_dtype=jnp.float16))
    opt = dynamic_loss_scale(optax.sgd(0.1), initial_scale=2.0**30, growth_interval=2)
    ts = nnjax.init_train_state(model16, opt, jax.random.key(0), (8,))
    step = make_loss_scaled_train_step(model16, LOSS, opt, jit=False)
    step = jax.jit(step)
    first = _numpy(ts.params)
    ts, m = step(ts, (xb, yb))
    assert float(m["grads_finite"]) == 0.0 and float(m["loss_scale"]) == 2.0**29
    _close(ts.params, first, atol=0)  # skipped
    assert int(ts.step) == 1
    finite, scales = [], []
    for _ in range(30):
        ts, m = step(ts, (xb, yb))
        finite.append(float(m["grads_finite"]))
        scales.append(float(m["loss_scale"]))
    i = finite.index(1.0)  # the scale came down far enough
    assert i > 0 and finite[i : i + 3] == [1.0, 1.0, 1.0]
    assert scales[i + 2] == 2 * scales[i + 1] == 2 * scales[i]  # grows after `growth_interval` finite steps
    for j in range(1, len(finite)):  # every overflow halves the scale; finite steps never shrink it
        assert scales[j] == scales[j - 1] / 2 if finite[j] == 0.0 else scales[j] in (scales[j - 1], 2 * scales[j - 1])
    assert float(np.abs(np.asarray(ts.params["dense_0"]["w"]) - first["dense_0"]["w"]).max()) > 0


def test_loss_scaled_step_needs_the_wrapped_optimizer(data):
    x, y = data
    ts = nnjax.init_train_state(_mlp(), optax.sgd(0.1), jax.random.key(0), (8,))
    with pytest.raises(TypeError, match="dynamic_loss_scale"):
        make_loss_scaled_train_step(_mlp(), LOSS, optax.sgd(0.1))(ts, (x[:8], y[:8]))


# --- Optax: accumulation, clipping, schedules with the unchanged step and fit -----------------------------


def test_multisteps_k4_on_batch_b_equals_one_step_on_batch_4b(data):
    x, y = data
    b = 16
    big = nnjax.fit(_mlp(), LOSS, optax.sgd(0.5), x[: 8 * b], y[: 8 * b], epochs=2, batch_size=4 * b, progress=False)
    accumulated = nnjax.fit(
        _mlp(),
        LOSS,
        optax.MultiSteps(optax.sgd(0.5), every_k_schedule=4),
        x[: 8 * b],
        y[: 8 * b],
        epochs=2,
        batch_size=b,
        progress=False,
    )
    # fit's epoch order is one permutation split into batches: 4 batches of b are exactly one batch of 4b
    _close(accumulated.train_state.params, big.train_state.params)
    assert int(accumulated.train_state.step) == 4 * int(big.train_state.step) == 16


def test_clip_by_global_norm_bounds_every_update(data):
    x, y = data
    opt = optax.chain(optax.clip_by_global_norm(0.01), optax.sgd(1.0))
    ts = nnjax.init_train_state(_mlp(), opt, jax.random.key(0), (8,))
    step = nnjax.make_train_step(_mlp(), LOSS, opt)
    for i in range(3):
        before = _numpy(ts.params)
        ts, _ = step(ts, (x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]))
        update = jax.tree.map(lambda a, b: a - b, _numpy(ts.params), before)
        norm = np.sqrt(sum(np.sum(np.square(u, dtype=np.float64)) for u in jax.tree.leaves(update)))
        np.testing.assert_allclose(norm, 0.01, rtol=1e-4)  # raw gradients are far larger than 0.01


def test_learning_rate_schedule_through_fit(data):
    x, y = data
    schedule = optax.piecewise_constant_schedule(0.1, {3: 0.0})  # learning rate 0 from the 4th update on
    one = nnjax.fit(_mlp(), LOSS, optax.sgd(schedule), x, y, epochs=1, batch_size=64, progress=False)
    two = nnjax.fit(_mlp(), LOSS, optax.sgd(schedule), x, y, epochs=2, batch_size=64, progress=False)
    _close(two.train_state.params, one.train_state.params, atol=0)  # nothing moves after step 3
    init = nnjax.init_train_state(_mlp(), optax.sgd(0.1), jax.random.key(0), (8,))
    moved = np.asarray(one.train_state.params["dense_0"]["w"]) - np.asarray(init.params["dense_0"]["w"])
    assert float(np.abs(moved).max()) > 1e-3
