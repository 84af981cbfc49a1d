"""LoRA adapters: start equal to the base, train alone, merge into weights the unwrapped model takes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import nnjax

CASES = [
    (lambda: nnjax.Dense(3), (5,)),
    (lambda: nnjax.Conv(4, (3, 3)), (6, 6, 2)),
    (lambda: nnjax.MultiHeadAttention(2, 4), (5, 8)),
]


def _randomize_b(params):
    """Nonzero lora_b everywhere, as after some training (drawn by NumPy: each shape of an eager jax.random
    draw would be a compiled program of its own)."""
    rng = np.random.RandomState(7)

    def f(path, v):
        last = path[-1].key if hasattr(path[-1], "key") else None
        return rng.standard_normal(v.shape).astype(v.dtype) if last == "lora_b" else v

    return jax.tree_util.tree_map_with_path(f, params)


@pytest.mark.parametrize("make, shape", CASES)
def test_starts_equal_to_base_and_merges_to_the_same_function(make, shape):
    base = make()
    adapted = nnjax.lora(base, rank=2, alpha=4.0)
    params, state = jax.jit(adapted.init, static_argnums=1)(jax.random.key(0), shape)
    base_params, base_state = jax.jit(base.init, static_argnums=1)(jax.random.key(0), shape)
    adapted, base = adapted._replace(apply=jax.jit(adapted.apply)), base._replace(apply=jax.jit(base.apply))
    x = np.random.RandomState(1).standard_normal((2, *shape)).astype(np.float32)
    np.testing.assert_array_equal(adapted.apply(params, state, x)[0], base.apply(base_params, base_state, x)[0])
    trained = _randomize_b(params)
    merged = nnjax.merge_lora(trained)
    assert jax.tree.structure(merged) == jax.tree.structure(base_params)
    y_adapted = adapted.apply(trained, state, x)[0]
    y_merged = base.apply(merged, base_state, x)[0]
    np.testing.assert_allclose(y_adapted, y_merged, rtol=1e-5, atol=1e-5)
    assert float(np.abs(np.asarray(y_adapted) - np.asarray(base.apply(base_params, base_state, x)[0])).max()) > 1e-3


def test_dense_adapter_matches_numpy():
    adapted = nnjax.lora(nnjax.Dense(3), rank=2, alpha=6.0)
    params = _randomize_b(adapted.init(jax.random.key(0), (5,))[0])
    x = np.random.RandomState(0).randn(4, 5).astype(np.float32)
    p = jax.tree.map(np.asarray, params)
    assert float(p["lora_scale"]) == 3.0
    expected = x @ (p["w"] + 3.0 * p["lora_a"] @ p["lora_b"]) + p["b"]
    np.testing.assert_allclose(adapted.apply(params, {}, x)[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        nnjax.merge_lora(params)["w"], p["w"] + 3.0 * p["lora_a"] @ p["lora_b"], rtol=1e-5, atol=1e-6
    )


def test_only_adapters_get_gradients_and_they_check_in_float64(x64):
    adapted = nnjax.lora(nnjax.Dense(3), rank=2)
    # compiled, not op by op (each eager operation and jax.random shape was a program of its own)
    params = _randomize_b(jax.jit(adapted.init, static_argnums=(1, 2))(jax.random.key(0), (4,), jnp.float64)[0])
    x = np.random.RandomState(1).standard_normal((3, 4))
    grads = jax.tree.map(np.asarray, jax.jit(jax.grad(lambda p: jnp.sum(adapted.apply(p, {}, x)[0] ** 2)))(params))
    assert float(np.abs(grads["w"]).max()) == 0.0 and float(np.abs(grads["b"]).max()) == 0.0
    assert float(grads["lora_scale"]) == 0.0 and float(np.abs(grads["lora_a"]).max()) > 0
    adapters = lambda a, b: adapted.apply({**params, "lora_a": a, "lora_b": b}, {}, x)[0]  # noqa: E731
    check_grads(jax.jit(adapters), (params["lora_a"], params["lora_b"]), order=2, modes=["rev"])
    full = nnjax.lora(nnjax.Dense(3), rank=2, train_base=True)
    full_grads = jax.jit(jax.grad(lambda p: jnp.sum(full.apply(p, {}, x)[0])))(params)
    assert float(np.abs(np.asarray(full_grads["w"])).max()) > 0


def test_train_adapters_merge_and_export_to_torch():
    body = [nnjax.Dense(8), nnjax.Relu()]
    plain = nnjax.serial(*body, nnjax.Dense(2))
    adapted = nnjax.serial(*body, nnjax.lora(nnjax.Dense(2), rank=2))
    rng = np.random.RandomState(0)
    x = rng.randn(64, 4).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int32)
    # compiled initializations (op by op, each jax.random shape was a program of its own)
    pretrained, _ = jax.jit(plain.init, static_argnums=1)(jax.random.key(0), (4,))
    start, _ = jax.jit(adapted.init, static_argnums=1)(jax.random.key(0), (4,))
    start = {**start, "dense_0": pretrained["dense_0"], "dense_2": {**start["dense_2"], **pretrained["dense_2"]}}
    opt = nnjax.freeze(optax.adam(0.05), start, lambda path: "lora_" not in path)
    result = nnjax.fit(
        adapted, nnjax.losses.softmax_cross_entropy, opt, x, y, params=start, epochs=5, batch_size=16, progress=False
    )
    trained = result.train_state.params
    assert result.history["loss"][-1] < result.history["loss"][0]
    np.testing.assert_array_equal(trained["dense_0"]["w"], pretrained["dense_0"]["w"])
    np.testing.assert_array_equal(trained["dense_2"]["w"], pretrained["dense_2"]["w"])
    merged = nnjax.merge_lora(trained)
    np.testing.assert_allclose(
        nnjax.predict(plain, result.train_state.replace(params=merged), x),
        nnjax.predict(adapted, result.train_state, x),
        rtol=1e-5,
        atol=1e-5,
    )
    exported = nnjax.interop.to_torch_state_dict(plain, merged, {"dense_0": {}, "relu_1": {}, "dense_2": {}})
    assert sorted(exported) == sorted(nnjax.interop.to_torch_state_dict(plain, pretrained, {k: {} for k in pretrained}))
    np.testing.assert_allclose(exported["2.weight"], np.asarray(merged["dense_2"]["w"]).T)


def test_lora_errors():
    with pytest.raises(ValueError, match=r"`rank` expected a positive int, given 0"):
        nnjax.lora(nnjax.Dense(2), 0)
    with pytest.raises(nnjax.LayerError, match=r"lora: Relu has no weight matrix `w`"):
        nnjax.lora(nnjax.Relu(), 2).init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"merge_lora: at dense_0, expected `w` with all of"):
        nnjax.merge_lora({"dense_0": {"w": jnp.ones((2, 2)), "lora_a": jnp.ones((2, 1))}})


def test_adapted_layer_keeps_its_key_in_serial():
    model = nnjax.serial(nnjax.lora(nnjax.Dense(4), 2), nnjax.Relu(), nnjax.lora(nnjax.Conv(2, (1,)), 1))
    # Initialized abstractly (jax.eval_shape: no program compiled), the names read inside: a pytree that
    # eval_shape returns has its dict keys sorted, which would hide the order this checks.
    names = []
    jax.eval_shape(lambda key: names.append(list(model.init(key, (3, 2))[0])), jax.random.key(0))
    assert names[0] == ["dense_0", "relu_1", "conv_2"]
    assert nnjax.lora(nnjax.Dense(4), 2).name == "Dense(4, lora_rank=2)"
