"""The pure train step: one compilation, donation, vmap over models, equality with hand-written JAX."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax import losses, metrics

MODEL = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dropout(0.1), nnjax.Dense(3))


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)
    return jax.device_put(x), jax.device_put(y)  # no program (jnp.asarray(..., dtype) compiles one per shape)


def _equal(a, b):
    """Leaf by leaf bitwise equality of two trees, in NumPy (eager jnp compiles a program per leaf shape)."""
    return jax.tree.all(jax.tree.map(lambda u, v: np.array_equal(np.asarray(u), np.asarray(v)), a, b))


DETERMINISTIC = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(3))


@pytest.mark.parametrize("model", [DETERMINISTIC, MODEL], ids=["deterministic", "dropout"])
def test_step_compiles_once_and_donates_its_input(model):
    traces = []

    def counting_loss(predictions, y):
        traces.append(1)
        return losses.softmax_cross_entropy(predictions, y)

    optimizer = optax.adam(1e-2)
    step = nnjax.make_train_step(model, counting_loss, optimizer, metrics={"accuracy": metrics.accuracy})
    train_state = nnjax.init_train_state(model, optimizer, jax.random.key(0), (5,))
    for seed in range(3):
        old = train_state
        train_state, logs = step(train_state, _batch(seed=seed))
        assert old.params["dense_0"]["w"].is_deleted()  # donated
    assert int(train_state.step) == 3 and isinstance(train_state.step, jax.Array)  # the device counts
    assert train_state.step.dtype == np.int32 and train_state.step.shape == ()
    assert set(logs) == {"loss", "accuracy"} and isinstance(logs["loss"], jax.Array)
    fresh = nnjax.init_train_state(model, optimizer, jax.random.key(1), (5,))  # a new (array-free) state object
    step(fresh, _batch())
    assert len(traces) == 1  # compiled once: never traced again after the first step


def test_step_whose_key_use_depends_on_the_batch_shape_equals_the_plain_step():
    """A layer that draws noise only for batches of 16: each shape's compiled step gets the step's key."""

    def init(key, input_shape, dtype=jnp.float32):
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if train and x.shape[0] == 16:
            x = x + jax.random.normal(key, x.shape)
        return x, state

    model = nnjax.serial(nnjax.Dense(3), nnjax.Layer(init, apply, "NoisyAt16"))
    optimizer = optax.sgd(0.1)
    # The plain step compiled by jax.jit for reference (op by op, each operation of each batch shape was a
    # program of its own); nnjax's jitted step passes the key, donates and splits the state its own way.
    plain = jax.jit(nnjax.make_train_step(model, losses.softmax_cross_entropy, optimizer, jit=False))
    jitted = nnjax.make_train_step(model, losses.softmax_cross_entropy, optimizer)
    got = nnjax.init_train_state(model, optimizer, jax.random.key(0), (5,))
    expected = nnjax.init_train_state(model, optimizer, jax.random.key(0), (5,))  # other arrays: `got` is donated
    for n in (32, 16, 16, 32):
        batch = _batch(n=n, seed=n)
        expected, expected_logs = plain(expected, batch)
        got, logs = jitted(got, batch)
        chex.assert_trees_all_close(logs, expected_logs, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
    assert int(got.step) == 4 and isinstance(got.step, jax.Array)


def test_jitted_step_with_and_without_state_arrays_equals_the_plain_step():
    x, y = _batch()
    optimizer = optax.sgd(0.1)
    stateless = MODEL  # its initialization and jitted step are test_training_randomness_...'s programs (cache hits)
    stateful = nnjax.serial(nnjax.Dense(4), nnjax.BatchNorm(), nnjax.Relu(), nnjax.Dense(3))
    for model in (stateless, stateful):
        # the plain step compiled by jax.jit for reference (op by op, each operation was a program of its own)
        plain = jax.jit(nnjax.make_train_step(model, losses.softmax_cross_entropy, optimizer, jit=False))
        jitted = nnjax.make_train_step(model, losses.softmax_cross_entropy, optimizer)
        expected = nnjax.init_train_state(model, optimizer, jax.random.key(0), (5,))
        got = nnjax.init_train_state(model, optimizer, jax.random.key(0), (5,))
        for _ in range(2):
            expected, expected_logs = plain(expected, (x, y))
            got, logs = jitted(got, (x, y))
        chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(logs, expected_logs, rtol=1e-5, atol=1e-6)
    assert jax.tree.leaves(got.state)  # BatchNorm's running statistics went through the general path


def test_step_equals_hand_written_jax():
    model = nnjax.serial(nnjax.Dense(8), nnjax.Tanh(), nnjax.Dense(3))
    optimizer = optax.sgd(0.1, momentum=0.9)
    train_state = nnjax.init_train_state(model, optimizer, jax.random.key(0), (5,))
    w1, b1 = train_state.params["dense_0"]["w"], train_state.params["dense_0"]["b"]
    w2, b2 = train_state.params["dense_2"]["w"], train_state.params["dense_2"]["b"]
    raw = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    raw_opt = optimizer.init(raw)

    def raw_loss(p, x, y):
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    @jax.jit  # the hand-written step as one program (op by op, each operation was a program of its own)
    def raw_step(raw, raw_opt, x, y):
        loss, grads = jax.value_and_grad(raw_loss)(raw, x, y)
        updates, raw_opt = optimizer.update(grads, raw_opt, raw)
        return loss, optax.apply_updates(raw, updates), raw_opt

    # the plain step compiled by jax.jit (op by op, each of its dozens of operations was a program of its own)
    step = jax.jit(nnjax.make_train_step(model, losses.softmax_cross_entropy, optimizer, jit=False))
    for seed in range(3):
        x, y = _batch(seed=seed)
        train_state, logs = step(train_state, (x, y))
        loss, raw, raw_opt = raw_step(raw, raw_opt, x, y)
        np.testing.assert_allclose(logs["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(train_state.params["dense_0"]["w"], raw["w1"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(train_state.params["dense_2"]["b"], raw["b2"], rtol=1e-5, atol=1e-6)


def test_vmapped_seeds_equal_sequential_runs():
    optimizer = optax.adam(1e-2)
    step = nnjax.make_train_step(MODEL, losses.softmax_cross_entropy, optimizer, jit=False)
    keys = jax.random.split(jax.random.key(42), 4)
    # jitted: op by op, each initializer operation under vmap was a program of its own
    stacked = jax.jit(jax.vmap(lambda k: nnjax.init_train_state(MODEL, optimizer, k, (5,))))(keys)
    many_step = jax.jit(jax.vmap(step, in_axes=(0, None)))
    one_step = jax.jit(step)
    singles = [nnjax.init_train_state(MODEL, optimizer, k, (5,)) for k in keys]
    for seed in range(5):
        batch = _batch(seed=seed)
        stacked, many_logs = many_step(stacked, batch)
        results = [one_step(s, batch) for s in singles]
        singles = [r[0] for r in results]
        np.testing.assert_allclose(many_logs["loss"], [r[1]["loss"] for r in results], rtol=1e-5)
    stacked_params = jax.tree.map(np.asarray, stacked.params)  # models sliced in NumPy: no eager programs
    for i, single in enumerate(singles):
        model_i = jax.tree.map(lambda leaf, i=i: leaf[i], stacked_params)
        for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(model_i), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # different seeds really are different models
    assert not np.allclose(stacked_params["dense_0"]["w"][0], stacked_params["dense_0"]["w"][1])


def test_steps_fuse_under_scan_and_match_the_jitted_loop():
    optimizer = optax.adam(1e-2)  # test_vmapped_seeds_equal_sequential_runs's: the same jax.jit(step) program
    step = nnjax.make_train_step(MODEL, losses.softmax_cross_entropy, optimizer, jit=False)
    state = nnjax.init_train_state(MODEL, optimizer, jax.random.key(0), (5,))
    xs, ys = zip(*[_batch(seed=s) for s in range(4)], strict=True)
    xs, ys = np.stack(xs), np.stack(ys)  # stacked in NumPy: no eager programs
    fused_state, fused_logs = jax.jit(lambda s: jax.lax.scan(step, s, (xs, ys)))(state)
    loop_state = nnjax.init_train_state(MODEL, optimizer, jax.random.key(0), (5,))
    jitted = jax.jit(step)
    for x, y in zip(xs, ys, strict=True):
        loop_state, logs = jitted(loop_state, (jax.device_put(x), jax.device_put(y)))
    np.testing.assert_allclose(fused_logs["loss"][-1], logs["loss"], rtol=1e-5)
    np.testing.assert_allclose(
        fused_state.params["dense_3"]["w"], loop_state.params["dense_3"]["w"], rtol=1e-5, atol=1e-6
    )


def test_eval_step_is_inference_mode():
    optimizer = optax.sgd(0.1)
    train_state = nnjax.init_train_state(MODEL, optimizer, jax.random.key(0), (5,))
    eval_step = nnjax.make_eval_step(MODEL, losses.softmax_cross_entropy, metrics={"accuracy": metrics.accuracy})
    x, y = _batch()
    a, b = eval_step(train_state, (x, y)), eval_step(train_state, (x, y))
    assert float(a["loss"]) == float(b["loss"])  # no dropout: deterministic
    inference_accuracy = jax.jit(lambda p, s, x, y: metrics.accuracy(MODEL.apply(p, s, x)[0], y))  # not op by op
    np.testing.assert_allclose(a["accuracy"], inference_accuracy(train_state.params, train_state.state, x, y))


def test_training_randomness_comes_from_the_state_key():
    optimizer = optax.sgd(0.1)
    step = nnjax.make_train_step(MODEL, losses.softmax_cross_entropy, optimizer)
    runs = []
    for _ in range(2):
        state = nnjax.init_train_state(MODEL, optimizer, jax.random.key(7), (5,))
        for seed in range(3):
            state, _ = step(state, _batch(seed=seed))
        runs.append(np.asarray(state.params["dense_0"]["w"]))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("batch_size", [1, 16, 1437])
def test_batch_stochastic_and_minibatch_descent_all_train(batch_size):
    x, y, _, _ = _digits()
    epochs = {1: 2, 16: 5, 1437: 150}[batch_size]
    result = nnjax.fit(nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(10)), losses.softmax_cross_entropy,
                       optax.sgd(0.02 if batch_size == 1 else 0.3), x, y, epochs=epochs, batch_size=batch_size,
                       metrics={"accuracy": metrics.accuracy}, progress=False)
    model = nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(10))
    final = nnjax.evaluate(model, result.train_state, x, y, loss=losses.softmax_cross_entropy,
                           metrics={"accuracy": metrics.accuracy})
    assert final["accuracy"] > 0.9
    assert int(result.train_state.step) == epochs * (len(x) // batch_size)


def _digits():
    images, labels = nnjax.data.load_digits()
    x = images.reshape(-1, 64).astype(np.float32) / 16
    return nnjax.data.train_test_split(x, labels, seed=0)


def test_initialization_compiles_a_bounded_number_of_programs_whatever_the_depth():
    programs = []

    def on_duration(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            programs.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    keys = {depth: jax.random.key(depth) for depth in (2, 20)}  # 20: the depth the target names
    optimizer = optax.adam(1e-3)
    nnjax.init_train_state(nnjax.Dense(1), optimizer, keys[2], (1,))  # the process's one-time programs
    counts = {}
    for depth in (2, 20):
        layers = [layer for _ in range(depth) for layer in (nnjax.Dense(24 + depth), nnjax.Relu())]
        model = nnjax.serial(*layers, nnjax.Dense(3))  # shapes no earlier test compiled
        before = len(programs)
        ts = nnjax.init_train_state(model, optimizer, keys[depth], (7,))
        jax.block_until_ready(ts)
        params, _ = model.init(keys[depth], (7,))  # on its own, model.init is one program too
        jax.block_until_ready(params)
        counts[depth] = len(programs) - before
        again = nnjax.init_train_state(model, optimizer, keys[depth], (7,))
        assert _equal(ts.params, again.params)
        assert len(ts.params) == 2 * depth + 1 and ts.params["dense_0"]["w"].shape == (7, 24 + depth)
        assert list(params) == [f"{kind}_{i}" for i, kind in enumerate(["dense", "relu"] * depth + ["dense"])]
        assert list(params["dense_0"]) == ["w", "b"]  # the forward order, not the sorted one of JAX's trees
    assert counts == {2: 2, 20: 2}, counts  # op by op, every parameter shape was a compilation of its own


def test_eager_vmap_of_initialization_compiles_one_batched_program_whatever_the_depth():
    """The README's ``jax.vmap(lambda k: init_train_state(...))(keys)``: one program compiled batched (with the
    setup options), and vmap's broadcasts of the unbatched leaves; before, each operation of each model shape."""
    programs = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kwargs: programs.append(event == "/jax/core/compile/backend_compile_duration")
    )
    optimizer = optax.adam(1e-3)
    keys = jax.random.split(jax.random.key(3), 4)
    counts = {}
    for depth, width in ((2, 13), (6, 14)):  # widths no earlier test compiled
        model = nnjax.serial(*[layer for _ in range(depth) for layer in (nnjax.Dense(width), nnjax.Relu())])
        before = sum(programs)
        stacked = jax.vmap(lambda k, model=model: nnjax.init_train_state(model, optimizer, k, (5,)))(keys)
        jax.block_until_ready(stacked)
        counts[depth] = sum(programs) - before
        one = nnjax.init_train_state(model, optimizer, keys[2], (5,))
        for name in ("dense_0", f"dense_{2 * depth - 2}"):
            np.testing.assert_array_equal(np.asarray(stacked.params[name]["w"])[2], np.asarray(one.params[name]["w"]))
    assert counts[6] <= counts[2] <= 6, counts  # op by op: two or more per layer, growing with the depth


def test_compiled_initialization_gives_the_layers_own_values():
    """init_train_state's one program (a setup program, compiled for compile time: no LLVM optimizations,
    XLA:CPU's classic emitters) draws what model.init draws compiled as XLA compiles by default (its fusion
    emitters), key for key, in every kind of initializer (uniform, normal, truncated normal, orthogonal,
    constants; the recurrent and attention layers' own): the same bits, the same values up to float
    rounding (normal draws and orthogonal matrices round differently as compiled differently, by 1e-7)."""
    image = nnjax.serial(nnjax.Conv(4, (3, 3)), nnjax.BatchNorm(), nnjax.GroupNorm(2), nnjax.Relu(),
                         nnjax.ConvTranspose(2, (2, 2), strides=2), nnjax.MaxPool(2), nnjax.Flatten(),
                         nnjax.Dense(3, w_init="orthogonal", b_init="normal"))
    tokens = nnjax.serial(nnjax.Embedding(30, 8), nnjax.LearnedPositionalEmbedding(12),
                          nnjax.TransformerEncoderBlock(2, 16), nnjax.LSTM(6), nnjax.RMSNorm(), nnjax.Dense(3))
    model, shapes = nnjax.named(image=image, tokens=tokens), {"image": (6, 6, 2), "tokens": (10,)}
    key = jax.random.key(7)
    init_key, train_key = jax.random.split(key)
    ts = nnjax.init_train_state(model, optax.adam(1e-3), key, shapes)
    expected = jax.jit(lambda k: model.init(k, shapes))(init_key)  # one program (op by op: a hundred)
    chex.assert_trees_all_close((ts.params, ts.state), expected, rtol=1e-6, atol=1e-7)
    assert _equal(ts.params["image"]["group_norm_2"], expected[0]["image"]["group_norm_2"])  # ones and zeros
    np.testing.assert_array_equal(ts.key, jax.random.key_data(train_key))


@pytest.mark.parametrize("seed", [0, -3, 2**31 - 1, 2**40 + 5])
def test_a_seeded_state_equals_one_from_the_seeds_key(seed):
    model = nnjax.serial(nnjax.Dense(5), nnjax.Relu(), nnjax.Dense(2))
    seeded = nnjax._src.train.seeded_train_state(model, optax.sgd(0.1), seed, (3,))  # the key made inside
    keyed = nnjax.init_train_state(model, optax.sgd(0.1), jax.random.key(seed), (3,))
    assert _equal(seeded, keyed)
