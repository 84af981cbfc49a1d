"""MultiHeadAttention and the Transformer blocks against a NumPy softmax reference and their defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from traced_init import param_names

from nnjax._src.attention import (
    MultiHeadAttention,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    reference_attention,
)
from nnjax._src.core import serial
from nnjax._src.embedding import Embedding, LearnedPositionalEmbedding
from nnjax._src.errors import LayerError

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)


def normal(*shape, dtype=np.float32):
    """Test data from NumPy (no JAX random programs to compile), as NumPy arrays: edits and slices of them are
    NumPy operations too, where on JAX arrays each is an eager program compiled for its shape."""
    return RNG.standard_normal(shape).astype(dtype)


def init(layer, input_shape, dtype=np.float32):
    """``layer.init``'s parameters and (empty) state, traced for their shapes, the parameters' values from NumPy
    at about Glorot's scale: eager ``init`` compiles a random-number program for every new weight shape
    (~0.3 s each). The tests using this hold for any parameters; ``init`` itself runs in
    test_names_and_param_keys, test_attention_dropout_needs_a_key_and_is_reproducible and
    test_jit_and_vmap_over_models."""
    shapes, state = jax.eval_shape(lambda: layer.init(KEY, input_shape, dtype))
    assert not jax.tree.leaves(state)
    return jax.tree.map(lambda s: 0.3 * normal(*s.shape, dtype=s.dtype), shapes), state


def compiled(layer):
    """``layer.apply`` in inference mode as one compiled program: compiling once is cheaper than op-by-op dispatch."""
    return jax.jit(lambda params, state, x: layer.apply(params, state, x)[0])


def numpy_rope(x):
    """Rotary position embedding of ``(batch, T, heads, D)`` at positions 0..T-1: feature pair (i, i + D/2)
    at position p turned by the angle p * 10000**(-2i / D)."""
    half = x.shape[-1] // 2
    angles = np.arange(x.shape[1])[:, None] * 10_000.0 ** (-np.arange(half) * 2.0 / x.shape[-1])  # (T, D/2)
    sin, cos = np.sin(angles)[None, :, None], np.cos(angles)[None, :, None]
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)


def numpy_attention(params, x, context=None, mask=None, causal=False, rope=False):
    """Multi-head attention in float64 NumPy: softmax(q k^T / sqrt(d)) v per batch and head, heads merged by reshape."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    c = x if context is None else np.asarray(context, np.float64)
    q = np.einsum("btd,dnh->btnh", x, p["query"]["w"]) + p["query"]["b"]
    k = np.einsum("bsd,dnh->bsnh", c, p["key"]["w"]) + p["key"]["b"]
    v = np.einsum("bsd,dnh->bsnh", c, p["value"]["w"]) + p["value"]["b"]
    if rope:
        q, k = numpy_rope(q), numpy_rope(k)
    (batch, t, heads, size), s = q.shape, k.shape[1]
    out = np.zeros((batch, t, heads, size))
    for b in range(batch):
        allowed = np.ones((t, s), bool)
        if causal:
            allowed &= np.tril(np.ones((t, s), bool))
        if mask is not None:
            m = np.asarray(mask[b], bool)
            allowed &= m[None, :] if m.ndim == 1 else m
        for n in range(heads):
            logits = np.where(allowed, q[b, :, n] @ k[b, :, n].T / np.sqrt(size), -np.inf)  # (T, S)
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[b, :, n] = (weights / weights.sum(axis=1, keepdims=True)) @ v[b, :, n]
    merged = out.reshape(batch, t, heads * size)  # (B, T, N * H)
    return merged @ p["out"]["w"].reshape(heads * size, -1) + p["out"]["b"]


@pytest.mark.parametrize("implementation", [None, "reference"])
@pytest.mark.parametrize(
    "causal, use_mask, rope", [(False, False, False), (True, False, False), (False, True, False), (True, True, True)]
)
def test_self_attention_matches_numpy(implementation, causal, use_mask, rope):
    layer = MultiHeadAttention(3, causal=causal, use_rope=rope, implementation=implementation)
    params, state = init(layer, (5, 12))
    assert jax.tree.map(np.shape, params) == {
        "query": {"w": (12, 3, 4), "b": (3, 4)},
        "key": {"w": (12, 3, 4), "b": (3, 4)},
        "value": {"w": (12, 3, 4), "b": (3, 4)},
        "out": {"w": (3, 4, 12), "b": (12,)},
    }
    x = normal(2, 5, 12)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool) if use_mask else None
    y = compiled(layer)(params, state, x if mask is None else {"x": x, "mask": mask})
    expected = numpy_attention(params, x, mask=mask, causal=causal, rope=rope)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=2e-5, atol=2e-5)


def test_fused_path_equals_reference_path():
    fused, reference = (
        MultiHeadAttention(4, causal=True),
        MultiHeadAttention(4, causal=True, implementation="reference"),
    )
    params, state = init(fused, (7, 16))
    x = normal(3, 7, 16)
    mask = (RNG.random((3, 7, 7)) < 0.7) | np.eye(7, dtype=bool)[None]
    both = jax.jit(lambda p, inputs: (fused.apply(p, state, inputs)[0], reference.apply(p, state, inputs)[0]))
    for inputs in (x, {"x": x, "mask": mask}, {"x": x, "mask": mask[:, 0]}):
        a, b = both(params, inputs)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    eager = fused.apply(params, state, inputs)[0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(eager), rtol=1e-5, atol=1e-5)  # jit == eager
    q, k, v = normal(2, 4, 3, 8), normal(2, 6, 3, 8), normal(2, 6, 3, 8)
    reference_and_jax = jax.jit(lambda q, k, v: (reference_attention(q, k, v), jax.nn.dot_product_attention(q, k, v)))
    np.testing.assert_allclose(*map(np.asarray, reference_and_jax(q, k, v)), rtol=1e-5, atol=1e-5)


def test_cross_attention_shapes_and_values():
    layer = MultiHeadAttention(2, head_dim=3, out_features=5)
    params, state = init(layer, {"x": (4, 6), "context": (7, 10)})
    assert params["query"]["w"].shape == (6, 2, 3) and params["key"]["w"].shape == (10, 2, 3)
    assert params["out"]["w"].shape == (2, 3, 5)
    x, context = normal(2, 4, 6), normal(2, 7, 10)
    mask = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1]], bool)
    y = compiled(layer)(params, state, {"x": x, "context": context, "mask": mask})
    assert y.shape == (2, 4, 5)
    np.testing.assert_allclose(np.asarray(y), numpy_attention(params, x, context, mask), rtol=2e-5, atol=2e-5)
    assert layer.output_shape({"x": (4, 6), "context": (7, 10)}) == (4, 5)


def test_causal_mask_hides_the_future():
    layer = MultiHeadAttention(2, causal=True)
    params, state = init(layer, (6, 8))
    x = normal(1, 6, 8)
    perturbed = x.copy()
    perturbed[:, 4] += 10.0
    apply = compiled(layer)
    y, y_perturbed = np.asarray(apply(params, state, x)), np.asarray(apply(params, state, perturbed))
    np.testing.assert_allclose(y[:, :4], y_perturbed[:, :4], rtol=1e-6, atol=1e-6)
    assert not np.allclose(y[:, 4:], y_perturbed[:, 4:])


@pytest.mark.parametrize("implementation", [None, "reference"])
def test_padding_mask_ignores_masked_keys(implementation):
    layer = MultiHeadAttention(2, implementation=implementation)
    params, state = init(layer, {"x": (3, 8), "context": (5, 8)})
    x, context = normal(2, 3, 8), normal(2, 5, 8)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)
    changed = context.copy()
    changed[:, 3:], changed[1, 2] = 100.0, -50.0
    apply = compiled(layer)
    y = apply(params, state, {"x": x, "context": context, "mask": mask})
    y_changed = apply(params, state, {"x": x, "context": changed, "mask": mask})
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_changed), rtol=1e-6, atol=1e-6)
    # 0/1 integer masks mean the same as booleans.
    y_int = layer.apply(params, state, {"x": x, "context": context, "mask": mask.astype(np.int32)})[0]
    np.testing.assert_allclose(np.asarray(y_int), np.asarray(y), rtol=1e-6)


def test_self_attention_padding_keeps_unpadded_positions():
    layer = serial(TransformerEncoderBlock(2, 16), TransformerEncoderBlock(2, 16))
    params, state = init(layer, {"x": (5, 8), "mask": (5,)})
    x = normal(1, 5, 8)
    mask = np.array([[1, 1, 1, 0, 0]], bool)
    changed = x.copy()
    changed[:, 3:] = 7.0

    @jax.jit
    def apply(params, x, mask):
        out = layer.apply(params, state, {"x": x, "mask": mask})[0]
        assert set(out) == {"x", "mask"} and out["mask"] is mask  # blocks pass the mask on (checked as it traces)
        return out["x"]

    out, out_changed = np.asarray(apply(params, x, mask)), np.asarray(apply(params, changed, mask))
    np.testing.assert_allclose(out[:, :3], out_changed[:, :3], rtol=1e-5, atol=1e-5)


def test_attention_dropout_needs_a_key_and_is_reproducible():
    layer = MultiHeadAttention(2, dropout_rate=0.5)
    params, state = layer.init(KEY, (6, 8))  # init's scale: the unbiasedness check's margin depends on it
    # Data of its own, whatever the other tests drew from RNG before (their order moves it): the mean's largest
    # deviation below is 0.047 at this draw, and above atol=0.1 at about one draw of x in ten.
    x = np.random.default_rng(1).standard_normal((2, 6, 8)).astype(np.float32)
    with pytest.raises(LayerError, match=r"MultiHeadAttention\(2\): argument `key` is required when train=True"):
        layer.apply(params, state, x, train=True)
    evaluation = np.asarray(compiled(layer)(params, state, x))
    # 1000 keys split from one inside the program (an eager split compiles a program of its own)
    train = jax.jit(
        lambda key: jax.vmap(lambda k: layer.apply(params, state, x, key=k, train=True)[0])(jax.random.split(key, 1000))
    )
    outputs = np.asarray(train(KEY))
    np.testing.assert_array_equal(outputs, np.asarray(train(KEY)))  # same keys, same drops
    assert not np.allclose(outputs[0], evaluation) and not np.allclose(outputs[0], outputs[1])
    # Averaged over many keys, dropping weights and rescaling by 1/(1 - rate) is unbiased.
    np.testing.assert_allclose(outputs.mean(0), evaluation, atol=0.1)


def test_encoder_block_is_pre_norm_attention_then_mlp():
    block = TransformerEncoderBlock(2, 12)
    params, state = init(block, (4, 6))
    x = normal(2, 4, 6)
    y = compiled(block)(params, state, x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def layer_norm(q, h):
        return (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6) * q["scale"] + q["bias"]

    def gelu(h):  # the tanh approximation, jax.nn.gelu's default
        return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))

    h = np.asarray(x, np.float64)
    h = h + numpy_attention(params["attention"], layer_norm(p["attention_norm"], h))
    hidden = gelu(layer_norm(p["mlp_norm"], h) @ p["mlp"]["hidden"]["w"] + p["mlp"]["hidden"]["b"])
    h = h + hidden @ p["mlp"]["out"]["w"] + p["mlp"]["out"]["b"]
    np.testing.assert_allclose(np.asarray(y), h, rtol=1e-4, atol=1e-4)


def test_decoder_block_is_causal_and_uses_the_context():
    block = TransformerDecoderBlock(2, 16, cross_attention=True)
    params, state = init(block, {"x": (5, 8), "context": (3, 4)})
    assert param_names(block, {"x": (5, 8), "context": (3, 4)}) == [
        "self_attention_norm",
        "self_attention",
        "cross_attention_norm",
        "cross_attention",
        "mlp_norm",
        "mlp",
    ]
    x, context = normal(2, 5, 8), normal(2, 3, 4)
    future, changed_context = x.copy(), context.copy()
    future[:, 3] += 5.0
    changed_context[:, 2] = 9.0
    apply = compiled(block)
    y = np.asarray(apply(params, state, {"x": x, "context": context})["x"])
    y_future = np.asarray(apply(params, state, {"x": future, "context": context})["x"])
    y_context = apply(params, state, {"x": x, "context": context + 1.0})["x"]
    np.testing.assert_allclose(y[:, :3], y_future[:, :3], rtol=1e-5, atol=1e-5)
    assert not np.allclose(y[:, 3:], y_future[:, 3:]) and not np.allclose(y, y_context)
    context_mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    masked = apply(params, state, {"x": x, "context": context, "context_mask": context_mask})
    changed = {"x": x, "context": changed_context, "context_mask": context_mask}
    masked_changed = apply(params, state, changed)
    np.testing.assert_allclose(np.asarray(masked["x"]), np.asarray(masked_changed["x"]), rtol=1e-5, atol=1e-5)


def test_block_dropout():
    block = TransformerDecoderBlock(2, 16, dropout_rate=0.2)
    params, state = init(block, (5, 8))
    x = normal(2, 5, 8)
    with pytest.raises(
        LayerError, match=r"TransformerDecoderBlock\(2, 16\): argument `key` is required when train=True"
    ):
        block.apply(params, state, x, train=True)
    train = jax.jit(lambda k: block.apply(params, state, x, key=k, train=True)[0])
    a = train(KEY)
    assert not np.allclose(a, compiled(block)(params, state, x)) and not np.allclose(a, train(jax.random.key(1)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(train(KEY)))


ENCODER_SHAPE = {"x": (3, 4), "mask": (3,)}
DECODER_SHAPE = {"x": (3, 4), "context": (2, 4)}
MHA_SHAPE = {"x": (3, 4), "context": (2, 3), "mask": (3, 2)}


@pytest.mark.parametrize(
    "layer, input_shape, order",
    [
        (MultiHeadAttention(2, use_rope=True), MHA_SHAPE, 1),
        (TransformerEncoderBlock(2, 6), ENCODER_SHAPE, 1),
        (TransformerDecoderBlock(2, 6, cross_attention=True, use_rope=True), DECODER_SHAPE, 1),
        pytest.param(MultiHeadAttention(2, use_rope=True), MHA_SHAPE, 2, marks=pytest.mark.slow),
        pytest.param(TransformerEncoderBlock(2, 6), ENCODER_SHAPE, 2, marks=pytest.mark.slow),
        pytest.param(
            TransformerDecoderBlock(2, 6, cross_attention=True, use_rope=True), DECODER_SHAPE, 2, marks=pytest.mark.slow
        ),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_gradients_float64(x64, layer, input_shape, order):
    """Reverse-mode gradients against finite differences. Compiling is the cost: the second order checks
    (4-10 s each) run with the slow tests; forward mode would double them."""
    params, state = init(layer, input_shape, np.float64)  # NumPy arrays: check_grads's steps are NumPy ops
    inputs = {name: normal(2, *shape, dtype=np.float64) for name, shape in input_shape.items()}
    if "mask" in inputs:
        inputs["mask"] = np.ones(inputs["mask"].shape, bool)
        inputs["mask"][..., -1] = False

    def f(params, x, context):
        full = {**inputs, "x": x} if context is None else {**inputs, "x": x, "context": context}
        y = layer.apply(params, state, full)[0]
        return jnp.sum(jnp.tanh(y["x"] if isinstance(y, dict) else y))

    f, context = jax.jit(f), inputs.get("context")
    assert f(params, inputs["x"], context).dtype == jnp.float64  # float64 stays float64 (reference path)
    check_grads(f, (params, inputs["x"], context), order=order, modes=["rev"], atol=1e-4, rtol=1e-4)


def test_jit_and_vmap_over_models():
    model = serial(Embedding(10, 8), LearnedPositionalEmbedding(6), TransformerDecoderBlock(2, 16))
    tokens = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    # an ensemble of 3 (the keys split inside the program: an eager split compiles a program of its own)
    params, state = jax.jit(lambda key: jax.vmap(lambda k: model.init(k, (4,)))(jax.random.split(key, 3)))(KEY)
    assert "transformer_decoder_block_2" in params
    apply = lambda p, s: model.apply(p, s, tokens)[0]  # noqa: E731
    ys = np.asarray(jax.jit(jax.vmap(apply))(params, state))
    one = jax.jit(apply)
    for i in range(3):
        p_i, s_i = jax.tree.map(lambda a, i=i: np.asarray(a)[i], (params, state))  # NumPy slices: no programs
        np.testing.assert_allclose(ys[i], np.asarray(one(p_i, s_i)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (MultiHeadAttention(4), (5, 8)),
        (MultiHeadAttention(2, head_dim=3, out_features=7, causal=True), (5, 8)),
        (MultiHeadAttention(2, use_rope=True), {"x": (5, 8), "context": (3, 6), "mask": (5, 3)}),
        (TransformerEncoderBlock(2, 16), (5, 8)),
        (TransformerDecoderBlock(2, 16, cross_attention=True), {"x": (5, 8), "context": (3, 6), "context_mask": (3,)}),
        (serial(Embedding(10, 8), LearnedPositionalEmbedding(5), TransformerDecoderBlock(4, 16)), (5,)),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_output_shape_agrees_with_apply(layer, input_shape):
    is_shape = lambda s: isinstance(s, tuple)  # noqa: E731
    x = jax.tree.map(lambda s: np.ones((2, *s), layer.input_dtype or np.float32), input_shape, is_leaf=is_shape)
    # init and apply traced, not run: the shapes are the property (eagerly, a program per operation and shape)
    y = jax.eval_shape(lambda x: layer.apply(*layer.init(KEY, input_shape), x)[0], x)
    assert layer.output_shape(input_shape) == jax.tree.map(lambda a: a.shape[1:], y)


def test_names_and_param_keys():
    model = serial(MultiHeadAttention(4), TransformerEncoderBlock(4, 32), TransformerDecoderBlock(4, 32))
    assert [layer.name for layer in (MultiHeadAttention(4), TransformerEncoderBlock(4, 32))] == [
        "MultiHeadAttention(4)",
        "TransformerEncoderBlock(4, 32)",
    ]
    params, _ = model.init(KEY, (3, 8))
    assert list(params) == ["multi_head_attention_0", "transformer_encoder_block_1", "transformer_decoder_block_2"]


def test_errors_name_the_layer_argument_expected_and_given():
    with pytest.raises(
        LayerError,
        match=r"serial\[1\] > MultiHeadAttention\(3\): the model width d_model \(=8\) must be divisible by num_heads",
    ):
        serial(Embedding(5, 8), MultiHeadAttention(3)).init(KEY, (4,))
    layer = MultiHeadAttention(2)
    params, state = init(layer, (4, 8))
    with pytest.raises(
        LayerError, match=r"MultiHeadAttention\(2\): argument `x` expected shape \(batch, T, 8\), given \(4, 8\)"
    ):
        layer.apply(params, state, np.ones((4, 8)))
    with pytest.raises(LayerError, match=r"argument `x` expected shape \(batch, T, 8\), given \(1, 4, 6\)"):
        layer.apply(params, state, np.ones((1, 4, 6)))
    with pytest.raises(
        LayerError, match=r"argument `mask` expected shape \(1, 4\) \(padding of keys\) or \(1, 4, 4\), given \(1, 3\)"
    ):
        layer.apply(params, state, {"x": np.ones((1, 4, 8)), "mask": np.ones((1, 3), bool)})
    with pytest.raises(LayerError, match=r"argument `mask` expected booleans .* additive -inf mask"):
        layer.apply(params, state, {"x": np.ones((1, 4, 8)), "mask": np.array([[0.0, -np.inf, 0.0, 0.0]])})
    with pytest.raises(
        LayerError, match=r"expected an array or a dict with key 'x' .* given a dict with keys \['mask', 'q'\]"
    ):
        layer.apply(params, state, {"q": np.ones((1, 4, 8)), "mask": np.ones((1, 4), bool)})
    with pytest.raises(LayerError, match=r"`x` and `context` expected the same batch size, given 1 and 2"):
        layer.apply(params, state, {"x": np.ones((1, 4, 8)), "context": np.ones((2, 4, 8))})
    with pytest.raises(LayerError, match=r"causal=True is for self-attention"):
        MultiHeadAttention(2, causal=True).init(KEY, {"x": (4, 8), "context": (3, 8)})
    with pytest.raises(LayerError, match=r"use_rope=True needs an even head_dim, given d_model 6 // 2 heads = 3"):
        MultiHeadAttention(2, use_rope=True).init(KEY, (4, 6))
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention\(0\): argument `num_heads` expected a positive int, given 0"
    ):
        MultiHeadAttention(0)
    with pytest.raises(ValueError, match=r"argument `implementation` expected one of .*given 'flash'"):
        MultiHeadAttention(2, implementation="flash")
    with pytest.raises(
        ValueError, match=r"TransformerEncoderBlock\(2, 0\): argument `mlp_dim` expected a positive int, given 0"
    ):
        TransformerEncoderBlock(2, 0)
    with pytest.raises(
        LayerError,
        match=r"TransformerDecoderBlock\(2, 8\)\[self_attention\] > MultiHeadAttention\(2\): the model width",
    ):
        TransformerDecoderBlock(2, 8).init(KEY, (4, 5))
    with pytest.raises(
        LayerError, match=r"cross_attention=True expects argument `input_shape` to be a dict with a 'context'"
    ):
        TransformerDecoderBlock(2, 8, cross_attention=True).init(KEY, (4, 8))
    decoder = TransformerDecoderBlock(2, 8)
    params, state = init(decoder, (4, 8))
    with pytest.raises(LayerError, match=r"has a 'context' but the block was built without cross-attention"):
        decoder.apply(params, state, {"x": np.ones((1, 4, 8)), "context": np.ones((1, 4, 8))})
    with pytest.raises(
        LayerError,
        match=r"TransformerDecoderBlock\(2, 8\): argument `x` expected shape \(batch, T, 8\), given \(1, 4, 3\)",
    ):
        decoder.apply(params, state, np.ones((1, 4, 3)))
