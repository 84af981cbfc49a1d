"""BatchNorm, LayerNorm, GroupNorm, RMSNorm: against NumPy formulas, state updates, gradients, transforms, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nnjax._src.basic import Dense
from nnjax._src.conv import Conv
from nnjax._src.core import serial
from nnjax._src.errors import LayerError, LayerTypeError
from nnjax._src.normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm


def _data(shape, seed=0, loc=0.0, scale=1.0):
    return (loc + scale * np.random.RandomState(seed).standard_normal(shape)).astype(np.float32)


def _random_affine(params, seed=3):
    return {
        k: jnp.asarray(_data(v.shape, seed + i, 1.0 if k == "scale" else 0.0, 0.5))
        for i, (k, v) in enumerate(params.items())
    }


def test_batchnorm_train_eval_and_running_averages_by_hand():
    layer = BatchNorm(momentum=0.9, epsilon=1e-3)
    x = _data((6, 4, 5, 3), loc=2.0, scale=3.0)  # images: statistics over batch, height and width
    params, state = layer.init(jax.random.key(0), x.shape[1:])
    assert jax.tree.map(jnp.shape, (params, state)) == ({"scale": (3,), "bias": (3,)}, {"mean": (3,), "var": (3,)})
    np.testing.assert_array_equal(state["mean"], 0.0), np.testing.assert_array_equal(state["var"], 1.0)
    params = _random_affine(params)
    scale, bias = np.asarray(params["scale"]), np.asarray(params["bias"])

    y, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased variance
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * scale + bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"], 0.9 * 0.0 + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.9 * 1.0 + 0.1 * var, rtol=1e-5)

    y_eval, same_state = layer.apply(params, new_state, jnp.asarray(x), train=False)
    assert same_state is new_state
    running_mean, running_var = np.asarray(new_state["mean"]), np.asarray(new_state["var"])
    expected = (x - running_mean) / np.sqrt(running_var + 1e-3) * scale + bias
    np.testing.assert_allclose(y_eval, expected, rtol=1e-4, atol=1e-4)

    # a second training step averages again
    _, state2 = layer.apply(params, new_state, jnp.asarray(2 * x), train=True)
    np.testing.assert_allclose(state2["mean"], 0.9 * running_mean + 0.1 * 2 * mean, rtol=1e-5)
    np.testing.assert_allclose(state2["var"], 0.9 * running_var + 0.1 * 4 * var, rtol=1e-5)


def test_batchnorm_without_affine_and_gradient_through_batch_statistics():
    layer = BatchNorm(use_scale=False, use_bias=False)
    params, state = layer.init(jax.random.key(0), (4,))
    assert params == {}
    x = jnp.asarray(_data((8, 4)))
    y = np.asarray(layer.apply(params, state, x, train=True)[0])  # statistics in NumPy: no eager programs
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5), np.testing.assert_allclose(y.var(0), 1.0, rtol=1e-3)
    # normalized outputs sum to zero per feature, whatever x: the gradient of sum(y) wrt x is zero
    grad = jax.jit(jax.grad(lambda x: layer.apply(params, state, x, train=True)[0].sum()))(x)  # one program
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)


def test_batchnorm_axis_name_averages_statistics_across_shards():
    layer = BatchNorm(momentum=0.5, axis_name="devices")
    full = BatchNorm(momentum=0.5)
    x = _data((4, 8, 3), loc=1.0, scale=2.0)  # 4 shards of a batch of 32
    params, state = layer.init(jax.random.key(0), (3,))
    params = _random_affine(params)

    @jax.jit  # the three passes as one compiled program (eagerly, every op of each compiles on its own)
    def run(x):
        sharded = jax.vmap(lambda xs: layer.apply(params, state, xs, train=True), axis_name="devices")(x)
        local = jax.vmap(lambda xs: full.apply(params, state, xs, train=True))(x)
        return sharded, full.apply(params, state, x.reshape(32, 3), train=True), local[0]

    (ys, states), (y_full, state_full), ys_local = jax.tree.map(np.asarray, run(x))
    np.testing.assert_allclose(ys.reshape(32, 3), y_full, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(states[name], np.broadcast_to(state_full[name], (4, 3)), rtol=1e-5)
    # without axis_name each shard would use its own statistics
    assert not np.allclose(ys_local.reshape(32, 3), y_full, atol=1e-3)


def test_layer_group_rms_norm_match_numpy():
    x = _data((3, 4, 5, 6), loc=1.0, scale=2.0)

    layer = LayerNorm(epsilon=1e-3)
    params = _random_affine(layer.init(jax.random.key(0), x.shape[1:])[0])
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-3) * np.asarray(params["scale"]) + np.asarray(params["bias"])
    np.testing.assert_allclose(layer.apply(params, {}, jnp.asarray(x))[0], expected, rtol=1e-4, atol=1e-4)

    layer = GroupNorm(3, epsilon=1e-3)
    params = _random_affine(layer.init(jax.random.key(0), x.shape[1:])[0])
    groups = x.reshape(3, 4, 5, 3, 2)  # channel c is in group c // 2
    mean, var = groups.mean(axis=(1, 2, 4), keepdims=True), groups.var(axis=(1, 2, 4), keepdims=True)
    normalized = ((groups - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    expected = normalized * np.asarray(params["scale"]) + np.asarray(params["bias"])
    np.testing.assert_allclose(layer.apply(params, {}, jnp.asarray(x))[0], expected, rtol=1e-4, atol=1e-4)

    layer = RMSNorm(epsilon=1e-3)
    params = _random_affine(layer.init(jax.random.key(0), x.shape[1:])[0])
    assert list(params) == ["scale"]
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-3) * np.asarray(params["scale"])
    np.testing.assert_allclose(layer.apply(params, {}, jnp.asarray(x))[0], expected, rtol=1e-4, atol=1e-4)


def test_group_norm_extremes_are_layer_and_instance_norm():
    x = jnp.asarray(_data((2, 3, 4, 6)))
    one, _ = GroupNorm(1).apply({}, {}, x)
    flat = np.asarray(x).reshape(2, -1)
    expected = ((flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(one, expected, rtol=1e-4, atol=1e-4)
    instance, _ = GroupNorm(6).apply({}, {}, x)
    np.testing.assert_allclose(np.asarray(instance).mean(axis=(1, 2)), 0.0, atol=1e-5)


@pytest.mark.parametrize(
    "layer, shape",
    [(BatchNorm(), (3, 2)), (LayerNorm(), (3, 4)), (GroupNorm(2), (3, 4)), (RMSNorm(), (5,))],
    ids=str,
)
def test_gradients_order_2_float64(x64, layer, shape):
    params, state = layer.init(jax.random.key(0), shape, jnp.float64)
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves((params, state)))
    # NumPy arguments: check_grads' finite-difference steps (x + eps * t) run in NumPy, not as eager programs
    params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * _data(p.shape, 7).astype(np.float64), params)
    x = _data((4, *shape), 2).astype(np.float64)
    check_grads(jax.jit(lambda p, x: layer.apply(p, state, x, train=True)[0]), (params, x), order=2, modes=("rev",))


@pytest.mark.parametrize("layer", [BatchNorm(), LayerNorm(), GroupNorm(2), RMSNorm()], ids=str)
@pytest.mark.parametrize("shape", [(4,), (5, 4), (3, 5, 4)])
def test_shape_agreement(layer, shape):
    # init and apply traced abstractly: the same shapes as run, nothing compiled
    params, state = jax.eval_shape(lambda key: layer.init(key, shape), jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    y = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, train=True)[0], params, state, x)
    assert layer.output_shape(shape) == y.shape[1:] == shape


def test_jit_vmap_over_models_and_serial_state():
    model = serial(Conv(4, 3), BatchNorm(momentum=0.8), GroupNorm(2), Dense(2), LayerNorm(), RMSNorm())
    params, state = model.init(jax.random.key(0), (5, 5, 1))
    assert list(params) == ["conv_0", "batch_norm_1", "group_norm_2", "dense_3", "layer_norm_4", "rms_norm_5"]
    x = jnp.asarray(_data((6, 5, 5, 1)))
    apply = jax.jit(model.apply, static_argnames="train")
    y, new_state = apply(params, state, x, train=True)
    y_eager, state_eager = model.apply(params, state, x, train=True)
    np.testing.assert_allclose(y, y_eager, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        new_state["batch_norm_1"]["mean"], state_eager["batch_norm_1"]["mean"], rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(new_state["batch_norm_1"]["mean"], 0.0)

    keys = jax.random.split(jax.random.key(1), 3)
    ps, ss = jax.jit(jax.vmap(lambda k: model.init(k, (5, 5, 1))))(keys)
    ys, states = jax.jit(jax.vmap(lambda p, s: model.apply(p, s, x, train=True)))(ps, ss)
    assert ys.shape == (3, 6, 5, 5, 2) and states["batch_norm_1"]["var"].shape == (3, 4)
    one = jax.tree.map(lambda a: np.asarray(a)[1], (ps, ss))  # NumPy: no eager indexing programs
    np.testing.assert_allclose(ys[1], apply(*one, x, train=True)[0], rtol=1e-4, atol=1e-5)


def test_errors():
    layer = BatchNorm()
    params, state = layer.init(jax.random.key(0), (8, 8, 3))
    with pytest.raises(
        LayerError,
        match=r"BatchNorm: argument `x` expected shape \(batch, \.\.\., 3\), given \(2, 3, 8, 8\)\..*channels-last",
    ):
        layer.apply(params, state, np.zeros((2, 3, 8, 8), np.float32), train=True)
    with pytest.raises(
        LayerTypeError, match=r"LayerNorm: argument `x` expected a floating-point array, given dtype uint8"
    ):
        LayerNorm().apply({}, {}, np.zeros((2, 4), np.uint8))
    with pytest.raises(
        LayerError, match=r"^serial\[1\] > GroupNorm\(3\): channels \(=4.*must be divisible by `num_groups` \(=3\)"
    ):
        serial(Dense(4), GroupNorm(3)).init(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match=r"BatchNorm: argument `momentum` expected a value in \[0, 1\], given 1.5"):
        BatchNorm(momentum=1.5)
    with pytest.raises(ValueError, match=r"RMSNorm: argument `epsilon` expected a positive float, given 0"):
        RMSNorm(epsilon=0)
    with pytest.raises(ValueError, match=r"GroupNorm\(0\): argument `num_groups` expected a positive int"):
        GroupNorm(0)
