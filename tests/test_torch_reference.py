"""nnjax against PyTorch: every layer family imported with ``from_torch_state_dict`` computes torch's outputs,
input gradients and parameter gradients (float32 and float64), in train and eval mode where they differ;
state_dicts round-trip; mismatches raise one error that lists every offending key."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnjax
from nnjax import interop

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # a third less compile time for these small programs
TOLERANCES = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-10)}
DTYPES = ["float32", "float64"]


@pytest.fixture(params=DTYPES)
def dtype(request):
    """A test runs in float32 and in float64 (with ``jax_enable_x64`` on, as the ``x64`` fixture); tests that
    pair cases with dtypes pass it indirectly (float64 for a subset: each case compiles its own program)."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield request.param
    else:
        yield request.param


def randomized(module, seed=0):
    """``module`` with every parameter and buffer drawn at random (biases nonzero, running variances > 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * 0.5
            if name.endswith("running_var") or name.endswith("weight") and tensor.ndim == 1:
                values = values.abs() + 0.5
            tensor.copy_(values.to(tensor.dtype))
    return module


def channels_last(x):
    return np.moveaxis(x, 1, -1) if x.ndim > 2 else x


def channels_first(x):
    return np.moveaxis(x, -1, 1) if x.ndim > 2 else x


def compare(model, module, x, dtype, *, train=False, spatial=False, input_shape=None, state_check=None):
    """Imports ``module``'s weights into ``model`` and checks outputs, input gradients and parameter gradients.

    ``x`` is the torch-layout input (a NumPy array, or a tuple for multi-input modules); ``spatial`` inputs
    and outputs are channels-first in torch and channels-last in nnjax.
    """
    module = module.to(torch.float64 if dtype == "float64" else torch.float32)
    module.train(train)
    xs = x if isinstance(x, tuple) else (x,)
    xs = tuple(np.asarray(a, dtype) for a in xs)
    to_nnjax = channels_last if spatial else (lambda a: a)
    jx = tuple(jax.device_put(to_nnjax(a)) for a in xs)
    if input_shape is None:
        input_shape = jx[0].shape[1:]
    params, state = interop.from_torch_state_dict(
        model, module.state_dict(), input_shape=input_shape, dtype=jnp.dtype(dtype)
    )

    tx = tuple(torch.tensor(a, requires_grad=True) for a in xs)
    y_torch = module(*tx)
    y_torch = y_torch[0] if isinstance(y_torch, tuple) else y_torch
    cotangent = np.random.RandomState(1).standard_normal(tuple(y_torch.shape)).astype(dtype)
    (y_torch * torch.tensor(cotangent)).sum().backward()

    def forward(params, *inputs):
        model_input = inputs[0] if len(inputs) == 1 else {"x": inputs[0], "context": inputs[1]}
        y, new_state = model.apply(params, state, model_input, train=train)
        return (y["x"] if isinstance(y, dict) else y), new_state  # blocks return their input dict

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # one program, forward and backward
    def run(params, inputs, cotangent):
        y, vjp, new_state = jax.vjp(forward, params, *inputs, has_aux=True)
        return y, vjp(cotangent), new_state

    y, grads, new_state = run(params, jx, jax.device_put(to_nnjax(cotangent)))
    tol = TOLERANCES[dtype]
    np.testing.assert_allclose(np.asarray(y), to_nnjax(y_torch.detach().numpy()), **tol, err_msg="outputs")
    for gx, t in zip(grads[1:], tx, strict=True):
        np.testing.assert_allclose(np.asarray(gx), to_nnjax(t.grad.numpy()), **tol, err_msg="input gradients")
    exported = interop.to_torch_state_dict(model, grads[0], state, template=module.state_dict())
    for name, parameter in module.named_parameters():
        expected = exported[name]
        if "bias_hh" in name:  # nnjax's one bias b gets both torch biases' gradient, except GRU's n block (b_hn)
            expected = exported[name.replace("bias_hh", "bias_ih")].copy()
            if isinstance(module.get_submodule(name.rpartition(".")[0]), nn.GRU):
                n = expected.shape[0] // 3
                expected[2 * n :] = exported[name][2 * n :]
        np.testing.assert_allclose(expected, parameter.grad.numpy(), **tol, err_msg=f"gradient of {name}")
    if state_check is not None:
        state_check(new_state, module)
    return params, state


# ---- families ---------------------------------------------------------------------------------------------


def test_dense_is_linear(dtype):
    compare(nnjax.Dense(3), randomized(nn.Linear(5, 3)), np.random.RandomState(0).randn(4, 5), dtype)
    compare(nnjax.Dense(3, use_bias=False), randomized(nn.Linear(5, 3, bias=False)), np.ones((2, 5)), dtype)


CONVS = [
    # (torch module, nnjax layer, torch input shape)
    (
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2),
        lambda: nnjax.Conv(6, (3,), strides=2, padding=((1, 1),), groups=2),
        (2, 4, 9),
    ),
    (
        lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
        lambda: nnjax.Conv(6, (3, 2), strides=(2, 1), padding=((1, 1), (0, 0)), dilation=(1, 2), groups=2),
        (2, 4, 7, 6),
    ),
    (lambda: nn.Conv3d(2, 3, 2, padding=1), lambda: nnjax.Conv(3, (2, 2, 2), padding=((1, 1),) * 3), (1, 2, 3, 4, 3)),
]


SOME_IN_FLOAT64 = [(0, "float32"), (1, "float32"), (2, "float32"), (1, "float64")]  # (case, dtype)
IDS = ["1d-float32", "2d-float32", "3d-float32", "2d-float64"]


@pytest.mark.parametrize(("index", "dtype"), SOME_IN_FLOAT64, ids=IDS, indirect=["dtype"])
def test_conv_is_torch_conv(index, dtype):
    module, layer, shape = CONVS[index]
    compare(layer(), randomized(module()), np.random.RandomState(0).randn(*shape), dtype, spatial=True)


CONV_TRANSPOSES = [
    (
        lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        lambda: nnjax.ConvTranspose(6, (3,), strides=2, padding=((2, 2),), dilation=2, groups=2),
        (2, 4, 5),
    ),
    (
        lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 0), groups=2),
        lambda: nnjax.ConvTranspose(6, (3, 2), strides=(2, 3), padding=((1, 0), (0, 0)), groups=2),
        (2, 4, 4, 3),
    ),
    (
        lambda: nn.ConvTranspose3d(3, 2, 2, stride=2),
        lambda: nnjax.ConvTranspose(2, (2, 2, 2), strides=2, padding="VALID"),
        (1, 3, 2, 3, 2),
    ),
]


@pytest.mark.parametrize(("index", "dtype"), SOME_IN_FLOAT64, ids=IDS, indirect=["dtype"])
def test_conv_transpose_is_torch_conv_transpose(index, dtype):
    module, layer, shape = CONV_TRANSPOSES[index]
    compare(layer(), randomized(module()), np.random.RandomState(0).randn(*shape), dtype, spatial=True)


def check_running_stats(new_state, module):
    np.testing.assert_allclose(new_state["mean"], module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state["var"], module.running_var.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("rank", "train", "dtype"),
    [(1, True, "float32"), (2, False, "float32"), (2, True, "float32"), (3, False, "float32"), (2, True, "float64")],
    ids=["1d-train-float32", "2d-eval-float32", "2d-train-float32", "3d-eval-float32", "2d-train-float64"],
    indirect=["dtype"],
)
def test_batch_norm_is_torch_batch_norm(rank, train, dtype):
    """Eval: running statistics; train: batch statistics, and after the step torch's running statistics
    (momentum 0.1, unbiased variance) equal nnjax's with ``TorchBatchNorm``."""
    module = randomized({1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[rank](3, momentum=0.2, eps=1e-3))
    shape = {1: (6, 3), 2: (4, 3, 3, 2), 3: (2, 3, 2, 2, 3)}[rank]
    x = np.random.RandomState(0).randn(*shape) * 2 + 1
    layer = interop.TorchBatchNorm(momentum=0.2, eps=1e-3)
    compare(layer, module, x, dtype, train=train, spatial=True, state_check=check_running_stats)


def test_batch_norm_1d_on_sequences_and_the_biased_convention():
    module = randomized(nn.BatchNorm1d(3)).train()
    x = np.random.RandomState(0).randn(4, 3, 5).astype(np.float32)  # (batch, C, L): nnjax (batch, L, C)
    compare(interop.TorchBatchNorm(), module, x, "float32", train=True, spatial=True, state_check=check_running_stats)
    # the default (Flax/Keras) BatchNorm gives the same outputs but folds the biased variance
    module = randomized(nn.BatchNorm1d(3)).train()
    params, state = interop.from_torch_state_dict(
        nnjax.BatchNorm(momentum=0.9), module.state_dict(), input_shape=(5, 3)
    )
    train_step = jax.jit(lambda x: nnjax.BatchNorm(momentum=0.9).apply(params, state, x, train=True))
    _, biased = train_step(channels_last(x))
    module(torch.tensor(x))
    n = 4 * 5
    expected = 0.9 * np.asarray(state["var"]) + 0.1 * channels_last(x).reshape(-1, 3).var(0)
    np.testing.assert_allclose(biased["var"], expected, rtol=1e-5)
    assert not np.allclose(biased["var"], module.running_var.numpy(), rtol=1e-4)
    unbiased = 0.9 * np.asarray(state["var"]) + 0.1 * channels_last(x).reshape(-1, 3).var(0) * n / (n - 1)
    np.testing.assert_allclose(module.running_var.numpy(), unbiased, rtol=1e-5)


def test_layer_group_and_rms_norm(dtype):
    x = np.random.RandomState(0).randn(3, 4, 6) * 3 + 1
    compare(nnjax.LayerNorm(), randomized(nn.LayerNorm(6)), x, dtype)
    compare(nnjax.LayerNorm(use_bias=False), randomized(nn.LayerNorm(6, bias=False)), x, dtype)
    compare(nnjax.RMSNorm(epsilon=1e-6), randomized(nn.RMSNorm(6, eps=1e-6)), x, dtype)
    images = np.random.RandomState(1).randn(2, 6, 3, 4) * 2  # (batch, C, H, W)
    compare(nnjax.GroupNorm(3), randomized(nn.GroupNorm(3, 6)), images, dtype, spatial=True)


def test_embedding_is_torch_embedding(dtype):
    module = randomized(nn.Embedding(11, 4)).to(torch.float64 if dtype == "float64" else torch.float32)
    tokens = np.random.RandomState(0).randint(0, 11, (3, 5))
    params, state = interop.from_torch_state_dict(
        nnjax.Embedding(11, 4), module.state_dict(), input_shape=(5,), dtype=jnp.dtype(dtype)
    )
    y, _ = jax.jit(lambda x: nnjax.Embedding(11, 4).apply(params, state, x))(tokens)
    np.testing.assert_array_equal(np.asarray(y), module(torch.tensor(tokens)).detach().numpy())


RECURRENT = {
    "rnn": (lambda: nn.RNN(5, 4, batch_first=True), lambda: nnjax.SimpleRNN(4)),
    "lstm-2-layers": (lambda: nn.LSTM(5, 4, num_layers=2, batch_first=True), lambda: nnjax.LSTM(4, num_layers=2)),
    "gru-2-layers-as-serial": (
        lambda: nn.GRU(5, 4, num_layers=2, batch_first=True),
        lambda: nnjax.serial(nnjax.GRU(4), nnjax.GRU(4)),
    ),
    "bidirectional-gru-2-layers": (
        lambda: nn.GRU(5, 3, num_layers=2, batch_first=True, bidirectional=True),
        lambda: nnjax.serial(nnjax.Bidirectional(nnjax.GRUCell(3)), nnjax.Bidirectional(nnjax.GRUCell(3))),
    ),
}


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("rnn", "float32"), ("lstm-2-layers", "float32"), ("gru-2-layers-as-serial", "float64")]
    + [("bidirectional-gru-2-layers", "float32")],
    indirect=["dtype"],
)
def test_recurrent_is_torch_recurrent(name, dtype):
    module, layer = RECURRENT[name]
    x = np.random.RandomState(0).randn(3, 6, 5)
    compare(layer(), randomized(module()), x, dtype)


class SelfAttention(nn.Module):
    def __init__(self, mha, causal=False):
        super().__init__()
        self.attn, self.causal = mha, causal

    def forward(self, x, context=None):
        context = x if context is None else context
        mask = None
        if self.causal:
            t = x.shape[1]
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)  # True: may NOT attend
        return self.attn(x, context, context, attn_mask=mask, need_weights=False)[0]


@pytest.mark.parametrize(
    ("case", "dtype"),
    [("self", "float32"), ("causal-no-bias", "float32"), ("cross", "float64")],
    indirect=["dtype"],
)
def test_multi_head_attention_is_torch_multihead_attention(case, dtype):
    """Self-attention (packed ``in_proj_weight``), causal without biases, and cross-attention with another
    context width (separate ``q/k/v_proj_weight``). float32 runs ``jax.nn.dot_product_attention``, float64
    nnjax's ``reference_attention``."""
    x = np.random.RandomState(0).randn(2, 5, 8)
    if case == "self":
        module = SelfAttention(randomized(nn.MultiheadAttention(8, 2, batch_first=True)))
        compare(nnjax.MultiHeadAttention(2), module, x, dtype)
    elif case == "causal-no-bias":
        module = SelfAttention(randomized(nn.MultiheadAttention(8, 4, batch_first=True, bias=False), 1), causal=True)
        compare(nnjax.MultiHeadAttention(4, causal=True, use_bias=False), module, x, dtype)
    else:
        module = SelfAttention(randomized(nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True), 2))
        context = np.random.RandomState(1).randn(2, 7, 6)
        shapes = {"x": (5, 8), "context": (7, 6)}
        compare(nnjax.MultiHeadAttention(2), module, (x, context), dtype, input_shape=shapes)


def tanh_gelu(x):
    return F.gelu(x, approximate="tanh")  # jax.nn.gelu's default form, used by nnjax's blocks


OPTIONS = dict(dim_feedforward=16, dropout=0.0, activation=tanh_gelu, layer_norm_eps=1e-6, batch_first=True)


def test_transformer_encoder_block_is_torch_pre_norm_encoder_layer():
    encoder = randomized(nn.TransformerEncoderLayer(8, 2, norm_first=True, **OPTIONS))
    x = np.random.RandomState(0).randn(2, 5, 8)
    compare(nnjax.TransformerEncoderBlock(2, 16), encoder, x, "float32")


def test_transformer_decoder_block_is_torch_pre_norm_decoder_layer():
    x = np.random.RandomState(0).randn(2, 5, 8)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerDecoderLayer(8, 2, norm_first=True, **OPTIONS)

        def forward(self, x, memory):
            mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), diagonal=1)
            return self.layer(x, memory, tgt_mask=mask)

    memory = np.random.RandomState(1).randn(2, 4, 8)
    block = nnjax.TransformerDecoderBlock(2, 16, cross_attention=True)
    compare(block, randomized(Decoder(), 3), (x, memory), "float32", input_shape={"x": (5, 8), "context": (4, 8)})


# ---- a whole network, round trips --------------------------------------------------------------------------


def torch_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.GroupNorm(2, 6), nn.ReLU(),
        nn.ConvTranspose2d(6, 4, 2, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 10), nn.LayerNorm(10),
    )  # fmt: skip


def nnjax_cnn():
    return nnjax.serial(
        nnjax.Conv(4, (3, 3), padding=((1, 1), (1, 1))), interop.TorchBatchNorm(), nnjax.Relu(), nnjax.MaxPool(2),
        nnjax.Conv(6, (3, 3), padding=((1, 1), (1, 1)), groups=2), nnjax.GroupNorm(2), nnjax.Relu(),
        nnjax.ConvTranspose(4, (2, 2), strides=2, padding="VALID"), nnjax.Relu(),
        interop.TorchFlatten(), nnjax.Dense(10), nnjax.LayerNorm(),
    )  # fmt: skip


def test_a_cnn_matches_end_to_end():
    """Conv, BatchNorm (batch statistics and running averages), pooling, groups, GroupNorm, ConvTranspose,
    torch's flatten order, Linear and LayerNorm in one network, in training mode."""
    x = np.random.RandomState(0).rand(5, 1, 8, 8)
    compare(nnjax_cnn(), randomized(torch_cnn()), x, "float32", train=True, spatial=True, state_check=check_cnn_stats)


def check_cnn_stats(new_state, module):
    check_running_stats(new_state["batch_norm_1"], module[1])


def equal_state_dicts(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), b[k].numpy() if hasattr(b[k], "numpy") else b[k], err_msg=k)


def load(module, state_dict):
    return module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)


def test_state_dict_round_trips_and_loads_strictly():
    module = randomized(torch_cnn())
    module.train()(torch.rand(4, 1, 8, 8))  # num_batches_tracked = 1
    sd = module.state_dict()
    params, state = interop.from_torch_state_dict(nnjax_cnn(), sd, input_shape=(8, 8, 1))
    exported = interop.to_torch_state_dict(nnjax_cnn(), params, state, template=sd)
    equal_state_dicts(exported, sd)
    # without a template the keys are nn.Sequential's; only num_batches_tracked (nnjax keeps no count) is 0
    default = interop.to_torch_state_dict(nnjax_cnn(), params, state)
    assert list(default) == list(sd) and int(default["1.num_batches_tracked"]) == 0
    fresh = torch_cnn()
    load(fresh, default)
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), module.eval()(x))
    # and back: nnjax -> torch -> nnjax is exact
    again = interop.from_torch_state_dict(nnjax_cnn(), default, input_shape=(8, 8, 1))
    jax.tree.map(np.testing.assert_array_equal, again, (params, state))


def test_recurrent_and_attention_round_trip_to_equivalent_state_dicts():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.lstm = nn.LSTM(8, 8, num_layers=2, batch_first=True)
            self.gru = nn.GRU(8, 8, batch_first=True, bidirectional=True)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 10)

    module = randomized(Net())
    model = nnjax.serial(
        nnjax.Embedding(10, 8), nnjax.LSTM(8, num_layers=2), nnjax.Bidirectional(nnjax.GRUCell(8)),
        nnjax.MultiHeadAttention(2), nnjax.Dense(10),
    )  # fmt: skip
    sd = module.state_dict()
    params, state = interop.from_torch_state_dict(model, sd, input_shape=(5,))
    exported = interop.to_torch_state_dict(model, params, state, template=sd)
    assert list(exported) == list(sd)
    for k, v in sd.items():
        v = v.numpy()
        if "bias_ih" in k or "bias_hh" in k:  # one nnjax bias: the pair's sum (GRU: r and z blocks) is kept
            continue
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    for k in [k for k in sd if "bias_ih" in k]:
        other = k.replace("bias_ih", "bias_hh")
        hidden = sd[k].shape[0] // (4 if k.startswith("lstm") else 3)
        keep = slice(None) if k.startswith("lstm") else slice(0, 2 * hidden)
        total = sd[k].numpy()[keep] + sd[other].numpy()[keep]
        np.testing.assert_allclose(exported[k][keep] + exported[other][keep], total, rtol=1e-6, atol=1e-7)
        if k.startswith("gru"):  # the n block of bias_hh is inside the reset gate: kept as it is
            np.testing.assert_array_equal(exported[other][keep.stop :], sd[other].numpy()[keep.stop :])
            np.testing.assert_array_equal(exported[k][keep.stop :], sd[k].numpy()[keep.stop :])
    fresh = Net()
    load(fresh, exported)


# ---- mapping options and errors ----------------------------------------------------------------------------


class Named(nn.Module):
    """Modules registered in another order than nnjax's forward order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 2)
        self.body = nn.Linear(4, 6)
        self.up = nn.ConvTranspose1d(3, 3, 2, stride=2)


def named_model():
    return nnjax.named(
        up=nnjax.ConvTranspose(3, (2,), strides=2, padding="VALID"),
        body=nnjax.Dense(6),
        head=nnjax.Dense(2),
    )


SHAPES = {"up": (5, 3), "body": (4,), "head": (6,)}


def test_mapping_kinds_and_ignore():
    module = randomized(Named())
    sd = dict(module.state_dict())
    sd["mask"] = torch.ones(3)
    mapping = {"up": "up", "body": "body", "head": "head"}
    with pytest.raises(interop.InteropError, match="wrong shape 'head.weight': expected"):  # in order: up <- head
        interop.from_torch_state_dict(named_model(), sd, input_shape=SHAPES, kinds={"up": "conv_transpose"})
    params, _ = interop.from_torch_state_dict(
        named_model(), sd, input_shape=SHAPES, mapping=mapping, kinds={"up": "conv_transpose"}, ignore=["mask"]
    )
    np.testing.assert_array_equal(params["head"]["w"], module.head.weight.detach().numpy().T)
    x = np.random.RandomState(0).randn(2, 3, 5).astype(np.float32)
    y = jax.jit(lambda p, x: named_model().up.apply(p, {}, x)[0])(params["up"], jax.device_put(channels_last(x)))
    np.testing.assert_allclose(
        channels_first(np.asarray(y)), module.up(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6
    )
    # the export with a template pairs the same way and loads strictly
    exported = interop.to_torch_state_dict(
        named_model(), params, {"up": {}, "body": {}, "head": {}}, template=module, mapping=mapping,
        kinds={"up": "conv_transpose"},
    )  # fmt: skip
    load(Named(), exported)


def test_mismatches_raise_one_error_listing_every_key():
    module = randomized(torch_cnn())
    sd = dict(module.state_dict())
    del sd["10.bias"]
    sd["extra.weight"] = torch.zeros(2, 2)
    model = nnjax.serial(
        nnjax.Conv(4, (3, 3)), interop.TorchBatchNorm(), nnjax.Relu(), nnjax.MaxPool(2),
        nnjax.Conv(8, (3, 3), groups=2), nnjax.GroupNorm(2), nnjax.Relu(),   # 8 features where torch has 6
        nnjax.ConvTranspose(4, (2, 2), strides=2), nnjax.Relu(),
        interop.TorchFlatten(), nnjax.Dense(10), nnjax.LayerNorm(),
    )  # fmt: skip
    with pytest.raises(interop.InteropError) as info:
        interop.from_torch_state_dict(model, sd, input_shape=(8, 8, 1))
    message = str(info.value)
    for line in [
        "wrong shape '4.weight': expected (8, 2, 3, 3), given (6, 2, 3, 3)",
        "wrong shape '4.bias': expected (8,), given (6,)",
        "wrong shape '5.weight': expected (8,), given (6,)",
        "wrong shape '5.bias': expected (8,), given (6,)",
        "wrong shape '7.weight': expected (8, 4, 2, 2), given (6, 4, 2, 2)",
        "missing     '10.bias': expected (10,), given nothing",
        "unused      'extra.weight': given (2, 2)",
    ]:
        assert line in message, message
    assert "(for `conv_4` (conv <-> nn.Conv1d/2d/3d))" in message
    assert message.count("\n  ") == 7, message
    assert info.value.missing == [("10.bias", (10,))]
    assert info.value.unexpected == [("extra.weight", (2, 2))]
    assert ("4.weight", (8, 2, 3, 3), (6, 2, 3, 3)) in info.value.mismatched and len(info.value.mismatched) == 5
    assert isinstance(info.value, nnjax.LayerError)


def test_a_model_with_fewer_layers_names_the_units_left_over():
    sd = randomized(nn.Sequential(nn.Linear(4, 3))).state_dict()
    with pytest.raises(interop.InteropError, match=r"no torch module left for `dense_1` \(dense <-> nn.Linear\): "
                       r"expected weight \(2, 3\), bias \(2,\)"):  # fmt: skip
        interop.from_torch_state_dict(nnjax.serial(nnjax.Dense(3), nnjax.Dense(2)), sd, input_shape=(4,))
    with pytest.raises(ValueError, match="names nnjax paths the model does not have: \\['dense_7'\\]"):
        interop.from_torch_state_dict(nnjax.Dense(3), sd, input_shape=(4,), mapping={"dense_7": "0"})


def test_numpy_values_modules_and_bfloat16_tensors_are_accepted():
    module = randomized(nn.Sequential(nn.Linear(4, 3)))
    as_numpy = {k: v.numpy() for k, v in module.state_dict().items()}
    a = interop.from_torch_state_dict(nnjax.serial(nnjax.Dense(3)), as_numpy, input_shape=(4,))
    b = interop.from_torch_state_dict(nnjax.serial(nnjax.Dense(3)), module, input_shape=(4,))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c, _ = interop.from_torch_state_dict(
        nnjax.serial(nnjax.Dense(3)), module.to(torch.bfloat16).state_dict(), input_shape=(4,), dtype=jnp.bfloat16
    )
    assert c["dense_0"]["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(c["dense_0"]["w"], np.float32), as_numpy["0.weight"].T, rtol=1e-2)


def test_one_layer_models_map_to_a_root_module():
    module = randomized(nn.Conv2d(2, 3, 3))
    params, _ = interop.from_torch_state_dict(
        nnjax.Conv(3, (3, 3), padding="VALID"), module.state_dict(), input_shape=(5, 5, 2)
    )
    assert list(interop.to_torch_state_dict(nnjax.Conv(3, (3, 3)), params, {})) == ["weight", "bias"]
