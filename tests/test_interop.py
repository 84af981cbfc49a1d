"""nnjax.interop without torch: safetensors files, NumPy state_dicts in torch layouts, the torch-convention
layers (TorchBatchNorm's unbiased running variance, TorchFlatten) and the mapping's errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnjax
from nnjax import interop


def init(model, input_shape, dtype=jnp.float32):
    """``model.init`` compiled once (op-by-op initialization is slow); key order is JAX's (sorted)."""
    return jax.jit(lambda k: model.init(k, input_shape, dtype))(jax.random.key(0))


def random_init(model, input_shape, seed=0):
    """Params and state of ``model.init``'s shapes and dtypes, drawn at random with NumPy (nothing compiles)."""
    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(lambda k: model.init(k, input_shape), jax.random.key(0))
    return jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype)), shapes)


# ---- safetensors ------------------------------------------------------------------------------------------


def model_with_parts():
    return nnjax.named(
        encoder=nnjax.serial(*[nnjax.Dense(3) for _ in range(11)], nnjax.BatchNorm(), nnjax.Relu()),
        decoder=nnjax.serial(nnjax.Dense(2)),
    )


def test_safetensors_round_trip_keeps_structure_order_and_dtypes(tmp_path):
    pytest.importorskip("safetensors")
    model = model_with_parts()
    params, state = random_init(model, {"encoder": (4,), "decoder": (3,)})
    params, state = ({"encoder": tree["encoder"], "decoder": tree["decoder"]} for tree in (params, state))  # unsorted
    params["decoder"]["dense_0"]["b"] = params["decoder"]["dense_0"]["b"].astype(jnp.bfloat16)
    path = str(tmp_path / "model.safetensors")
    interop.save_safetensors(path, params, state)
    params2, state2 = interop.load_safetensors(path)
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    assert list(params2) == ["encoder", "decoder"]  # named parts in their order, not sorted
    assert list(params2["encoder"])[:3] == ["dense_0", "dense_1", "dense_2"]  # serial positions, not dense_10
    assert params2["encoder"]["relu_12"] == {} and state2["decoder"] == {"dense_0": {}}
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((params2, state2)), strict=True):
        assert a.dtype == b.dtype and isinstance(b, jax.Array)
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_safetensors_keys_are_readable_and_params_alone_load_with_empty_state(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    params, state = init(nnjax.serial(nnjax.Dense(3), nnjax.BatchNorm()), (4,))
    both, alone = str(tmp_path / "both.safetensors"), str(tmp_path / "params.safetensors")
    interop.save_safetensors(both, params, state)
    interop.save_safetensors(alone, params)
    with safetensors.safe_open(both, framework="np") as f:
        assert sorted(f.keys()) == [
            "params.batch_norm_1.bias", "params.batch_norm_1.scale", "params.dense_0.b", "params.dense_0.w",
            "state.batch_norm_1.mean", "state.batch_norm_1.var",
        ]  # fmt: skip
        assert json.loads(f.metadata()["nnjax"])["empty"] == ["state.dense_0"]
    with safetensors.safe_open(alone, framework="np") as f:
        assert sorted(f.keys()) == ["batch_norm_1.bias", "batch_norm_1.scale", "dense_0.b", "dense_0.w"]
    loaded, empty = interop.load_safetensors(alone)
    assert empty == {} and set(loaded) == {"dense_0", "batch_norm_1"}


def test_float64_round_trip(tmp_path, x64):
    pytest.importorskip("safetensors")
    params = {"dense_0": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}, "step": jnp.array(3, jnp.int64)}
    interop.save_safetensors(str(tmp_path / "f.safetensors"), params)
    loaded, _ = interop.load_safetensors(str(tmp_path / "f.safetensors"))
    assert loaded["dense_0"]["w"].dtype == jnp.float64 and loaded["step"].dtype == jnp.int64
    np.testing.assert_array_equal(loaded["dense_0"]["w"], params["dense_0"]["w"])


def test_foreign_safetensors_files_load_as_nested_dicts(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = str(tmp_path / "foreign.safetensors")
    st_numpy.save_file(
        {"encoder.0.weight": np.ones((2, 3), np.float32), "encoder.0.bias": np.zeros(2, np.float32)}, path
    )
    tree, state = interop.load_safetensors(path)
    assert state == {} and jax.tree.map(jnp.shape, tree) == {"encoder": {"0": {"weight": (2, 3), "bias": (2,)}}}


def test_safetensors_errors(tmp_path):
    pytest.importorskip("safetensors")
    path = str(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"dict keys must be non-empty strings without '\.', given 'a\.b' under 'x'"):
        interop.save_safetensors(path, {"x": {"a.b": jnp.ones(2)}})
    with pytest.raises(TypeError, match="expected nested dicts of arrays, given tuple at 'opt'.*save_checkpoint"):
        interop.save_safetensors(path, {"opt": (jnp.ones(2),)})
    with pytest.raises(TypeError, match="argument `state` expected a dict of arrays, given list"):
        interop.save_safetensors(path, {}, [])


# ---- torch layouts without torch ---------------------------------------------------------------------------


def every_family():
    return nnjax.serial(
        nnjax.Conv(4, (3, 3), groups=1), nnjax.BatchNorm(), nnjax.GroupNorm(2),
        nnjax.ConvTranspose(6, (2, 2), strides=2, groups=2), nnjax.LayerNorm(), nnjax.RMSNorm(),
        nnjax.Reshape((16 * 16, 6)),
        nnjax.LSTM(5, num_layers=2), nnjax.Bidirectional(nnjax.GRUCell(4)), nnjax.SimpleRNN(8),
        nnjax.MultiHeadAttention(2), nnjax.TransformerEncoderBlock(2, 16), nnjax.Dense(3),
    )  # fmt: skip


def test_every_family_round_trips_exactly_through_torch_layouts():
    model = every_family()
    params, state = random_init(model, (8, 8, 2))
    exported = interop.to_torch_state_dict(model, params, state)
    assert exported["0.weight"].shape == (4, 2, 3, 3)  # (out, in, kh, kw)
    # nnjax's params do not hold a ConvTranspose's groups: without a template, groups=1 (torch refuses the
    # shape for groups=2); a template's (in, out / groups, kh, kw) weight tells them
    assert exported["3.weight"].shape == (2, 6, 2, 2)
    template = {**exported, "3.weight": np.zeros((4, 3, 2, 2), np.float32)}
    exported = interop.to_torch_state_dict(model, params, state, template=template)
    assert exported["3.weight"].shape == (4, 3, 2, 2)
    assert exported["3.weight"].flags.writeable and exported["3.weight"].flags.c_contiguous
    assert exported["7.weight_ih_l1"].shape == (20, 5) and exported["8.weight_hh_l0_reverse"].shape == (12, 4)
    assert exported["10.in_proj_weight"].shape == (24, 8) and exported["10.out_proj.weight"].shape == (8, 8)
    assert exported["11.self_attn.in_proj_weight"].shape == (24, 8) and exported["11.linear1.weight"].shape == (16, 8)
    again = interop.from_torch_state_dict(model, exported, input_shape=(8, 8, 2))
    jax.tree.map(np.testing.assert_array_equal, again, (params, state))
    assert jax.tree.structure(again) == jax.tree.structure((params, state))


def test_linear_and_conv_layouts_by_hand():
    w = np.arange(6.0, dtype=np.float32).reshape(2, 3)  # torch nn.Linear(3, 2): (out, in)
    params, _ = interop.from_torch_state_dict(nnjax.Dense(2), {"weight": w, "bias": np.ones(2)}, input_shape=(3,))
    np.testing.assert_array_equal(params["w"], w.T)
    conv = np.random.RandomState(0).randn(5, 2, 3, 1).astype(np.float32)  # (out, in, kh, kw)
    layer = nnjax.Conv(5, (3, 1), use_bias=False)
    params, _ = interop.from_torch_state_dict(layer, {"weight": conv}, input_shape=(6, 6, 2))
    np.testing.assert_array_equal(params["w"][:, :, 1, 4], conv[4, 1])  # nnjax (kh, kw, in, out)


def test_errors_list_every_offending_key_with_shapes():
    model = nnjax.serial(nnjax.Dense(3), nnjax.BatchNorm(), nnjax.Dense(2))
    state_dict = {
        "0.weight": np.zeros((3, 5)), "0.bias": np.zeros(3),  # nnjax expects a (3, 4) weight
        "1.weight": np.ones(3), "1.bias": np.zeros(3), "1.running_mean": np.zeros(3),  # no running_var
        "2.weight": np.zeros((2, 3)), "2.bias": np.zeros(2), "2.extra": np.zeros(7),
    }  # fmt: skip
    with pytest.raises(interop.InteropError) as info:
        interop.from_torch_state_dict(model, state_dict, input_shape=(4,))
    message = str(info.value)
    assert "3 problems" in message.splitlines()[0]
    assert "wrong shape '0.weight': expected (3, 4), given (3, 5) (for `dense_0` (dense <-> nn.Linear))" in message
    assert "missing     '1.running_var': expected (3,), given nothing (for `batch_norm_1`" in message
    assert "unused      '2.extra': given (7,), expected by no unit (under the module of `dense_2`" in message
    assert "Pairing used (nnjax unit <- torch prefix, in order): dense_0 <- '0'; batch_norm_1 <- '1'" in message
    assert info.value.missing == [("1.running_var", (3,))] and info.value.unexpected == [("2.extra", (7,))]


def test_a_missing_bias_is_named():
    with pytest.raises(interop.InteropError, match=r"missing     'bias': expected \(2,\), given nothing"):
        interop.from_torch_state_dict(nnjax.Dense(2), {"weight": np.zeros((2, 3))}, input_shape=(3,))
    with pytest.raises(ValueError, match="argument `kinds` expected kinds among"):
        interop.from_torch_state_dict(nnjax.Dense(2), {}, input_shape=(3,), kinds={"": "linear"})


def test_mapping_none_keeps_initial_values_and_subtrees_pair_in_order():
    model = nnjax.named(body=nnjax.serial(nnjax.Dense(3), nnjax.Dense(3)), head=nnjax.Dense(2))
    shapes = {"body": (4,), "head": (3,)}
    rng = np.random.RandomState(0)
    state_dict = {  # a torch module with its own names: trunk = nn.Sequential(Linear, Linear); no head
        "trunk.0.weight": rng.randn(3, 4), "trunk.0.bias": rng.randn(3),
        "trunk.1.weight": rng.randn(3, 3), "trunk.1.bias": rng.randn(3),
    }  # fmt: skip
    params, _ = interop.from_torch_state_dict(
        model, state_dict, input_shape=shapes, mapping={"body": "trunk", "head": None}, key=jax.random.key(3)
    )
    np.testing.assert_allclose(params["body"]["dense_1"]["w"], state_dict["trunk.1.weight"].T, rtol=1e-6)
    assert params["head"]["w"].shape == (3, 2) and np.all(np.asarray(params["head"]["b"]) == 0)  # initial values
    assert 0 < np.abs(params["head"]["w"]).max() <= np.sqrt(6 / 5)  # Glorot-uniform's bound
    assert list(params) == ["body", "head"] and isinstance(params["head"]["w"], jax.Array)


def test_default_export_names_follow_nn_sequential_and_mapping_renames():
    model = nnjax.serial(nnjax.Dense(3), nnjax.Relu(), nnjax.serial(nnjax.Dense(2), nnjax.Dense(2)))
    params, state = random_init(model, (4,))
    names = list(interop.to_torch_state_dict(model, params, state))
    assert names == ["0.weight", "0.bias", "2.0.weight", "2.0.bias", "2.1.weight", "2.1.bias"]
    renamed = interop.to_torch_state_dict(model, params, state, mapping={"serial_2": "head", "dense_0": "fc"})
    assert list(renamed) == ["fc.weight", "fc.bias", "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]
    dropped = interop.to_torch_state_dict(model, params, state, mapping={"serial_2/dense_1": None})
    assert list(dropped) == names[:4]
    # keys that only look like serial's (a block's conv_1, norm_1, conv_2) keep their names and order
    block = nnjax.named(conv_1=nnjax.Dense(3), norm_1=nnjax.LayerNorm(), conv_2=nnjax.Dense(3))
    params, state = random_init(block, {"conv_1": (3,), "norm_1": (3,), "conv_2": (3,)})
    params = {k: params[k] for k in ("conv_1", "norm_1", "conv_2")}  # the block's forward order
    assert [k.split(".")[0] for k in interop.to_torch_state_dict(block, params, state)] == [
        "conv_1",
        "conv_1",
        "norm_1",
        "norm_1",
        "conv_2",
        "conv_2",
    ]


# ---- torch conventions -------------------------------------------------------------------------------------


def test_torch_batch_norm_folds_the_unbiased_variance():
    x = np.random.RandomState(0).randn(4, 3, 2).astype(np.float32) * 2 + 1  # n = 4 * 3 values per feature
    layer = interop.TorchBatchNorm(momentum=0.1, eps=1e-5)
    params, state = init(layer, (3, 2))
    y, new_state = jax.jit(lambda p, s, x: layer.apply(p, s, x, train=True))(params, state, jax.device_put(x))
    flat = x.reshape(-1, 2)
    np.testing.assert_allclose(new_state["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(y, (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), rtol=1e-4, atol=1e-5)  # biased
    default = nnjax.BatchNorm(momentum=0.9)
    _, biased = jax.jit(lambda p, s, x: default.apply(p, s, x, train=True))(params, state, jax.device_put(x))
    np.testing.assert_allclose(biased["var"], 0.9 + 0.1 * flat.var(0), rtol=1e-5)


def test_unbiased_batch_norm_counts_every_shard_of_a_mapped_axis():
    layer = nnjax.BatchNorm(momentum=0.0, axis_name="shards", running_variance="unbiased")
    params, state = init(layer, (2,))
    x = np.random.RandomState(1).randn(3, 2, 2).astype(np.float32)  # 3 shards of 2 examples: n = 6
    run = jax.jit(jax.vmap(lambda x: layer.apply(params, state, x, train=True)[1], axis_name="shards"))
    np.testing.assert_allclose(run(jax.device_put(x))["var"][0], x.reshape(-1, 2).var(0, ddof=1), rtol=1e-5)


def test_unbiased_batch_norm_refuses_one_value_per_feature_and_unknown_conventions():
    layer = nnjax.BatchNorm(running_variance="unbiased")
    params, state = init(layer, (2,))
    with pytest.raises(nnjax.LayerError, match="needs more than one value per feature"):
        jax.jit(lambda x: layer.apply(params, state, x, train=True))(jnp.ones((1, 2)))
    layer.apply(params, state, jnp.ones((1, 2)))  # evaluation is fine
    with pytest.raises(ValueError, match="argument `running_variance` expected 'biased' .* given 'torch'"):
        nnjax.BatchNorm(running_variance="torch")
    with pytest.raises(ValueError, match="momentum"):
        interop.TorchBatchNorm(momentum=1.5)


def test_torch_flatten_lists_channels_first():
    x = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)  # (batch, H, W, C)
    y, _ = interop.TorchFlatten().apply({}, {}, jax.device_put(x))
    np.testing.assert_array_equal(y, x.transpose(0, 3, 1, 2).reshape(2, -1))
    assert interop.TorchFlatten().output_shape((3, 2, 4)) == (24,)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "header too small"), (b"\x1f\x8b\x08\x00" * 8, "header too large"), (b"PK\x03\x04" + b"\x00" * 60, "")],
    ids=["empty", "gzip", "zip"],
)
def test_load_safetensors_refuses_other_files_naming_them(tmp_path, content, reason):
    pytest.importorskip("safetensors")
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    expected = rf"load_safetensors: '.*model\.pt' is not a readable safetensors file \(.*{reason}"
    with pytest.raises(ValueError, match=expected):
        interop.load_safetensors(str(path))
    with pytest.raises(FileNotFoundError):
        interop.load_safetensors(str(tmp_path / "missing.safetensors"))
