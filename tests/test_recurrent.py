"""Recurrent cells and layers against their equations written out in NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from traced_init import param_names

import nnjax
from nnjax._src.recurrent import (
    GRU,
    LSTM,
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    SimpleRNN,
    SimpleRNNCell,
    scan_cell,
    sequence_mask,
)

B, T, F, H = 3, 5, 4, 6


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_step(cell, p, carry, x):
    """One step of each cell, written from its docstring's equations."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if isinstance(cell, SimpleRNNCell):
        h = np.tanh(x @ p["w_x"] + p["b"] + carry @ p["w_h"])
        return h, h
    if isinstance(cell, LSTMCell):
        h, c = carry
        z = x @ p["w_x"] + p["b"] + h @ p["w_h"]
        i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        return (h, c), h
    h = carry
    xw, hw = x @ p["w_x"] + p["b"], h @ p["w_h"]
    r = sigmoid(xw[:, :H] + hw[:, :H])
    z = sigmoid(xw[:, H : 2 * H] + hw[:, H : 2 * H])
    n = np.tanh(xw[:, 2 * H :] + r * (hw[:, 2 * H :] + p["b_hn"]))
    h = (1 - z) * n + z * h
    return h, h


def np_zero_carry(cell, batch):
    zero = np.zeros((batch, H))
    return (zero, zero) if isinstance(cell, LSTMCell) else zero


def np_rnn(cell, p, x, mask=None, reverse=False, carry=None):
    """A Python loop over time; masked steps hold the carry and output 0."""
    x = np.asarray(x, np.float64)
    carry = np_zero_carry(cell, x.shape[0]) if carry is None else carry
    mask = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    ys = np.zeros((x.shape[0], x.shape[1], H))
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        new, h = np_step(cell, p, carry, x[:, t])
        m = mask[:, t, None]
        carry = jax.tree.map(lambda a, b: np.where(m, a, b), new, carry)
        ys[:, t] = np.where(m, h, 0.0)
    last = carry[0] if isinstance(carry, tuple) else carry
    return ys, last


CELLS = [SimpleRNNCell(H), LSTMCell(H), GRUCell(H)]
IDS = ["simple_rnn", "lstm", "gru"]


def random_params(cell, dtype=np.float32):
    """Random params, biases too (init's zeros would hide bias mistakes), in the form ``cell.init`` gives (traced
    abstractly: nothing compiled), drawn by NumPy: the tests compare the layers with the equations for any params,
    and a compiled init costs about 0.8 s (its orthogonal initializer); ``test_param_names_...`` checks init."""
    shapes = jax.eval_shape(lambda key: cell.init(key, F), jax.random.key(0))
    rng = np.random.default_rng(1)
    return {k: (0.5 * rng.standard_normal(s.shape)).astype(dtype) for k, s in shapes.items()}


def data(key=2, batch=B, steps=T, dtype=np.float32):
    """Sequences from NumPy (no jax.random program to compile per shape)."""
    return np.random.default_rng(key).standard_normal((batch, steps, F)).astype(dtype)


def np_mask(lengths, steps):
    """``sequence_mask`` in NumPy, for the float64 tests (whose eager int64 ops would each compile)."""
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


@functools.partial(jax.jit, static_argnums=(0, 1))  # the type too: SimpleRNNCell(6) == GRUCell(6) as tuples
def _steps(_, cell, p, carry, x):
    """One step batch-major, and the same step on transposed (features, batch) arrays: one compiled program."""
    carry_t = jax.tree.map(jnp.transpose, carry)
    return cell.step(p, carry, x), cell.recurrence(p, carry_t, cell.input_projection(p, x).T, feature_major=True)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_cell_step_matches_numpy_equations(cell):
    p = random_params(cell)
    x = data()[:, 0]
    carry = jax.tree.map(lambda a: np.asarray(a) + 0.5, cell.initial_carry(B))
    (new, h), (new_t, h_t) = _steps(type(cell), cell, p, carry, x)
    np_new, np_h = np_step(cell, p, carry, x)
    np.testing.assert_allclose(h, np_h, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), new, np_new)
    # the same step on transposed (features, batch) arrays
    np.testing.assert_allclose(h_t.T, np_h, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a.T, b, rtol=1e-5, atol=1e-5), new_t, np_new)


def test_param_names_shapes_and_lstm_forget_bias():
    init = lambda cell: jax.jit(cell.init, static_argnums=1)(jax.random.key(0), F)  # noqa: E731 - one program each
    p = init(LSTMCell(H))
    assert jax.tree.map(jnp.shape, p) == {"w_x": (F, 4 * H), "w_h": (H, 4 * H), "b": (4 * H,)}
    np.testing.assert_array_equal(p["b"][H : 2 * H], 1.0)  # forget block, gate order i, f, g, o
    np.testing.assert_array_equal(p["b"][:H], 0.0)
    gru = jax.eval_shape(lambda key: GRUCell(H).init(key, F), jax.random.key(0))  # shapes only: traced, not compiled
    assert jax.tree.map(jnp.shape, gru)["b_hn"] == (H,)
    assert init(LSTMCell(H, forget_bias=0.0))["b"].sum() == 0.0


LAYOUTS = {"inside-batch-major": (False, False), "inside-feature-major": (False, True), "hoisted": (True, None)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_rnn_layer_matches_python_loop(cell, reverse, layout):
    hoist, feature_major = LAYOUTS[layout]
    layer = RNN(cell, reverse=reverse, hoist_input=hoist, feature_major=feature_major)
    last_layer = RNN(cell, reverse=reverse, return_sequences=False, hoist_input=hoist, feature_major=feature_major)
    p = random_params(cell)
    x = data()
    # eagerly, as users run it: both layers run the same compiled scan, so their last steps agree to the bit
    ys, last = np.asarray(layer.apply(p, {}, x)[0]), np.asarray(last_layer.apply(p, {}, x)[0])
    np_ys, np_last = np_rnn(cell, p, x, reverse=reverse)
    np.testing.assert_allclose(ys, np_ys, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last, np_last, rtol=1e-4, atol=1e-5)
    # the last output is the last step's (forward) or the first step's (reverse)
    np.testing.assert_allclose(last, ys[:, 0 if reverse else -1], rtol=1e-6)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_mask_padding_changes_nothing(cell):
    p = random_params(cell)
    lengths = jnp.array([5, 2, 3])
    mask = np.asarray(sequence_mask(lengths, T))
    x = data()
    noise = np.where(mask[..., None], 0.0, 100.0 * data(key=7)).astype(np.float32)  # garbage only in the padding
    alone = [x[b : b + 1, :n] for b, n in enumerate(lengths.tolist())]  # each sequence unpadded
    # Both directions in each compiled program (each jitted apply compiled on its own before): the sequences, one
    # program run on the clean and on the noisy input; the last states, padded and alone.
    directions = (False, True)  # forward, reverse: a list index below

    @jax.jit
    def seqs(p, x, mask):
        return [RNN(cell, reverse=r).apply(p, {}, {"x": x, "mask": mask})[0] for r in directions]

    @jax.jit
    def lasts(p, noisy, mask, alone):
        out = []
        for r in directions:
            last = RNN(cell, reverse=r, return_sequences=False).apply
            out.append((last(p, {}, {"x": noisy, "mask": mask})[0], [last(p, {}, a)[0] for a in alone]))
        return out

    outs, noisy_outs = (jax.tree.map(np.asarray, seqs(p, inputs, mask)) for inputs in (x, x + noise))
    last_states = jax.tree.map(np.asarray, lasts(p, x + noise, mask, alone))
    for reverse in directions:
        out, out_noisy, (padded_last, alone_last) = outs[reverse], noisy_outs[reverse], last_states[reverse]
        np.testing.assert_allclose(out["x"], out_noisy["x"], rtol=1e-6)
        np_ys, np_last = np_rnn(cell, p, x, mask=mask, reverse=reverse)
        np.testing.assert_allclose(out["x"], np_ys, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(padded_last, np_last, rtol=1e-4, atol=1e-5)
        # each sequence's last state equals running it alone, unpadded
        for b in range(len(alone)):
            np.testing.assert_allclose(padded_last[b], alone_last[b][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_given_initial_carry(cell):
    p = random_params(cell)
    x = data()
    carry = jax.tree.map(lambda a: np.asarray(a) + 0.7, cell.initial_carry(B))
    ys = np.asarray(RNN(cell).apply(p, {}, {"x": x, "initial_carry": carry})[0])
    np_ys, _ = np_rnn(cell, p, x, carry=carry)
    np.testing.assert_allclose(ys, np_ys, rtol=1e-4, atol=1e-5)
    zero_ys = np.asarray(RNN(cell).apply(p, {}, x)[0])
    assert not np.allclose(ys[:, 0], zero_ys[:, 0])


def test_bidirectional_concat_and_last():
    fwd, bwd = LSTMCell(H), GRUCell(H)
    layer = Bidirectional(fwd, bwd)
    summed = Bidirectional(fwd, bwd, merge="sum", return_sequences=False)
    p = {"forward": random_params(fwd), "backward": random_params(bwd)}  # the form of layer.init's; made already
    x = data()
    mask = np.asarray(sequence_mask(jnp.array([5, 1, 4]), T))
    # the three applies as one compiled program (eagerly, each scan and merge compiles on its own)
    ys, last, out = jax.jit(
        lambda p, x, mask: (
            layer.apply(p, {}, x)[0],
            summed.apply(p, {}, x)[0],
            layer.apply(p, {}, {"x": x, "mask": mask})[0],
        )
    )(p, x, mask)
    f_ys, f_last = np_rnn(fwd, p["forward"], x)
    b_ys, b_last = np_rnn(bwd, p["backward"], x, reverse=True)
    np.testing.assert_allclose(ys, np.concatenate([f_ys, b_ys], -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last, f_last + b_last, rtol=1e-4, atol=1e-5)
    assert layer.name == "Bidirectional(LSTM(6), GRU(6))"
    f_ys, _ = np_rnn(fwd, p["forward"], x, mask=mask)
    b_ys, _ = np_rnn(bwd, p["backward"], x, mask=mask, reverse=True)
    np.testing.assert_allclose(out["x"], np.concatenate([f_ys, b_ys], -1), rtol=1e-4, atol=1e-5)


LAYERS = [
    LSTM(H),
    LSTM(H, return_sequences=False),
    GRU(H, reverse=True),
    SimpleRNN(H, return_sequences=False),
    LSTM(H, num_layers=2),
    Bidirectional(GRUCell(H)),
    Bidirectional(LSTMCell(H), merge="mean", return_sequences=False),
]


@pytest.mark.parametrize("layer", LAYERS, ids=[f"{layer.name}-{i}" for i, layer in enumerate(LAYERS)])
def test_output_shape_agrees_with_apply(layer):
    # init and apply traced abstractly: the same shapes as run, nothing compiled
    params, state = jax.eval_shape(lambda key: layer.init(key, (T, F)), jax.random.key(0))
    y, _ = jax.eval_shape(layer.apply, params, state, data())
    assert layer.output_shape((T, F)) == y.shape[1:]


def test_names_and_serial_param_keys():
    model = nnjax.serial(LSTM(8), GRU(4, return_sequences=False), nnjax.Dense(2))
    assert param_names(model, (T, F)) == ["lstm_0", "gru_1", "dense_2"]
    assert SimpleRNN(3).name == "SimpleRNN(3)"
    assert param_names(LSTM(8, num_layers=3), (T, F)) == ["lstm_0", "lstm_1", "lstm_2"]


def test_stacked_rnns_pass_the_mask_on():
    model = nnjax.serial(LSTM(8), GRU(4, return_sequences=False))
    # any params show it: random ones in the form init gives (init traced abstractly, nothing compiled)
    shapes, state = jax.eval_shape(lambda key: model.init(key, {"x": (T, F), "mask": (T,)}), jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: 0.5 * rng.standard_normal(s.shape).astype(np.float32), shapes)
    mask = np.asarray(sequence_mask(jnp.array([2, 5, 3]), T))
    x = data()
    noisy = x + np.where(mask[..., None], 0.0, 50.0).astype(np.float32)
    apply = jax.jit(model.apply)  # compiled once, for both inputs
    a, _ = apply(params, state, {"x": x, "mask": mask})
    b, _ = apply(params, state, {"x": noisy, "mask": mask})
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("order", [1, pytest.param(2, marks=pytest.mark.slow)])  # second order: CI's slow pass
@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_check_grads_float64(x64, cell, order):
    # NumPy arguments: check_grads' finite-difference steps (x + eps * t) then run in NumPy, not as eager
    # programs compiled per array shape.
    p = random_params(cell, np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, F))
    mask = np_mask([3, 2], 3)

    def f(p, x):  # masked, reversed: the general path
        return jnp.sum(scan_cell(cell, p, x, mask=mask, reverse=True)[1] ** 2)

    check_grads(jax.jit(f), (p, x), order=order, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(  # the GRU: CI's slow pass
    "cell", [LSTMCell(H), pytest.param(GRUCell(H), marks=pytest.mark.slow)], ids=["lstm", "gru"]
)
def test_feature_major_and_batch_major_scans_agree_with_derivatives(x64, cell):
    """The transposed scan (and its custom matmul JVP) against the plain one: values, VJP, JVP, HVP.

    (SimpleRNN's feature-major scan is the default on CPU, so ``test_check_grads_float64`` checks it.)
    """
    p = random_params(cell, np.float64)
    x = data(1, dtype=np.float64)
    mask = np_mask([5, 2, 4], T)
    carry = jax.tree.map(lambda a: np.asarray(a) + 0.3, cell.initial_carry(B, jnp.float64))

    def run(feature_major, p, x, carry):
        last, ys = scan_cell(
            cell, p, x, mask=mask, initial_carry=carry, reverse=True, hoist_input=False, feature_major=feature_major
        )
        return ys, last

    def loss(feature_major, p, x, carry):
        ys, last = run(feature_major, p, x, carry)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(last))

    args = (p, x, carry)
    tangents = jax.tree.map(lambda a: np.cos(a) * 0.5, args)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # noqa: E731
    grad = lambda fm, *a: jax.grad(functools.partial(loss, fm), argnums=(0, 1, 2))(*a)  # noqa: E731
    checks = {
        "values": run,
        "vjp": grad,
        "jvp": lambda fm, *a: jax.jvp(functools.partial(run, fm), a, tangents),
        "hvp": lambda fm, *a: jax.jvp(functools.partial(grad, fm), a, tangents)[1],
    }
    # every check in both layouts as one compiled program: about half the compile time of eight programs
    both = jax.jit(lambda *a: {name: (fn(True, *a), fn(False, *a)) for name, fn in checks.items()})(*args)
    for name in checks:
        jax.tree.map(close, *both[name])
    assert "custom_jvp_call" in str(jax.make_jaxpr(lambda *a: run(True, *a))(*args))
    assert "custom_jvp_call" not in str(jax.make_jaxpr(lambda *a: run(False, *a))(*args))


def test_jit_agrees_and_vmap_over_models():
    layer = LSTM(H)
    x = data()
    keys = jax.random.split(jax.random.key(0), 4)
    params = jax.jit(jax.vmap(lambda k: layer.init(k, (T, F))[0]))(keys)  # 4 models, stacked (one compiled init)
    ys = jax.vmap(lambda p: layer.apply(p, {}, x)[0])(params)
    assert ys.shape == (4, B, T, H)
    p0 = jax.tree.map(lambda a: np.asarray(a)[0], params)
    np.testing.assert_allclose(ys[0], layer.apply(p0, {}, x)[0], rtol=1e-5, atol=1e-6)
    jitted = jax.jit(layer.apply)(p0, {}, x)[0]
    np.testing.assert_allclose(jitted, layer.apply(p0, {}, x)[0], rtol=1e-5, atol=1e-6)


def test_train_steps_in_scan_reduce_loss():
    model = nnjax.serial(GRU(16, return_sequences=False), nnjax.Dense(1))
    x = data(batch=32, steps=8)
    y = x[:, :, :1].sum(axis=1)  # the sum over time of feature 0
    tx = optax.adam(1e-2)
    ts = nnjax.init_train_state(model, tx, jax.random.key(0), (8, F))
    step = nnjax.make_train_step(model, nnjax.losses.mse, tx, jit=False)
    ts, metrics = jax.jit(lambda ts: jax.lax.scan(lambda s, _: step(s, (x, y)), ts, None, length=150))(ts)
    assert metrics["loss"][-1] < 0.1 * metrics["loss"][0]


def test_clear_errors():
    layer = LSTM(H)
    params, state = random_params(LSTMCell(H)), {}  # LSTM(H)'s (no init compiled: the errors come first)
    # NumPy inputs: the errors are raised before anything runs, and jnp.ones would compile per shape
    with pytest.raises(
        nnjax.LayerError, match=r"LSTM\(6\): argument `x` expected shape \(batch, T, 4\), given \(3, 5, 7\)"
    ):
        layer.apply(params, state, np.ones((B, T, 7), np.float32))
    with pytest.raises(nnjax.LayerError, match=r"given \(5, 4\).*x\[None\]"):
        layer.apply(params, state, np.ones((T, F), np.float32))
    with pytest.raises(
        nnjax.LayerTypeError, match=r"LSTM\(6\): argument `x` expected a floating-point.*int32.*one_hot"
    ):
        layer.apply(params, state, np.ones((B, T, F), np.int32))
    with pytest.raises(nnjax.LayerError, match=r"serial\[1\] > GRU\(3\): argument `x` expected shape \(batch, T, 4\)"):
        # traced abstractly (the checks run while tracing): nothing is compiled
        model = nnjax.serial(nnjax.Dense(4), GRU(3))
        p, s = jax.eval_shape(lambda key: model.init(key, (T, F)), jax.random.key(0))
        p["gru_1"] = jax.eval_shape(lambda key: GRUCell(3).init(key, 4), jax.random.key(0))
        jax.eval_shape(model.apply, p, s, np.ones((B, T, F), np.float32))  # fine
        jax.eval_shape(model.apply, p, s, np.ones((B, F), np.float32))  # Dense passes rank 2 through; GRU refuses
    with pytest.raises(
        nnjax.LayerError, match=r"argument `mask` expected shape \(batch, T\) = \(3, 5\), given \(3, 4\)"
    ):
        layer.apply(params, state, {"x": data(), "mask": np.ones((B, 4), np.float32)})
    with pytest.raises(nnjax.LayerError, match=r"a dict with key 'x'.*given a dict with keys \['lengths', 'x'\]"):
        layer.apply(params, state, {"x": data(), "lengths": np.ones((B,), np.float32)})
    with pytest.raises(nnjax.LayerError, match=r"input_shape` expected \(T, features\)"):
        layer.init(jax.random.key(0), (F,))
    with pytest.raises(ValueError, match="`hidden` expected a positive int, given 0"):
        LSTM(0)
    with pytest.raises(TypeError, match="not a layer such as LSTM"):
        RNN(LSTM(4))
    with pytest.raises(ValueError, match="`merge` expected one of"):
        Bidirectional(GRUCell(3), merge="max")
