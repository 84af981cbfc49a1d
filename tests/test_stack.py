"""``stack`` equals the unrolled ``serial`` of its copies, ``remat`` equals the layer it wraps (float64 outputs and
gradients, under jit, grad and vmap; Dropout and BatchNorm inside); both train, checkpoint, summarize and shard."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import nnjax
from nnjax._src import sharding
from nnjax._src.core import kind

N = 3
POLICIES = [None, "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable", "everything_saveable"]


def _block(dropout=0.25):
    """A shape-keeping block with random (Dropout) and stateful (BatchNorm) parts."""
    return nnjax.residual(nnjax.Dense(6), nnjax.BatchNorm(), nnjax.Tanh(), nnjax.Dropout(dropout), nnjax.Dense(4))


def _take(tree, i):
    """Entry ``i`` of every array of ``tree`` (copy ``i`` of a stack, model ``i`` of an ensemble), in NumPy (eager
    indexing would compile a program per shape)."""
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def _unrolled(block, params, state, n=N):
    """The ``serial`` of the n copies, and the copies' params and state under serial's names."""
    names = [f"{kind(block)}_{i}" for i in range(n)]
    return (
        nnjax.serial(*[block] * n),
        {name: _take(params["layers"], i) for i, name in enumerate(names)},
        {name: _take(state["layers"], i) for i, name in enumerate(names)},
        names,
    )


def _close(a, b, rtol=1e-12, atol=1e-12):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol), a, b)


def _data(shape=(5, 4), seed=1):
    """float64 NumPy data (a jax.random draw compiles its sampler per shape)."""
    return np.random.default_rng(seed).standard_normal(shape)


def test_params_are_the_copies_on_a_leading_axis_drawn_with_split_keys(x64):
    block = _block()
    layer = nnjax.stack(block, N)
    params, state = layer.init(jax.random.key(0), (4,), jnp.float64)
    assert jax.tree.map(jnp.shape, params)["layers"]["body"]["dense_0"] == {"b": (N, 6), "w": (N, 4, 6)}
    assert jax.tree.map(jnp.shape, state)["layers"]["body"]["batch_norm_1"] == {"mean": (N, 6), "var": (N, 6)}
    block_init = jax.jit(lambda k: block.init(k, (4,), jnp.float64))  # compiled once for the n keys
    for i, k in enumerate(jax.random.split(jax.random.key(0), N)):  # copy i is block.init(split(key, n)[i])
        p_i, s_i = block_init(k)
        _close(_take(params["layers"], i), p_i, 0, 0)
        _close(_take(state["layers"], i), s_i, 0, 0)
    w = params["layers"]["body"]["dense_0"]["w"]
    assert not np.allclose(w[0], w[1])  # independent copies


@pytest.mark.parametrize("train", [False, True])
def test_outputs_gradients_and_state_equal_the_unrolled_serial_under_jit_and_grad(x64, train):
    block = _block()
    layer = nnjax.stack(block, N)
    params, state = layer.init(jax.random.key(0), (4,), jnp.float64)
    serial, s_params, s_state, names = _unrolled(block, params, state)
    x, key = _data(), jax.random.key(7)  # apply splits key in n, as serial does: the same Dropout masks

    def loss(apply, p, s):
        y, new_s = apply(p, s, x, key=key, train=train)
        return jnp.sum(jnp.sin(y)), (y, new_s)

    @jax.jit  # both gradients (and the evaluation pass): one compiled program
    def run(params, s_params):
        stacked = jax.grad(lambda p: loss(layer.apply, p, state), has_aux=True)(params)
        unrolled = jax.grad(lambda p: loss(serial.apply, p, s_state), has_aux=True)(s_params)
        return stacked, unrolled, layer.apply(params, state, x, key=key, train=False)[0] if train else None

    (g, (y, new_state)), (g_s, (y_s, new_s)), y_eval = run(params, s_params)
    _close(y, y_s)
    for i, name in enumerate(names):
        _close(_take(g["layers"], i), g_s[name])
        _close(_take(new_state["layers"], i), new_s[name])
    if train:  # the statistics moved, and dropout made a difference
        assert not np.allclose(new_state["layers"]["body"]["batch_norm_1"]["mean"], 0.0)
        assert not np.allclose(y, y_eval)


def test_finite_difference_gradients(x64):
    layer = nnjax.stack(nnjax.residual(nnjax.Dense(5), nnjax.Tanh(), nnjax.Dense(3)), 2)
    params, state = layer.init(jax.random.key(0), (3,), jnp.float64)
    x = _data((4, 3))
    # NumPy arguments: check_grads' finite-difference steps (x + eps * t) run in NumPy, not as eager programs
    params = jax.tree.map(np.asarray, params)
    check_grads(jax.jit(lambda p, x: layer.apply(p, state, x)[0]), (params, x), order=2, modes=["rev"])


def test_vmap_over_an_ensemble_of_stacked_models_equals_a_loop(x64):
    layer = nnjax.stack(_block(), N)
    keys = jax.random.split(jax.random.key(3), 2)
    params, state = jax.jit(jax.vmap(lambda k: layer.init(k, (4,), jnp.float64)))(keys)  # one compiled init
    x = _data()
    run = lambda p, s, k: layer.apply(p, s, x, key=k, train=True)  # noqa: E731
    ys, new_states = jax.jit(jax.vmap(run))(params, state, keys)
    one = jax.jit(run)  # the loop's model: compiled once for both
    for m in range(2):
        p_m, s_m = _take((params, state), m)
        y_m, new_m = one(p_m, s_m, keys[m])
        _close(ys[m], y_m)
        _close(_take(new_states, m), new_m)


@pytest.mark.parametrize(  # the default suite: none and the strictest; CI's slow pass: the others too
    "policy", [p if p in (None, "nothing_saveable") else pytest.param(p, marks=pytest.mark.slow) for p in POLICIES]
)
def test_remat_gradients_equal_the_plain_ones(x64, policy):
    block = _block()
    stacked = nnjax.stack(block, N)
    params, state = stacked.init(jax.random.key(0), (4,), jnp.float64)
    x, key = _data(), jax.random.key(2)

    def grads(layer, params, x):
        loss = lambda p, x: jnp.sum(layer.apply(p, state, x, key=key, train=True)[0] ** 2)  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(params, x)

    layers = [stacked, nnjax.stack(block, N, remat=policy), nnjax.remat(stacked, policy)]
    plain, per_copy, whole = jax.jit(lambda p, x: [grads(layer, p, x) for layer in layers])(params, x)  # one program
    _close(per_copy, plain)
    _close(whole, plain)  # remat of any layer, the whole stack here


def test_remat_keeps_fewer_residuals():
    """With ``nothing_saveable`` the backward pass keeps less: the saved residuals of a vjp shrink."""
    layer = nnjax.serial(nnjax.Dense(64), nnjax.Tanh(), nnjax.Dense(64), nnjax.Tanh(), nnjax.Dense(8))
    params, state = jax.eval_shape(lambda key: layer.init(key, (8,)), jax.random.key(0))
    x = jax.ShapeDtypeStruct((16, 8), jnp.float32)

    def saved(layer):  # the vjp traced abstractly: its residuals' shapes, nothing computed or compiled
        vjp = jax.eval_shape(lambda p, x: jax.vjp(lambda p: layer.apply(p, state, x)[0], p)[1], params, x)
        return sum(math.prod(a.shape) for a in jax.tree.leaves(vjp))

    assert saved(nnjax.remat(layer, "nothing_saveable")) < saved(layer)
    assert saved(nnjax.remat(layer, jax.checkpoint_policies.everything_saveable)) >= saved(layer)


def test_a_block_that_changes_the_dtype_equals_the_serial(x64):
    """float64 in, float32 out: copy 0 runs outside the scan so every copy sees what serial's would."""
    block = nnjax.serial(nnjax.Dense(3), nnjax.stateless(lambda x: x.astype(jnp.float32), "ToFloat32"))
    layer = nnjax.stack(block, N)
    params, state = layer.init(jax.random.key(0), (3,), jnp.float32)
    serial, s_params, s_state, _ = _unrolled(block, params, state)
    x = _data((2, 3))
    y, new_state = layer.apply(params, state, x)
    y_s, _ = serial.apply(s_params, s_state, x)
    assert y.dtype == jnp.float32
    _close(y, y_s, 1e-6, 1e-6)
    assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)


def test_errors_name_the_argument_and_what_was_given():
    with pytest.raises(TypeError, match=r"stack: argument `block` expected a Layer, given function. Did you forget"):
        nnjax.stack(nnjax.Relu, 2)
    with pytest.raises(TypeError, match=r"stack: argument `n` expected a positive int, given str '2'"):
        nnjax.stack(nnjax.Relu(), "2")
    with pytest.raises(ValueError, match=r"stack: argument `n` expected a positive int, given 0"):
        nnjax.stack(nnjax.Relu(), 0)
    with pytest.raises(ValueError, match=r"stack: argument `policy` expected one of .*nothing_saveable.*'dots'"):
        nnjax.stack(nnjax.Relu(), 2, remat="dots")
    with pytest.raises(ValueError, match=r"remat: argument `policy` expected one of .*given 'all'"):
        nnjax.remat(nnjax.Relu(), "all")
    with pytest.raises(TypeError, match=r"remat: argument `layer` expected a Layer, given int"):
        nnjax.remat(3)
    layer = nnjax.stack(nnjax.Dense(5), 2)
    init = lambda shape: jax.eval_shape(lambda k: layer.init(k, shape), jax.random.key(0))  # noqa: E731 - traced only
    with pytest.raises(
        nnjax.LayerError,
        match=r"Stack\(2, Dense\(5\)\): the block must keep its input's shape.*"
        r"input_shape \(4,\), block output \(5,\)",
    ):
        init((4,))
    params, state = init((5,))  # abstract: apply raises while checking, before any computing
    with pytest.raises(nnjax.LayerError, match=r"stack > Dense\(5\): argument `x` expected shape"):
        layer.apply(params, state, np.ones((2, 4), np.float32))
    with pytest.raises(nnjax.LayerError, match=r"Dropout.*key"):
        nnjax.stack(nnjax.Dropout(0.5), 2).apply({"layers": {}}, {"layers": {}}, np.ones((2, 3)), train=True)


def test_summary_reports_n_and_the_per_copy_rows():
    model = nnjax.serial(nnjax.Dense(4), nnjax.stack(_block(), N), nnjax.Dense(2))
    info = nnjax.summarize(model, (3,), flops=False)
    rows = {row.path: row for row in info.rows}
    one = 4 * 6 + 6 + 2 * 6 + 6 * 4 + 4  # Dense(6), BatchNorm's scale and bias, Dense(4)
    assert rows["stack_1"].name == f"Stack(n={N}) of the copy below" and rows["stack_1"].params == N * one
    assert rows["stack_1/layers"].params == one
    assert rows["stack_1/layers/body/dense_0"].output_shape == (6,)
    assert info.total_params == 3 * 4 + 4 + N * one + 4 * 2 + 2
    assert f"Stack(n={N})" in str(info)


def test_fsdp_never_splits_the_stacked_axis_unless_asked():
    mesh = jax.sharding.AbstractMesh((4,), ("data",))
    model = nnjax.serial(nnjax.Dense(4), nnjax.stack(nnjax.Dense(4), 8))
    ts = nnjax.abstract_train_state(model, optax.adam(1e-3), (3,))  # shapes are all the specs need: nothing compiled
    specs = lambda **kw: jax.tree.map(  # noqa: E731
        lambda s: tuple(s.spec), sharding.train_state_shardings(ts, mesh, fsdp=True, **kw)
    )
    default, asked = specs(), specs(shard_stacked=True)
    assert default.params["stack_1"]["layers"]["w"] == (None, "data", None)  # (8, 4, 4): not the 8 copies
    assert asked.params["stack_1"]["layers"]["w"] == ("data", None, None)
    assert default.opt_state[0].mu["stack_1"]["layers"]["w"] == (None, "data", None)  # optimizer state alike
    assert default.params["dense_0"]["w"] == (None, "data")
    assert sharding.fsdp_spec((8, 4), 4, skip=1) == jax.sharding.PartitionSpec(None, "data")


def _tiny_problem():
    rs = np.random.RandomState(0)
    x = rs.randn(64, 4).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int32)
    model = nnjax.serial(nnjax.stack(_block(0.1), 2, remat="dots_saveable"), nnjax.Dense(2))
    return model, x, y


@pytest.mark.slow  # two compiled training programs: about 10 s on 2 cores
def test_fit_and_fit_many_train_a_stacked_model():
    model, x, y = _tiny_problem()
    loss = nnjax.losses.softmax_cross_entropy
    result = nnjax.fit(model, loss, optax.adam(3e-2), x, y, epochs=30, batch_size=32, progress=False)
    assert result.history["loss"][-1] < 0.5 * result.history["loss"][0]
    many = nnjax.fit_many(model, loss, optax.adam(3e-2), x, y, seeds=[0, 1], epochs=30, batch_size=32, progress=False)
    final = np.asarray(many.history["loss"])
    assert final.shape == (2, 30) and np.all(final[:, -1] < 0.5 * final[:, 0])
    assert many.train_states.params["stack_0"]["layers"]["body"]["dense_0"]["w"].shape == (2, 2, 4, 6)


def test_checkpoint_round_trip_and_a_clear_error_for_an_unrolled_checkpoint(tmp_path):
    block = _block()
    stacked = nnjax.serial(nnjax.stack(block, N))
    opt = optax.adam(1e-3)
    ts = nnjax.init_train_state(stacked, opt, jax.random.key(0), (4,))
    nnjax.save_checkpoint(tmp_path / "stacked", ts)
    back, _ = nnjax.restore_checkpoint(tmp_path / "stacked", nnjax.abstract_train_state(stacked, opt, (4,)))
    _close(back.params, ts.params, 0, 0)
    _close(back.state, ts.state, 0, 0)

    unrolled = nnjax.serial(*[block] * N)
    nnjax.save_checkpoint(tmp_path / "unrolled", nnjax.init_train_state(unrolled, opt, jax.random.key(0), (4,)))
    hint = r"(?s)holds an unrolled model .* the model is stacked.*scan_layers=False"
    with pytest.raises(nnjax.CheckpointMismatchError, match=hint):
        nnjax.restore_checkpoint(tmp_path / "unrolled", nnjax.abstract_train_state(stacked, opt, (4,)))


def test_interop_pairs_copy_i_with_torch_prefix_i_and_stacks_back():
    """``stack(block, 2)`` is an ``nn.Sequential`` of two blocks to ``nnjax.interop``: ``0.*`` and ``1.*``; BatchNorm
    statistics go to the stacked state; export gives the same keys back."""
    block = nnjax.serial(nnjax.Dense(3), nnjax.BatchNorm())  # nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model = nnjax.stack(block, 2)
    rs = np.random.RandomState(0)
    sd = {}
    for i in range(2):
        sd |= {f"{i}.0.weight": rs.randn(3, 3), f"{i}.0.bias": rs.randn(3)}
        sd |= {f"{i}.1.{name}": rs.rand(3) + 0.5 for name in ("weight", "bias", "running_mean", "running_var")}
        sd[f"{i}.1.num_batches_tracked"] = np.array(0)
    params, state = nnjax.interop.from_torch_state_dict(model, sd, input_shape=(3,))
    assert params["layers"]["dense_0"]["w"].shape == (2, 3, 3)
    for i in range(2):
        np.testing.assert_allclose(params["layers"]["dense_0"]["w"][i], sd[f"{i}.0.weight"].T, rtol=1e-6)
        np.testing.assert_allclose(state["layers"]["batch_norm_1"]["var"][i], sd[f"{i}.1.running_var"], rtol=1e-6)
    exported = nnjax.interop.to_torch_state_dict(model, params, state, template=sd)
    assert list(exported) == list(sd)
    for key, value in sd.items():
        np.testing.assert_allclose(exported[key], value, rtol=1e-6, err_msg=key)
    with pytest.raises(
        nnjax.interop.InteropError, match=r"wrong shape '1.0.weight': expected \(3, 3\), given \(4, 3\)"
    ):
        nnjax.interop.from_torch_state_dict(model, {**sd, "1.0.weight": np.ones((4, 3))}, input_shape=(3,))


@pytest.mark.parametrize("unroll", [2, True])
def test_unrolled_loop_iterations_compute_the_same(x64, unroll):
    block = _block()
    params, state = nnjax.stack(block, N).init(jax.random.key(0), (4,), jnp.float64)
    x, key = _data(), jax.random.key(4)

    @jax.jit  # the scanned and the unrolled loop: one compiled program
    def both(p, s):
        return [nnjax.stack(block, N, unroll=u).apply(p, s, x, key=key, train=True) for u in (1, unroll)]

    (y, new_state), (y_u, new_u) = both(params, state)
    _close(y_u, y)
    _close(new_u, new_state)
