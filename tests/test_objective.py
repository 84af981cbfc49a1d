"""The general objective ``(params, state, batch, *, key, train) -> (loss, (new_state, aux))`` and ``named``.

The short ``loss(predictions, targets)`` form is built on the general one; these tests prove it trains
exactly as the hand-written step does, that a key-taking objective gets the step's key (so resume and
``fit_many(seed=i) == fit(seed=i)`` hold), that aux lands in metrics and history, and that a model of
named parts is one pytree through fit, checkpoints, summary, sharding and fit_many.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax import losses, metrics
from nnjax._src.train import seeded_train_state

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)

MODEL = nnjax.serial(nnjax.Dense(16), nnjax.BatchNorm(), nnjax.Relu(), nnjax.Dropout(0.2), nnjax.Dense(2))

ENCODER = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(2 * 2))  # mean and log-variance of 2 latents
DECODER = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(6))
VAE = nnjax.named(encoder=ENCODER, decoder=DECODER)
VAE_SHAPES = {"encoder": (6,), "decoder": (2,)}
ADAM = optax.adam(3e-3)  # the VAE runs' optimizer: one object, as fit's initialization program is cached per object


@nnjax.objective
def gaussian_elbo(params, state, x, *, key, train):
    """A small Gaussian VAE: squared-error reconstruction plus the KL of q(z|x) to N(0, I)."""
    h, enc_state = VAE.encoder.apply(params["encoder"], state["encoder"], x, train=train)
    mean, log_var = jnp.split(h, 2, axis=-1)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
    x_hat, dec_state = VAE.decoder.apply(params["decoder"], state["decoder"], z, train=train)
    reconstruction = jnp.mean(jnp.sum((x_hat - x) ** 2, axis=-1))
    kl = jnp.mean(0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1))
    return reconstruction + kl, ({"encoder": enc_state, "decoder": dec_state}, {"reconstruction": reconstruction, "kl": kl})


def _reference_step(model, loss, optimizer, metric_fns):
    """The train step as nnjax wrote it before the general objective: forward, loss, grad, Optax."""

    def step(ts, batch):
        x, y = batch
        key = nnjax.step_key(ts)

        def loss_fn(params):
            predictions, new_state = model.apply(params, ts.state, x, key=key, train=True)
            return loss(predictions, y), (predictions, new_state)

        (value, (predictions, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        new = ts.replace(step=ts.step + 1, params=optax.apply_updates(ts.params, updates), state=new_state,
                         opt_state=opt_state)
        return new, {"loss": value, **{name: fn(predictions, y) for name, fn in metric_fns.items()}}

    return step


def test_the_short_loss_form_trains_exactly_as_the_hand_written_step():
    optimizer = optax.adam(1e-2)
    metric_fns = {"accuracy": metrics.accuracy}
    ours = jax.jit(nnjax.make_train_step(MODEL, losses.softmax_cross_entropy, optimizer, metrics=metric_fns,
                                         jit=False))
    reference = jax.jit(_reference_step(MODEL, losses.softmax_cross_entropy, optimizer, metric_fns))
    got = expected = nnjax.init_train_state(MODEL, optimizer, jax.random.key(0), (6,))
    for i in range(5):
        batch = (X[16 * i : 16 * i + 16], Y[16 * i : 16 * i + 16])
        got, logs = ours(got, batch)
        expected, expected_logs = reference(expected, batch)
    chex.assert_trees_all_equal(got, expected)  # bit for bit: params, BatchNorm state, Adam moments, step
    chex.assert_trees_all_equal(logs, expected_logs)


def test_a_key_taking_objective_gets_the_step_key_in_training_and_the_eval_key_in_evaluation():
    seen = {}
    model = nnjax.serial(nnjax.Dense(2))

    @nnjax.objective
    def noisy(params, state, batch, *, key, train):
        x, y = batch
        noise = jax.random.normal(key, x.shape)
        predictions, state = model.apply(params, state, x + 0.1 * noise, train=train)
        seen["train"] = train
        return losses.softmax_cross_entropy(predictions, y), (state, {"noise_mean": jnp.mean(noise)})

    optimizer = optax.sgd(0.1)
    # init_train_state(model, optimizer, jax.random.key(3), (6,)) by fit's initialization program, which the
    # fits of a one-layer model below reuse
    ts = seeded_train_state(model, optimizer, 3, (6,))
    batch = (X[:8], Y[:8])
    expected_train = jnp.mean(jax.random.normal(nnjax.step_key(ts), (8, 6)))
    expected_eval = jnp.mean(jax.random.normal(nnjax.eval_key(ts), (8, 6)))
    eval_logs = nnjax.make_eval_step(model, noisy)(ts, batch)
    assert seen["train"] is False
    np.testing.assert_allclose(eval_logs["noise_mean"], expected_eval, rtol=1e-6)
    # jitted: one program (run eagerly, every operation of the step compiles one of its own)
    new_ts, logs = jax.jit(nnjax.make_train_step(model, noisy, optimizer, jit=False))(ts, batch)
    assert seen["train"] is True and set(logs) == {"loss", "noise_mean"}
    np.testing.assert_allclose(logs["noise_mean"], expected_train, rtol=1e-6)
    assert int(new_ts.step) == 1 and not np.allclose(expected_train, expected_eval)


def test_fit_trains_a_vae_of_named_parts_with_aux_in_the_history_in_every_mode():
    runs = [nnjax.fit(VAE, gaussian_elbo, ADAM, X, input_shape=VAE_SHAPES, epochs=4, batch_size=16,
                      validation_data=X[:40], fused=fused, progress=False) for fused in ("epoch", "all", False)]
    history = runs[0].history
    assert list(history) == ["loss", "kl", "reconstruction", "val_loss", "val_kl", "val_reconstruction"]
    np.testing.assert_allclose(np.add(history["kl"], history["reconstruction"]), history["loss"], rtol=1e-5)
    assert np.all(np.diff(history["val_loss"]) < 0)  # it learns: the held-out ELBO loss falls every epoch
    assert sorted(runs[0].train_state.params) == ["decoder", "encoder"]
    assert runs[0].train_state.params["encoder"]["dense_2"]["w"].shape == (16, 4)
    for other in runs[1:]:  # the three execution modes give the same run
        chex.assert_trees_all_close(other.train_state.params, runs[0].train_state.params, rtol=1e-5, atol=1e-6)
        for name in history:
            np.testing.assert_allclose(other.history[name], history[name], rtol=1e-5)


@pytest.mark.slow  # fit_many and a fit per seed: CI's slow pass (tests/test_ensemble.py checks the same by default)
def test_fit_many_seed_i_equals_fit_seed_i_for_an_objective():
    many = nnjax.fit_many(VAE, gaussian_elbo, ADAM, X, input_shape=VAE_SHAPES, seeds=[0, 1],
                          epochs=2, batch_size=32, progress=False)
    assert many.history["kl"].shape == (2, 2)
    for i in range(2):
        one = nnjax.fit(VAE, gaussian_elbo, ADAM, X, input_shape=VAE_SHAPES, epochs=2, batch_size=32,
                        seed=i, progress=False)
        chex.assert_trees_all_close(many.best(i).params, one.train_state.params, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(many.history["reconstruction"][i], one.history["reconstruction"], rtol=1e-4)


@pytest.mark.slow  # three fits: CI's slow pass (tests/test_resume_crash.py resumes bit-identically by default)
def test_resume_from_a_checkpoint_of_named_parts_ends_bit_identical(tmp_path):
    args = dict(input_shape=VAE_SHAPES, batch_size=16, progress=False)
    full = nnjax.fit(VAE, gaussian_elbo, ADAM, X, epochs=4, **args)
    nnjax.fit(VAE, gaussian_elbo, ADAM, X, epochs=2, checkpoint_dir=tmp_path, **args)
    like = nnjax.abstract_train_state(VAE, ADAM, VAE_SHAPES)
    restored, _ = nnjax.restore_checkpoint(tmp_path, like)
    assert sorted(restored.params) == ["decoder", "encoder"] and int(restored.step) == 2 * 6
    resumed = nnjax.fit(VAE, gaussian_elbo, ADAM, X, epochs=4, checkpoint_dir=tmp_path, resume=True,
                        **args)
    chex.assert_trees_all_equal(resumed.train_state, full.train_state)
    assert resumed.history["kl"] == full.history["kl"][2:]


def test_evaluate_an_objective_in_chunks_equals_the_whole_set_mean():
    ts = seeded_train_state(VAE, ADAM, 0, VAE_SHAPES)  # fit's starting state: the VAE runs' initialization program

    @nnjax.objective
    def deterministic(params, state, x, *, key, train):  # mean-reduced, no noise: chunking must not matter
        out, _ = VAE.encoder.apply(params["encoder"], state["encoder"], x)
        value = jnp.mean(out**2)
        return value, (state, {"first": jnp.mean(out[:, 0])})

    whole = jax.jit(lambda p, s, x: deterministic(p, s, x, key=None, train=False))(ts.params, ts.state, X[:30])
    for batch_size in (4, 7, 30, 1024):  # 30 = 7 * 4 + 2: a short last chunk
        got = nnjax.evaluate(VAE, ts, X[:30], loss=deterministic, batch_size=batch_size)
        np.testing.assert_allclose(got["loss"], whole[0], rtol=1e-5)
        np.testing.assert_allclose(got["first"], whole[1][1]["first"], rtol=1e-5, atol=1e-7)


def test_objective_errors_name_the_function_the_argument_and_the_fix():
    with pytest.raises(ValueError, match=r"fit: argument `metrics` is for the loss\(predictions, targets\) form"):
        nnjax.fit(VAE, gaussian_elbo, optax.adam(1e-3), X, input_shape=VAE_SHAPES, metrics={"a": metrics.accuracy})
    with pytest.raises(ValueError, match="fit: argument `y` expected the targets"):
        nnjax.fit(MODEL, losses.softmax_cross_entropy, optax.adam(1e-3), X)
    with pytest.raises(ValueError, match="`validation_data` expected the inputs alone"):
        nnjax.fit(VAE, gaussian_elbo, optax.adam(1e-3), X, input_shape=VAE_SHAPES, validation_data=(X, Y))
    with pytest.raises(TypeError, match="expected loss\\(predictions, targets\\) or an nnjax.objective, given int"):
        nnjax.make_train_step(MODEL, 3, optax.adam(1e-3))

    @nnjax.objective
    def vector_aux(params, state, batch, *, key, train):
        return jnp.sum(params["dense_0"]["w"]), (state, {"per_unit": params["dense_0"]["b"]})

    model = nnjax.serial(nnjax.Dense(2))  # the model and optimizer of the tests above: their initialization program
    ts = seeded_train_state(model, optax.sgd(0.1), 0, (6,))
    with pytest.raises(TypeError, match=r"objective\(vector_aux\): the objective's aux expected scalars .* 'per_unit'"):
        nnjax.make_train_step(model, vector_aux, optax.sgd(0.1))(ts, X[:4])


def test_per_example_grads_of_an_objective_equal_the_loss_form_and_average_to_the_batch_gradient():
    model = nnjax.serial(nnjax.Dense(4), nnjax.Tanh(), nnjax.Dense(2))
    params, state = model.init(jax.random.key(0), (6,))
    batch = (X[:8], Y[:8])

    @nnjax.objective
    def cross_entropy(params, state, batch, *, key, train):
        x, y = batch
        logits, state = model.apply(params, state, x, key=key, train=train)
        return losses.softmax_cross_entropy(logits, y), (state, {"accuracy": metrics.accuracy(logits, y)})

    @jax.jit  # one program (run eagerly, every operation of the vmapped gradients compiles one of its own)
    def computed(params, state, batch):
        short = nnjax.per_example_grads(model, losses.softmax_cross_entropy, params, state, batch)
        general = nnjax.per_example_grads(model, cross_entropy, params, state, batch)
        batch_grads = jax.grad(lambda p: cross_entropy(p, state, batch, key=None, train=True)[0])(params)
        (values, (_, aux)), _ = nnjax.per_example.per_example_value_and_grads(model, cross_entropy, params, state,
                                                                             batch)
        accuracy = metrics.accuracy(model.apply(params, state, batch[0])[0], batch[1])
        return short, general, jax.tree.map(lambda g: g.mean(0), general), batch_grads, values, aux, accuracy

    short, general, mean_grads, batch_grads, values, aux, accuracy = computed(params, state, batch)
    chex.assert_trees_all_close(general, short, rtol=1e-6)
    chex.assert_trees_all_close(mean_grads, batch_grads, rtol=1e-5, atol=1e-7)
    assert values.shape == (8,) and aux["accuracy"].shape == (8,)
    np.testing.assert_allclose(np.mean(aux["accuracy"]), accuracy, rtol=1e-6)


def test_vmap_over_stacked_train_states_of_an_objective_equals_each_single_step():
    step = nnjax.make_train_step(VAE, gaussian_elbo, optax.adam(1e-2), jit=False)
    init = jax.vmap(lambda k: nnjax.init_train_state(VAE, optax.adam(1e-2), k, VAE_SHAPES))
    batch = X[:16]
    stacked = init(jax.random.split(jax.random.key(0), 3))
    states, logs = jax.jit(jax.vmap(step, in_axes=(0, None)))(stacked, batch)
    assert logs["kl"].shape == (3,) and states.params["decoder"]["dense_2"]["w"].shape == (3, 16, 6)
    second = jax.tree.map(lambda a: np.asarray(a)[1], stacked)  # NumPy indexing: no program per leaf shape
    single, single_logs = jax.jit(step)(second, batch)
    chex.assert_trees_all_close(jax.tree.map(lambda a: np.asarray(a)[1], states), single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logs["loss"])[1], single_logs["loss"], rtol=1e-5)


def test_fit_stream_and_the_loss_scaled_step_take_an_objective():
    def batches(epoch):
        order = np.random.default_rng(epoch).permutation(len(X))
        return [X[order[i : i + 16]] for i in range(0, len(X), 16)]

    # validation_data: the VAE fit's above, whose validation program holds it (one program for both)
    result = nnjax.fit_stream(VAE, gaussian_elbo, ADAM, batches, epochs=3, input_shape=VAE_SHAPES,
                              validation_data=X[:40], progress=False)
    assert set(result.history) == {"loss", "kl", "reconstruction", "val_loss", "val_kl", "val_reconstruction"}
    assert result.history["loss"][-1] < result.history["loss"][0]
    optimizer = nnjax.precision.dynamic_loss_scale(optax.adam(1e-3))
    ts = nnjax.init_train_state(VAE, optimizer, jax.random.key(0), VAE_SHAPES)
    ts, logs = nnjax.precision.make_loss_scaled_train_step(VAE, gaussian_elbo, optimizer)(ts, X[:16])
    assert {"loss", "kl", "reconstruction", "loss_scale", "grads_finite"} <= set(logs)


def test_named_is_one_pytree_with_per_part_shapes_errors_summary_and_sharding():
    optimizer = optax.adam(1e-2)
    # fit's starting state: VAE.init's parameters and state, by the VAE runs' initialization program (VAE.init run
    # eagerly compiles a program per random draw), applied in one program
    ts = seeded_train_state(VAE, optimizer, 0, VAE_SHAPES)
    params, state = ts.params, ts.state
    assert jax.tree.map(jnp.shape, params)["decoder"]["dense_0"] == {"b": (16,), "w": (2, 16)}
    ones = {"encoder": np.ones((3, 6), np.float32), "decoder": np.ones((3, 2), np.float32)}
    outputs = jax.jit(lambda p, s, inputs: VAE.apply(p, s, inputs)[0])(params, state, ones)
    assert outputs["encoder"].shape == (3, 4) and outputs["decoder"].shape == (3, 6)
    assert VAE.encoder is ENCODER and VAE.parts == {"encoder": ENCODER, "decoder": DECODER}
    assert VAE.output_shape(VAE_SHAPES) == {"encoder": (4,), "decoder": (6,)}
    with pytest.raises(nnjax.LayerError, match=r"named: argument `input_shape` expected a dict with one entry per "
                                               r"part \['encoder', 'decoder'\], given \['encoder'\]"):
        VAE.init(jax.random.key(0), {"encoder": (6,)})
    with pytest.raises(AttributeError, match="no part named 'critic'"):
        _ = VAE.critic
    with pytest.raises(nnjax.LayerError, match=r"named\[.decoder.\] > serial\[0\] > Dense\(16\): argument `input_shape`"):
        VAE.init(jax.random.key(0), {"encoder": (6,), "decoder": ()})
    rows = nnjax.summarize(VAE, VAE_SHAPES).rows
    assert [r.path for r in rows[:2]] == ["encoder", "encoder/dense_0"] and rows[0].params == 6 * 16 + 16 + 16 * 4 + 4
    assert "decoder/dense_2" in [r.path for r in rows]

    mesh = nnjax.sharding.make_mesh()
    plain = nnjax.make_train_step(VAE, gaussian_elbo, optimizer, jit=False)
    expected, expected_logs = jax.jit(plain)(ts, X[:16])
    sharded = nnjax.sharding.data_parallel(ts, mesh, fsdp=True)
    got, logs = nnjax.make_train_step(VAE, gaussian_elbo, optimizer)(sharded, nnjax.sharding.shard_batch(X[:16], mesh))
    chex.assert_trees_all_close(got.params, expected.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["kl"], expected_logs["kl"], rtol=1e-5)


def test_a_non_finite_objective_halts_fit_naming_the_leaf_and_skip_keeps_the_params():
    model = nnjax.serial(nnjax.Dense(2))

    @nnjax.objective
    def log_of_first_output(params, state, x, *, key, train):  # NaN once the first output turns negative
        y, state = model.apply(params, state, x, train=train)
        value = jnp.mean(jnp.log(y[:, 0]))
        return value, (state, {"first": jnp.mean(y[:, 0])})

    optimizer = optax.sgd(0.1)  # one object: its initialization program is cached with it
    with pytest.raises(nnjax.NonFiniteError, match="non-finite loss or gradient at step 0") as caught:
        nnjax.fit(model, log_of_first_output, optimizer, X, epochs=1, batch_size=16, nonfinite="halt",
                  progress=False)
    assert caught.value.leaf == "loss"  # log of a negative output: the value is NaN, its gradient 1/y is finite
    skipped = nnjax.fit(model, log_of_first_output, optimizer, X, epochs=1, batch_size=16, nonfinite="skip",
                        progress=False)
    assert skipped.history["nonfinite"] == [6.0]
    chex.assert_trees_all_equal(skipped.train_state.params, seeded_train_state(model, optimizer, 0, (6,)).params)
