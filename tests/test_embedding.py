"""Embedding, tied output, sinusoidal / learned positions and RoPE against NumPy and their defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nnjax._src.basic import Dense
from nnjax._src.core import serial
from nnjax._src.embedding import (
    Embedding,
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    apply_rope,
    embedding_attend,
    sinusoidal_positions,
)
from nnjax._src.errors import LayerError, LayerTypeError

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)


def normal(*shape, dtype=np.float32):
    """Test data from NumPy (no JAX random programs to compile)."""
    return jnp.asarray(RNG.standard_normal(shape).astype(dtype))


def test_embedding_lookup_matches_numpy_table_rows():
    layer = Embedding(7, 5)
    params, state = layer.init(KEY, (4,))
    assert jax.tree.map(jnp.shape, params) == {"table": (7, 5)}
    tokens = np.array([[0, 6, 3, 3], [1, 2, 5, 4]], np.int32)
    y, new_state = layer.apply(params, state, tokens)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(params["table"])[tokens])
    assert y.shape == (2, 4, 5) and new_state == {}
    assert layer.input_dtype == jnp.int32 and layer.name == "Embedding(7, 5)"


def test_embedding_init_scale_is_one_over_sqrt_features():
    params, _ = Embedding(4000, 64).init(KEY, (3,))
    assert np.std(np.asarray(params["table"])) == pytest.approx(1 / 8, rel=0.05)


def test_embedding_attend_is_x_times_table_transposed():
    params, _ = Embedding(9, 6).init(KEY, (3,))
    x = np.asarray(normal(2, 3, 6))
    logits = embedding_attend(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(logits), x @ np.asarray(params["table"]).T, rtol=1e-5, atol=1e-6)
    assert logits.shape == (2, 3, 9)


def test_embedding_rejects_float_tokens_and_out_of_range_ids():
    layer = Embedding(5, 3)
    params, state = layer.init(KEY, (2,))
    # NumPy inputs where the error comes before anything runs (jnp.zeros and jnp.array compile per shape)
    with pytest.raises(
        LayerTypeError, match=r"Embedding\(5, 3\): argument `x` expected integer token ids, given dtype float32"
    ):
        layer.apply(params, state, np.zeros((1, 2), np.float32))
    with pytest.raises(LayerError, match=r"Embedding\(5, 3\): .*ids in \[0, 5\), given ids in \[0, 5\].*at least 6"):
        layer.apply(params, state, jnp.array([[0, 5]]))
    with pytest.raises(LayerError, match=r"given ids in \[-1, 1\]"):
        layer.apply(params, state, jnp.array([[-1, 1]]))
    # Under jit the ids are not concrete: no value check, but out-of-range ids (negative too) give NaN rows.
    looked_up = np.asarray(jax.jit(lambda t: layer.apply(params, state, t)[0])(np.array([[0, 4, 5, -1]], np.int32)))
    np.testing.assert_array_equal(looked_up[0, :2], np.asarray(params["table"])[[0, 4]])
    assert np.isnan(looked_up[0, 2:]).all()
    with pytest.raises(LayerError, match=r"embedding_attend: argument `x` expected shape \(\.\.\., 3\)"):
        embedding_attend(params, np.ones((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"argument `vocab_size` expected a positive int, given 0"):
        Embedding(0, 3)


def test_embedding_in_serial_infers_shapes_from_int_inputs():
    model = serial(Embedding(10, 8), Dense(3))
    params, state = jax.eval_shape(lambda key: model.init(key, (5,)), KEY)  # traced: the shapes, nothing compiled
    assert jax.tree.map(jnp.shape, params) == {"embedding_0": {"table": (10, 8)}, "dense_1": {"w": (8, 3), "b": (3,)}}
    y = jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], params, state, jax.ShapeDtypeStruct((2, 5), jnp.int32))
    assert model.output_shape((5,)) == (5, 3) == y.shape[1:]


def test_sinusoidal_positions_match_the_formula():
    length, features = 6, 7  # odd features: the last column is a sine
    table = np.asarray(sinusoidal_positions(length, features))
    for p in range(length):
        for j in range(features):
            angle = p / 10000 ** ((j - j % 2) / features)
            expected = np.sin(angle) if j % 2 == 0 else np.cos(angle)
            assert table[p, j] == pytest.approx(expected, abs=1e-6)


def test_sinusoidal_encoding_adds_the_table():
    layer = SinusoidalPositionalEncoding()
    params, state = layer.init(KEY, (5, 4))
    x = np.asarray(normal(3, 5, 4))
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(
        np.asarray(y) - x, np.broadcast_to(np.asarray(sinusoidal_positions(5, 4)), (3, 5, 4)), atol=1e-6
    )
    assert params == {} and layer.output_shape((5, 4)) == (5, 4)
    with pytest.raises(
        LayerError,
        match=r"SinusoidalPositionalEncoding: argument `x` expected .*\(batch, T, features\), given shape \(3, 4\)",
    ):
        layer.apply(params, state, np.ones((3, 4), np.float32))


def test_learned_positional_embedding_adds_its_rows_and_checks_max_len():
    layer = LearnedPositionalEmbedding(8)
    params, state = layer.init(KEY, (5, 4))
    assert jax.tree.map(jnp.shape, params) == {"table": (8, 4)}
    x = np.asarray(normal(2, 5, 4))
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(
        np.asarray(y) - x, np.broadcast_to(np.asarray(params["table"])[:5], (2, 5, 4)), atol=1e-6
    )
    assert layer.apply(params, state, x[:, :3])[0].shape == (2, 3, 4)  # shorter sequences are fine
    with pytest.raises(
        LayerError, match=r"LearnedPositionalEmbedding\(8\): argument `input_shape` expected T <= max_len=8, given T=9"
    ):
        layer.init(KEY, (9, 4))
    with pytest.raises(LayerError, match=r"expected shape \(batch, T <= 8, 4\), given \(2, 9, 4\)"):
        layer.apply(params, state, np.ones((2, 9, 4), np.float32))


def _rope_numpy(x, positions, base=10000.0):
    """RoPE as complex multiplication: pair (x_i, x_{i+D/2}) is the complex number x_i + i x_{i+D/2}."""
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    theta = base ** (-2.0 * np.arange(half) / x.shape[-1])
    rotation = np.exp(1j * positions[:, None] * theta)  # (T, D/2)
    z = z * rotation[None, :, None, :]  # (B, T, H, D/2)
    return np.concatenate([z.real, z.imag], axis=-1)


def test_rope_matches_complex_rotation_and_keeps_norms():
    x = np.asarray(normal(2, 5, 3, 8))
    positions = np.arange(5)
    rope = jax.jit(apply_rope)  # one compiled program per input shape (eagerly, one per op)
    y = np.asarray(rope(x, positions))
    np.testing.assert_allclose(y, _rope_numpy(x, positions), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-6)  # position 0 is not rotated
    # (batch, T) positions and 3-D inputs (no head axis) work too.
    per_batch = rope(x[..., 0, :], np.stack([np.arange(5), np.arange(5) + 2]))
    np.testing.assert_allclose(
        np.asarray(per_batch[1]), _rope_numpy(x[1:, :, :1], positions + 2)[0, :, 0], rtol=1e-5, atol=1e-5
    )


def test_rope_dot_products_depend_only_on_relative_position(x64):
    q, k = np.asarray(normal(2, 1, 1, 1, 16, dtype=np.float64))
    rotated_dot = jax.jit(lambda p, r: jnp.sum(apply_rope(q, p) * apply_rope(k, r)))  # compiled once for every pair

    def score(p, r):
        return float(rotated_dot(np.array([p]), np.array([r])))

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-10) == pytest.approx(score(2, 0), abs=1e-10)
    assert score(5, 5) == pytest.approx(float(np.sum(q * k)), abs=1e-10)
    assert abs(score(3, 1) - score(1, 3)) > 1e-3  # the sign of the offset matters


def test_rope_errors():
    with pytest.raises(LayerError, match=r"apply_rope: argument `x` expected .*even head_dim\), given \(1, 2, 3\)"):
        apply_rope(np.ones((1, 2, 3), np.float32), np.arange(2))
    with pytest.raises(
        LayerError, match=r"apply_rope: argument `positions` expected shape \(2,\) or \(1, 2\), given \(3,\)"
    ):
        apply_rope(np.ones((1, 2, 4), np.float32), np.arange(3))


def test_gradients_float64(x64):
    table_params, _ = Embedding(6, 4).init(KEY, (3,), jnp.float64)
    tokens = np.array([[0, 5, 2]], np.int32)
    h = np.asarray(normal(1, 3, 4, dtype=np.float64))
    learned = LearnedPositionalEmbedding(4)
    pos_params, _ = learned.init(KEY, (3, 4), jnp.float64)
    # NumPy arguments: check_grads' finite-difference steps (x + eps * t) run in NumPy, not as eager programs
    table_params, pos_params = jax.tree.map(np.asarray, (table_params, pos_params))

    def f(table, pos, h):
        e = Embedding(6, 4).apply(table, {}, tokens)[0] + h
        e = learned.apply(pos, {}, e)[0]
        e = apply_rope(SinusoidalPositionalEncoding().apply({}, {}, e)[0], jnp.arange(3))
        return jnp.sum(jnp.tanh(embedding_attend(table, e)))

    check_grads(jax.jit(f), (table_params, pos_params, h), order=2, atol=1e-5, rtol=1e-5)


def test_jit_and_vmap_over_models():
    layer = serial(Embedding(10, 4), LearnedPositionalEmbedding(6))
    tokens = np.array([[1, 2, 3], [9, 0, 0]], np.int32)
    params, state = jax.jit(jax.vmap(lambda k: layer.init(k, (3,))))(jax.random.split(KEY, 3))  # an ensemble of 3
    apply = lambda p, s: layer.apply(p, s, tokens)[0]
    ys = jax.jit(jax.vmap(apply))(params, state)
    assert ys.shape == (3, 2, 3, 4)
    for i in range(3):
        p_i, s_i = jax.tree.map(lambda a, i=i: np.asarray(a)[i], (params, state))  # NumPy: no eager indexing
        np.testing.assert_allclose(np.asarray(ys[i]), np.asarray(apply(p_i, s_i)), rtol=1e-6)  # vmapped jit == eager


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (Embedding(11, 6), (5,)),
        (SinusoidalPositionalEncoding(), (5, 6)),
        (LearnedPositionalEmbedding(9), (5, 6)),
        (serial(Embedding(11, 6), SinusoidalPositionalEncoding(), LearnedPositionalEmbedding(5)), (5,)),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_output_shape_agrees_with_apply(layer, input_shape):
    # init and apply traced abstractly: the same shapes as run, nothing compiled
    params, state = jax.eval_shape(lambda key: layer.init(key, input_shape), KEY)
    x = jax.ShapeDtypeStruct((2, *input_shape), layer.input_dtype or jnp.float32)
    assert layer.output_shape(input_shape) == jax.eval_shape(layer.apply, params, state, x)[0].shape[1:]
