"""The layer contract, the combinators, shape agreement, and error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import nnjax
from nnjax._src.core import child_names, kind

# Every layer of this module with an input shape it accepts: (constructor, input_shape).
LAYERS = [
    (lambda: nnjax.Dense(5), (3,)),
    (lambda: nnjax.Dense(4, use_bias=False, w_init="he_normal"), (2, 3)),
    (lambda: nnjax.Dropout(0.5), (6,)),
    (lambda: nnjax.Flatten(), (2, 3, 4)),
    (lambda: nnjax.Reshape((4, -1)), (2, 6)),
    (lambda: nnjax.Identity(), (7,)),
    (lambda: nnjax.Relu(), (3,)),
    (lambda: nnjax.Sigmoid(), (3,)),
    (lambda: nnjax.Tanh(), (3,)),
    (lambda: nnjax.LeakyRelu(0.2), (3,)),
    (lambda: nnjax.Elu(), (3,)),
    (lambda: nnjax.Gelu(), (3,)),
    (lambda: nnjax.Silu(), (3,)),
    (lambda: nnjax.Softplus(), (3,)),
    (lambda: nnjax.Softmax(), (3,)),
    (lambda: nnjax.LogSoftmax(), (3,)),
    (lambda: nnjax.Step(0.5), (3,)),
    (lambda: nnjax.StraightThroughStep(), (3,)),
    (lambda: nnjax.serial(nnjax.Dense(4), nnjax.Relu(), nnjax.Dense(2)), (3,)),
    (lambda: nnjax.residual(nnjax.Dense(3), nnjax.Tanh()), (3,)),
    (lambda: nnjax.serial(nnjax.fanout(2), nnjax.parallel(nnjax.Dense(2), nnjax.Dense(3)), nnjax.concatenate()), (4,)),
    (lambda: nnjax.serial(nnjax.fanout(2), nnjax.parallel(nnjax.Dense(3), nnjax.Identity()), nnjax.add()), (3,)),
]


@pytest.mark.parametrize("make, input_shape", LAYERS)
def test_init_output_shape_agrees_with_apply(make, input_shape):
    layer = make()
    params, state = layer.init(jax.random.key(0), input_shape)
    x = jax.random.normal(jax.random.key(1), (2, *input_shape))
    for train in (False, True):
        y, new_state = layer.apply(params, state, x, key=jax.random.key(2), train=train)
        assert y.shape[1:] == layer.output_shape(input_shape)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for leaf in jax.tree.leaves((params, state)):
        assert isinstance(leaf, jax.Array)


@pytest.mark.parametrize("make, input_shape", LAYERS)
def test_jit_vmap_and_scan_work_as_they_are(make, input_shape):
    layer = make()
    x = jax.random.normal(jax.random.key(1), (2, *input_shape))
    params, state = layer.init(jax.random.key(0), input_shape)
    eager = layer.apply(params, state, x)[0]
    jitted = jax.jit(layer.apply, static_argnames="train")(params, state, x)[0]
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    keys = jax.random.split(jax.random.key(0), 3)
    many_params, many_state = jax.vmap(lambda k: layer.init(k, input_shape))(keys)
    ys = jax.vmap(lambda p, s: layer.apply(p, s, x)[0], axis_size=3)(many_params, many_state)
    assert ys.shape == (3, *eager.shape)
    np.testing.assert_allclose(ys[0], layer.apply(*layer.init(keys[0], input_shape), x)[0], rtol=1e-6, atol=1e-6)
    _, scanned = jax.lax.scan(lambda c, xi: (c, layer.apply(params, state, xi)[0]), 0, jnp.stack([x, x]))
    np.testing.assert_allclose(scanned[1], eager, rtol=1e-6, atol=1e-6)


def test_params_read_like_the_model():
    model = nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(10))
    params, state = model.init(jax.random.key(0), (64,))
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {"dense_0": {"w": (64, 32), "b": (32,)}, "relu_1": {}, "dense_2": {"w": (32, 10), "b": (10,)}}
    assert state == {"dense_0": {}, "relu_1": {}, "dense_2": {}}
    assert child_names([nnjax.LeakyRelu(0.1), nnjax.Dense(2)]) == ["leaky_relu_0", "dense_1"]
    assert kind(nnjax.StraightThroughStep()) == "straight_through_step"


def test_dense_matches_numpy():
    layer = nnjax.Dense(3)
    params, _ = layer.init(jax.random.key(0), (4,))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    y, _ = layer.apply(params, {}, jnp.asarray(x))
    np.testing.assert_allclose(y, x @ np.asarray(params["w"]) + np.asarray(params["b"]), rtol=1e-5, atol=1e-6)


def test_dense_and_conv_draw_weights_from_their_key_and_split_it_only_for_a_random_bias():
    key = jax.random.key(3)
    glorot = nnjax.initializers.glorot_uniform()
    dense, _ = nnjax.Dense(4).init(key, (3,))  # zero biases draw nothing: the weights get the key itself
    np.testing.assert_array_equal(dense["w"], glorot(key, (3, 4)))
    np.testing.assert_array_equal(dense["b"], np.zeros(4))
    conv, _ = nnjax.Conv(2, (3, 3), use_bias=False).init(key, (5, 5, 1))
    np.testing.assert_array_equal(conv["w"], glorot(key, (3, 3, 1, 2)))
    w_key, b_key = jax.random.split(key)  # two random initializers: one key each
    dense, _ = nnjax.Dense(4, b_init="normal").init(key, (3,))
    np.testing.assert_array_equal(dense["w"], glorot(w_key, (3, 4)))
    # one compiled program (model.init on its own), against the initializer op by op: a normal draw rounds
    # differently in its last bit
    np.testing.assert_allclose(dense["b"], nnjax.initializers.normal()(b_key, (4,)), rtol=1e-6)
    jaxpr = str(jax.make_jaxpr(lambda k: nnjax.Dense(4).init(k, (3,)))(key))
    assert "random_split" not in jaxpr and jaxpr.count("random_bits") == 1  # one threefry hash to compile


def test_the_source_texts_neuron_fires():
    # inputs (0.5, 0.6), weights (0.5, 0.7), bias 0: 0.25 + 0.42 = 0.67 >= threshold 0.5 -> 1
    neuron = nnjax.serial(nnjax.Dense(1), nnjax.Step(threshold=0.5))
    params = {"dense_0": {"w": jnp.array([[0.5], [0.7]]), "b": jnp.zeros(1)}, "step_1": {}}
    weighted, _ = nnjax.Dense(1).apply(params["dense_0"], {}, jnp.array([[0.5, 0.6]]))
    np.testing.assert_allclose(weighted, [[0.67]], rtol=1e-6)
    fired, _ = neuron.apply(params, {"dense_0": {}, "step_1": {}}, jnp.array([[0.5, 0.6], [0.1, 0.2]]))
    np.testing.assert_array_equal(fired, [[1.0], [0.0]])  # 0.05 + 0.14 = 0.19 < 0.5 does not fire


def test_combinators_compute_what_they_say():
    x = jnp.arange(6.0).reshape(2, 3)
    branch = nnjax.serial(nnjax.fanout(2), nnjax.parallel(nnjax.Identity(), nnjax.Relu()), nnjax.concatenate())
    params, state = branch.init(jax.random.key(0), (3,))
    y, _ = branch.apply(params, state, x - 2.0)
    np.testing.assert_allclose(y, np.concatenate([x - 2.0, np.maximum(x - 2.0, 0)], axis=1))
    skip = nnjax.residual(nnjax.Dense(3))
    params, state = skip.init(jax.random.key(0), (3,))
    y, _ = skip.apply(params, state, x)
    w, b = params["body"]["dense_0"]["w"], params["body"]["dense_0"]["b"]
    np.testing.assert_allclose(y, x + x @ w + b, rtol=1e-6)
    total = nnjax.serial(nnjax.fanout(3), nnjax.add())
    y, _ = total.apply(*total.init(jax.random.key(0), (3,)), x)
    np.testing.assert_allclose(y, 3 * x)
    with pytest.raises(nnjax.LayerError, match="Add: argument `x` expected a tuple of arrays, given ArrayImpl"):
        nnjax.add().apply({}, {}, jnp.asarray(x))  # one array: it would have summed over the batch axis


def test_dropout_rate_is_the_drop_probability():
    layer = nnjax.Dropout(0.75)
    x = jnp.ones((1, 100_000))
    y, _ = layer.apply({}, {}, x, key=jax.random.key(0), train=True)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.25) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 4.0)  # scaled by 1 / (1 - rate)
    np.testing.assert_array_equal(layer.apply({}, {}, x)[0], x)  # identity in inference


def test_serial_splits_keys_per_layer():
    model = nnjax.serial(nnjax.Dropout(0.5), nnjax.Dropout(0.5))
    x = jnp.ones((1, 1000))
    a, _ = model.apply({"dropout_0": {}, "dropout_1": {}}, {"dropout_0": {}, "dropout_1": {}}, x,
                       key=jax.random.key(0), train=True)
    single, _ = nnjax.Dropout(0.5).apply({}, {}, x, key=jax.random.key(0), train=True)
    assert abs(float((np.asarray(a) != 0).mean()) - 0.25) < 0.05  # two independent masks
    assert not np.array_equal(np.asarray(a) != 0, np.asarray(single) != 0)


def test_gradients_of_a_network_in_float64(x64):
    model = nnjax.serial(nnjax.Dense(4), nnjax.Tanh(), nnjax.residual(nnjax.Dense(4), nnjax.Sigmoid()), nnjax.Dense(2))
    params, state = model.init(jax.random.key(0), (3,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    assert x.dtype == jnp.float64 and params["dense_0"]["w"].dtype == jnp.float64
    check_grads(jax.jit(lambda p, x: jnp.sum(model.apply(p, state, x)[0] ** 2)), (params, x), order=2)


# Errors: name the layer, its position, the argument, expected and given.


def test_wrong_width_names_layer_position_and_shapes():
    model = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(10))
    params, state = model.init(jax.random.key(0), (784,))
    with pytest.raises(nnjax.LayerError) as info:
        model.apply(params, state, jnp.ones((32, 785)))
    message = str(info.value)
    assert message.startswith("serial[0] > Dense(8)")
    assert "(batch, ..., 784)" in message and "(32, 785)" in message
    nested = nnjax.serial(nnjax.Identity(), nnjax.serial(nnjax.Dense(3), nnjax.Dense(2)))
    p, s = nested.init(jax.random.key(0), (4,))
    p["serial_1"]["dense_1"]["w"] = jnp.ones((5, 2))
    with pytest.raises(nnjax.LayerError, match=r"serial\[1\] > serial\[1\] > Dense\(2\).*\(batch, \.\.\., 5\).*\(2, 3\)"):
        jax.jit(nested.apply)(p, s, jnp.ones((2, 4)))


def test_integer_inputs_get_a_hint_to_scale():
    model = nnjax.serial(nnjax.Flatten(), nnjax.Dense(10))
    params, state = model.init(jax.random.key(0), (8, 8))
    with pytest.raises(nnjax.LayerTypeError, match=r"serial\[1\] > Dense\(10\).*uint8.*scale"):
        model.apply(params, state, jnp.ones((2, 8, 8), jnp.uint8))


def test_dropout_without_key_in_training_is_a_clear_error():
    model = nnjax.serial(nnjax.Dense(4), nnjax.Dropout(0.5))
    params, state = model.init(jax.random.key(0), (3,))
    with pytest.raises(nnjax.LayerError, match=r"serial\[1\] > Dropout\(0.5\): argument `key` is required"):
        model.apply(params, state, jnp.ones((2, 3)), train=True)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: nnjax.Dense(0), "Dense(0): argument `features` expected a positive int"),
        (lambda: nnjax.Dropout(1.0), "Dropout(1.0): argument `rate` expected a drop probability in [0, 1)"),
        (lambda: nnjax.Dense(3, w_init="glorious"), "unknown initializer 'glorious'"),
        (lambda: nnjax.serial(nnjax.Dense(3), nnjax.Relu), "did you forget to call it"),
        (lambda: nnjax.serial(), "expected at least one layer"),
        (lambda: nnjax.fanout(0), "fanout: argument `n` expected a positive int"),
    ],
)
def test_bad_configuration_is_rejected_early(make, message):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert message.lower() in str(info.value).lower()


def test_shape_errors_at_init_and_in_combinators():
    with pytest.raises(nnjax.LayerError, match="Residual: the body must keep the input shape"):
        nnjax.residual(nnjax.Dense(5)).init(jax.random.key(0), (3,))
    with pytest.raises(nnjax.LayerError, match="Reshape"):
        nnjax.Reshape((5,)).apply({}, {}, jnp.ones((2, 6)))
    with pytest.raises(nnjax.LayerError, match="parallel: argument `x` expected a tuple of 2 inputs"):
        layer = nnjax.parallel(nnjax.Identity(), nnjax.Identity())
        layer.apply({"identity_0": {}, "identity_1": {}}, {"identity_0": {}, "identity_1": {}}, jnp.ones((2, 3)))
    with pytest.raises(nnjax.LayerError, match="Concatenate"):
        nnjax.concatenate().apply({}, {}, (jnp.ones((2, 3)), jnp.ones((3, 3))))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("LoRA", "lora"),
        ("ALiBiAttention", "alibi_attention"),
        ("GPT", "gpt"),
        ("ViT", "vit"),
        ("ResNet18", "resnet18"),
        ("RMSNorm", "rms_norm"),
        ("LSTMCell", "lstm_cell"),
        ("GlobalAvgPool", "global_avg_pool"),
        ("LeakyRelu(0.1)", "leaky_relu"),
        ("my_layer", "my_layer"),
    ],
)
def test_kind_snake_cases_acronyms_as_read(name, expected):
    assert kind(nnjax.Layer(None, None, name)) == expected


def test_serial_keeps_given_names_when_a_layer_is_inserted():
    backbone = nnjax.serial(nnjax.Dense(4), nnjax.Relu())
    before = nnjax.serial(("backbone", backbone), head=nnjax.Dense(2))
    after = nnjax.serial(("backbone", backbone), nnjax.Dropout(0.5), head=nnjax.Dense(2))
    p_before, _ = before.init(jax.random.key(0), (3,))
    p_after, s_after = after.init(jax.random.key(0), (3,))
    assert list(p_before) == ["backbone", "head"]
    assert list(p_after) == ["backbone", "dropout_1", "head"]
    # the old params drop into the new model by name; the inserted Dropout has none
    x = jax.random.normal(jax.random.key(1), (5, 3))
    y_before = before.apply(p_before, {"backbone": s_after["backbone"], "head": {}}, x)[0]
    y_after = after.apply({**p_before, "dropout_1": {}}, s_after, x)[0]
    np.testing.assert_allclose(y_after, y_before, rtol=1e-6)
    expected = jnp.maximum(x @ p_before["backbone"]["dense_0"]["w"] + p_before["backbone"]["dense_0"]["b"], 0)
    np.testing.assert_allclose(y_after, expected @ p_before["head"]["w"] + p_before["head"]["b"], rtol=1e-5)
    rows = nnjax.summarize(after, (3,), flops=False).rows
    assert [r.path for r in rows] == ["backbone", "backbone/dense_0", "backbone/relu_1", "dropout_1", "head"]


def test_serial_name_errors():
    with pytest.raises(ValueError, match=r"layers 0 and 1 are both named 'head'"):
        nnjax.serial(("head", nnjax.Dense(2)), head=nnjax.Dense(2))
    with pytest.raises(ValueError, match=r"layers 0 and 2 are both named 'dense_2'"):
        nnjax.serial(("dense_2", nnjax.Dense(2)), nnjax.Relu(), nnjax.Dense(2))
    with pytest.raises(ValueError, match=r"without '/', given 'a/b'"):
        nnjax.serial(("a/b", nnjax.Dense(2)))
    with pytest.raises(TypeError, match=r"argument 1 expected a Layer, given function.*Relu\(\)"):
        nnjax.serial(nnjax.Dense(2), act=nnjax.Relu)
