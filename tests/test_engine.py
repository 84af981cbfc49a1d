"""The one training engine under fit, fit_many and fit_stream: what each driver shares, and the drifts it fixed."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src import engine
from nnjax._src.checkpoint import checkpoint_steps
from nnjax._src.train import seeded_train_state
from nnjax._src.training_data import epoch_order

MODEL = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(3))
LOSS = nnjax.losses.softmax_cross_entropy
# One optimizer object each: fit's initialization program is cached per model and optimizer object (a new
# `optax.sgd(0.1)` per call traces and lowers it again).
SGD, ADAM = optax.sgd(0.1), optax.adam(1e-2)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5).astype(np.int32)
QUIET = dict(progress=False)


def _start():
    """``init_train_state(MODEL, SGD, jax.random.key(0), (4,))``: fit's starting state for seed 0, by fit's
    initialization program (the key-taking one would be a program of its own)."""
    return seeded_train_state(MODEL, SGD, 0, (4,))


@functools.cache
def _jitted_order():
    return nnjax.jit(lambda key, epoch: epoch_order(key, epoch, 64, 16))


def _order(key, epoch):
    """``epoch_order(key, epoch, 64, 16)`` by the program fit(fused=False) draws it with (run eagerly, each of
    its operations compiles a program of its own)."""
    return np.asarray(_jitted_order()(key, epoch))


def _stream(epoch, x=X, y=Y, batch=16):
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def _same(a, b):
    return jax.tree.all(jax.tree.map(lambda u, v: bool(np.array_equal(np.asarray(u), np.asarray(v))), a, b))


# --- every callback runs every epoch, in every driver ------------------------------------------------------


@pytest.mark.parametrize("driver", ["fit", "fit_many", "fit_stream"])
def test_a_logger_after_an_early_stop_still_sees_the_last_epoch(driver):
    stop_seen, log_seen = [], []
    callbacks = [lambda e, ts, logs: stop_seen.append(e) or e == 1, lambda e, ts, logs: log_seen.append(e)]
    kwargs = dict(epochs=4, callbacks=callbacks, **QUIET)
    if driver == "fit":
        nnjax.fit(MODEL, LOSS, SGD, X, Y, batch_size=16, **kwargs)
    elif driver == "fit_many":
        nnjax.fit_many(MODEL, LOSS, SGD, X, Y, seeds=[0, 1], batch_size=16, **kwargs)
    else:
        nnjax.fit_stream(MODEL, LOSS, SGD, _stream, **kwargs)
    assert stop_seen == [0, 1] and log_seen == [0, 1]  # fit_many used to skip the logger in epoch 1


# --- argument checks: one helper, bools are not ints --------------------------------------------------------


@pytest.mark.parametrize("driver", ["fit", "fit_many", "fit_stream"])
@pytest.mark.parametrize("argument, value", [("epochs", True), ("epochs", -1), ("checkpoint_every", 0), ("keep", 0)])
def test_every_driver_checks_its_counts_at_the_call(driver, argument, value, tmp_path):
    kwargs = {argument: value, "checkpoint_dir": tmp_path, **QUIET}
    with pytest.raises(ValueError, match=f"{driver}: argument `{argument}` expected a "):
        if driver == "fit":
            nnjax.fit(MODEL, LOSS, SGD, X, Y, **kwargs)
        elif driver == "fit_many":
            nnjax.fit_many(MODEL, LOSS, SGD, X, Y, **kwargs)
        else:
            nnjax.fit_stream(MODEL, LOSS, SGD, _stream, **kwargs)
    assert checkpoint_steps(tmp_path) == []


def test_batch_size_true_is_refused():
    with pytest.raises(ValueError, match=r"fit: argument `batch_size` expected a positive int, given True"):
        nnjax.fit(MODEL, LOSS, SGD, X, Y, batch_size=True, **QUIET)


def test_fit_stream_refuses_a_generator_and_bad_validation_data_before_training():
    with pytest.raises(TypeError, match="fit_stream: argument `batches` expected a function epoch -> iterable"):
        nnjax.fit_stream(MODEL, LOSS, SGD, iter(_stream(0)), **QUIET)
    calls = []

    def counted(epoch):
        calls.append(epoch)
        return _stream(epoch)

    bad_x = np.where(X[:20] > 1, np.nan, X[:20])
    with pytest.raises(ValueError, match=r"fit_stream\(validation_data\): argument `x` holds \d+ NaN or Inf"):
        nnjax.fit_stream(MODEL, LOSS, SGD, counted, validation_data=(bad_x, Y[:20]), **QUIET)
    with pytest.raises(ValueError, match=r"fit_stream\(validation_data\).*same number of examples"):
        nnjax.fit_stream(MODEL, LOSS, SGD, counted, validation_data=(X[:20], Y[:19]), **QUIET)
    labels = r"fit_stream\(validation_data\): argument `labels` expected values in \[0, 3\)"
    with pytest.raises(ValueError, match=labels):
        nnjax.fit_stream(MODEL, LOSS, SGD, counted, validation_data=(X[:20], Y[:20] + 3), **QUIET)
    assert calls == [0, 0, 0]  # only the peek at the first batch: no epoch was trained


# --- the caller's arrays are never deleted; starting weights are one argument --------------------------------


@pytest.fixture(scope="module")
def pretrained():
    """A train state after one epoch, shared by the tests that start from it (fit copies it: none changes it)."""
    return nnjax.fit(MODEL, LOSS, ADAM, X, Y, epochs=1, batch_size=16, **QUIET).train_state


@pytest.mark.parametrize("fused", ["epoch", "all", False])
def test_fine_tuning_twice_from_one_train_state(fused, pretrained):
    kept = jax.tree.map(np.array, pretrained)
    first = nnjax.fit(MODEL, LOSS, ADAM, X, Y, epochs=2, batch_size=16, train_state=pretrained,
                      fused=fused, **QUIET)
    second = nnjax.fit(MODEL, LOSS, ADAM, X, Y, epochs=2, batch_size=16, train_state=pretrained,
                       fused=fused, **QUIET)  # used to die with "Array has been deleted"
    assert _same(pretrained, kept) and _same(first.train_state, second.train_state)


def test_fit_many_and_fit_stream_leave_the_given_states_usable():
    states = nnjax.ensemble.init_many(MODEL, SGD, [0, 1], (4,))
    # batch_size=16: the epoch program of the early-stop test's fit_many (a program per batch size)
    nnjax.fit_many(MODEL, LOSS, SGD, X, Y, seeds=[0, 1], epochs=1, batch_size=16, train_states=states,
                   **QUIET)
    ts = _start()
    nnjax.fit_stream(MODEL, LOSS, SGD, _stream, epochs=1, train_state=ts, **QUIET)
    assert np.isfinite(np.asarray(states.params["dense_0"]["w"])).all() and int(ts.step) == 0


def test_fit_from_params_starts_there_with_a_fresh_optimizer_state(pretrained):
    # SGD: the head's programs (epoch, jitted step) are those of the early-stop test's fit and fit_stream
    head = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(3))
    tuned = nnjax.fit(head, LOSS, SGD, X, Y, epochs=1, batch_size=16, params=pretrained.params, **QUIET)
    by_hand = nnjax.init_train_state(head, SGD, jax.random.key(0), (4,), params=pretrained.params)
    assert int(by_hand.step) == 0 and _same(by_hand.params, pretrained.params)
    step = nnjax.make_train_step(head, LOSS, SGD)
    for idx in _order(by_hand.key, 0):
        by_hand, _ = step(by_hand, (X[idx], Y[idx]))
    np.testing.assert_allclose(tuned.train_state.params["dense_2"]["w"], by_hand.params["dense_2"]["w"], atol=1e-6)
    with pytest.raises(ValueError, match=r"init_train_state: argument `params` does not match the model's: "
                                         r"\['dense_0'\]\['w'\]: expected \(5, 8\) float32, given \(4, 8\) float32"):
        nnjax.fit(head, LOSS, SGD, np.ones((8, 5), np.float32), Y[:8], params=pretrained.params, **QUIET)
    with pytest.raises(ValueError, match="`train_state` continues one: give one"):
        nnjax.fit(head, LOSS, SGD, X, Y, params=pretrained.params, train_state=pretrained, **QUIET)


# --- one train step: the DP and loss-scaled steps get the guard, the count and the key discipline ---------------


def _poisoned_batch():
    x = X[:8].copy()
    x[0, 0] = np.nan
    return x, Y[:8]


def test_dp_and_loss_scaled_steps_skip_nonfinite_updates():
    ts = _start()
    dp = jax.jit(nnjax.per_example.make_dp_train_step(  # jitted, not donated: ts is used twice
        MODEL, LOSS, SGD, l2_norm_clip=1.0, noise_multiplier=0.5, nonfinite="skip", jit=False))
    new, metrics = dp(ts, _poisoned_batch())
    assert int(metrics["nonfinite"]) == 1 and int(new.step) == 1 and _same(new.params, ts.params)
    new, metrics = dp(ts, (X[:8], Y[:8]))
    assert int(metrics["nonfinite"]) == 0 and not _same(new.params, ts.params)

    opt = nnjax.precision.dynamic_loss_scale(SGD, initial_scale=2.0**8)
    ts = nnjax.init_train_state(MODEL, opt, jax.random.key(0), (4,))
    scaled = jax.jit(nnjax.precision.make_loss_scaled_train_step(MODEL, LOSS, opt, jit=False))
    new, metrics = scaled(ts, _poisoned_batch())
    assert int(metrics["nonfinite"]) == 1 and float(metrics["grads_finite"]) == 0.0
    assert float(new.opt_state.loss_scale.scale) == 2.0**7 and _same(new.params, ts.params)  # backed off, skipped
    halted, _ = jax.jit(nnjax.precision.make_loss_scaled_train_step(MODEL, LOSS, opt, nonfinite="halt", jit=False))(
        ts, _poisoned_batch())
    assert int(halted.step) == 0
    with pytest.raises(ValueError, match="make_loss_scaled_train_step: argument `nonfinite` expected 'skip' or"):
        nnjax.precision.make_loss_scaled_train_step(MODEL, LOSS, opt, nonfinite=None)


# --- fit_many and fit_stream: the non-finite policy and checkpoints with exact resume -------------------------


def test_fit_many_skip_and_halt_are_per_model():
    poison = nnjax.stateless(lambda v: v[:, :4] + jnp.where(v[:, 4:] > 0, jnp.nan, 0.0), "Poison")  # flag column
    model = nnjax.serial(poison, nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(3))
    x = np.concatenate([X, np.zeros((64, 1), np.float32)], axis=1)
    x[5, 4] = 1.0  # example 5 turns NaN inside the model; every epoch uses all 64 examples
    skip = nnjax.fit_many(model, LOSS, SGD, x, Y, seeds=[0, 1], epochs=2, batch_size=16, nonfinite="skip",
                          **QUIET)
    np.testing.assert_array_equal(skip.history["nonfinite"], [[1, 1], [1, 1]])  # the bad batch, each epoch
    assert np.isfinite(skip.history["loss"]).all()
    with pytest.warns(RuntimeWarning, match=r"fit_many: models \[0, 1\] met a non-finite loss .* in epoch 1"):
        halt = nnjax.fit_many(model, LOSS, SGD, x, Y, seeds=[0, 1], epochs=2, batch_size=16,
                              nonfinite="halt", **QUIET)
    assert np.isfinite(jax.tree.leaves(halt.train_states.params)[0]).all()
    steps = np.asarray(halt.train_states.step)
    assert (steps < 4).all()  # each stopped before its bad batch in epoch 1 (4 batches an epoch)
    assert halt.history["loss"].shape == (2, 1)  # every model halted: the run ends after that epoch


@pytest.mark.parametrize("fused", ["epoch", pytest.param("all", marks=pytest.mark.slow)])  # "all": CI's slow pass
def test_fit_many_checkpoints_and_resumes_exactly(tmp_path, fused):
    kwargs = dict(seeds=[0, 1], hyperparams={"learning_rate": [0.05, 0.1]}, batch_size=16, fused=fused, **QUIET)
    whole = nnjax.fit_many(MODEL, LOSS, optax.sgd, X, Y, epochs=3, **kwargs)
    nnjax.fit_many(MODEL, LOSS, optax.sgd, X, Y, epochs=2, checkpoint_dir=tmp_path, **kwargs)
    assert checkpoint_steps(tmp_path)[-1] == 2 * 4
    rest = nnjax.fit_many(MODEL, LOSS, optax.sgd, X, Y, epochs=3, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert rest.history["loss"].shape == (4, 1)  # 2 seeds x 2 rates, epoch 3 only
    assert _same(rest.train_states.params, whole.train_states.params)
    np.testing.assert_array_equal(rest.history["loss"][:, -1], whole.history["loss"][:, -1])


def test_fit_stream_halts_naming_the_batch_and_resumes_from_its_checkpoint(tmp_path):
    bad = X.copy()
    bad[40, 1] = np.nan  # batch 2 of each epoch
    with pytest.raises(nnjax.NonFiniteError, match=r"fit_stream: non-finite loss or gradient at step 6 \(epoch 2, "
                                                   r"batch 2\): the first non-finite leaf is params/dense_0/w"):
        nnjax.fit_stream(MODEL, LOSS, SGD, lambda e: _stream(e, bad if e == 1 else X), epochs=3,
                         nonfinite="halt", checkpoint_dir=tmp_path, **QUIET)
    assert checkpoint_steps(tmp_path) == [4]  # epoch 1 was saved, the halted epoch 2 was not
    whole = nnjax.fit_stream(MODEL, LOSS, SGD, _stream, epochs=3, **QUIET)
    rest = nnjax.fit_stream(MODEL, LOSS, SGD, _stream, epochs=3, checkpoint_dir=tmp_path, resume=True,
                            **QUIET)
    assert len(rest.history["loss"]) == 2 and rest.history["loss"] == whole.history["loss"][1:]
    assert _same(rest.train_state.params, whole.train_state.params)


# --- per-step observation inside fused runs ------------------------------------------------------------------


@jax.jit  # one program for the three runs (eagerly, every operation of the gradient compiles one of its own)
def _first_grad_norms(params, state, x, y):
    grads = jax.grad(lambda p: LOSS(MODEL.apply(p, state, x)[0], y))(params)
    return optax.tree.norm(grads), optax.tree.norm(grads["dense_2"])


SCHEDULE = optax.linear_schedule(0.1, 0.01, 8)  # 0.1 down to 0.01 over the 8 steps of the runs below
SCHEDULED_SGD = optax.sgd(SCHEDULE)  # one object for the three runs below (see SGD)


@pytest.mark.parametrize("fused", ["epoch", "all", False])
def test_step_stats_of_a_fused_run_equal_hand_computed_norms(fused):
    result = nnjax.fit(MODEL, LOSS, SCHEDULED_SGD, X, Y, epochs=2, batch_size=16, fused=fused,
                       step_stats=nnjax.StepStats(layers=True, schedule=SCHEDULE), **QUIET)
    h = result.history
    assert len(h["loss"]) == 2 and all(len(h[k]) == 8 for k in h if k.startswith("step/"))
    assert sorted(k for k in h if k.startswith("step/")) == [
        "step/grad_norm", "step/grad_norm/dense_0", "step/grad_norm/dense_2", "step/learning_rate", "step/loss",
        "step/param_norm/dense_0", "step/param_norm/dense_2", "step/update_norm"]
    expected_rates = 0.1 + (0.01 - 0.1) * np.arange(8) / 8  # SCHEDULE at steps 0..7 (NumPy: no program per step)
    np.testing.assert_allclose(h["step/learning_rate"], expected_rates, rtol=1e-6)
    np.testing.assert_allclose(np.mean(h["step/loss"][:4]), h["loss"][0], rtol=1e-6)
    # the first step, by hand: grad norm of the loss at the initial params on the first batch (the params and
    # key of seed 0 do not depend on the optimizer)
    ts = _start()
    idx = _order(ts.key, 0)[0]
    grad_norm, dense_2_norm = _first_grad_norms(ts.params, ts.state, X[idx], Y[idx])
    np.testing.assert_allclose(h["step/grad_norm"][0], float(grad_norm), rtol=1e-5)
    np.testing.assert_allclose(h["step/grad_norm/dense_2"][0], float(dense_2_norm), rtol=1e-5)
    np.testing.assert_allclose(h["step/update_norm"][0], 0.1 * float(grad_norm), rtol=1e-5)


@pytest.fixture(scope="module")
def sgd_run_with_step_stats():
    """One fit with per-step statistics, for the two tests that read its history."""
    return nnjax.fit(MODEL, LOSS, optax.sgd(0.2), X, Y, seed=0, epochs=2, batch_size=16, step_stats=True, **QUIET)


def test_step_stats_in_fit_many_and_fit_stream_and_the_injected_learning_rate(sgd_run_with_step_stats):
    many = nnjax.fit_many(MODEL, LOSS, optax.sgd, X, Y, seeds=[0], hyperparams={"learning_rate": [0.1, 0.2]},
                          epochs=2, batch_size=16, step_stats=True, **QUIET)
    assert many.history["step/grad_norm"].shape == (2, 8) and many.history["loss"].shape == (2, 2)
    np.testing.assert_allclose(many.history["step/learning_rate"], [[0.1] * 8, [0.2] * 8], rtol=1e-6)
    one = sgd_run_with_step_stats  # fit(MODEL, LOSS, optax.sgd(0.2), X, Y, seed=0, epochs=2, batch_size=16, ...)
    np.testing.assert_allclose(many.history["step/grad_norm"][1], one.history["step/grad_norm"], rtol=1e-5)
    assert "step/learning_rate" not in one.history  # a plain sgd(0.2) does not expose it
    stream = nnjax.fit_stream(MODEL, LOSS, SGD, _stream, epochs=2, step_stats=True, **QUIET)
    assert len(stream.history["step/grad_norm"]) == 8 and np.isfinite(stream.history["step/update_norm"]).all()


def test_plot_history_draws_the_per_step_series_of_a_run(sgd_run_with_step_stats):
    pytest.importorskip("matplotlib")
    result = sgd_run_with_step_stats  # two epochs with step_stats=True
    fig = nnjax.plots.plot_history(result.history, metrics=["loss", "step/grad_norm"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "grad_norm per step"]
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), result.history["step/grad_norm"])


# --- progress without host callbacks ---------------------------------------------------------------------------


def _plan(many=False):
    opt = SGD
    step = nnjax.make_train_step(MODEL, LOSS, opt, jit=False)
    evaluate_fn = nnjax._src.inference.make_evaluate_fn(MODEL, LOSS)
    data = jax.device_put((X, Y))
    plan = engine.Plan(step, data=data, steps=4, order=lambda ts, epoch: epoch_order(ts.key, epoch, 64, 16),
                       validate=evaluate_fn, validation=data)
    return plan, _start()


def test_the_fused_epoch_and_the_fused_run_hold_no_host_callback():
    plan, ts = _plan()
    order, step = jax.eval_shape(plan.order, ts, 0), engine.carried_step(plan)
    carry = engine.EpochCarry(ts, engine.no_halt(ts), np.zeros(order.shape, order.dtype),
                              engine.empty_per_step(plan, step, ts, order, plan.data))
    epoch_text = engine.epoch_program(step).lower(carry, plan.data, np.int32(0), np.int32(4)).as_text()
    order_text = jax.jit(plan.order).lower(ts, np.int32(0)).as_text()  # each fused epoch's order program
    epochs = np.arange(0, 3, dtype=np.int32)
    run_text = engine.run_program(plan).lower(ts, engine.no_halt(ts), epochs, plan.data, plan.validation).as_text()
    with_callback = jax.jit(lambda v: jax.debug.callback(print, v) or v).lower(1.0).as_text()
    assert "callback" in with_callback  # what the check looks for is what a host callback lowers to
    assert not any("callback" in text for text in (epoch_text, order_text, run_text))
    assert "while" in epoch_text  # the epoch is a loop over steps, not unrolled


def test_the_fused_programs_take_the_data_as_arguments_not_constants():
    """Another data set of the same shapes lowers to the same program (one compilation, one cache entry);
    closed over, the data were constants baked into it: 116 MB a program for 40,000 MNIST-size images."""
    plan, ts = _plan()
    other = jax.tree.map(lambda a: a[::-1], plan.data)
    order, step = jax.eval_shape(plan.order, ts, 0), engine.carried_step(plan)
    carry = engine.EpochCarry(ts, engine.no_halt(ts), np.zeros(order.shape, order.dtype),
                              engine.empty_per_step(plan, step, ts, order, plan.data))
    epoch = engine.epoch_program(step)
    run, epochs = engine.run_program(plan), np.arange(0, 2, dtype=np.int32)
    texts = [
        (epoch.lower(carry, data, np.int32(0), np.int32(4)).as_text(),
         run.lower(ts, engine.no_halt(ts), epochs, data, data).as_text())
        for data in (plan.data, other)
    ]
    assert texts[0] == texts[1]
    assert all(len(text) < 100_000 for text in texts[0])


def test_chunks_time_the_first_step_then_fill_the_interval():
    chunks = engine.Chunks(steps=1000, enabled=True, interval=0.25)
    assert chunks.next_size(0) == 1
    chunks.observe(1, 0.001)  # 1 ms a step: 250 steps a chunk
    assert chunks.next_size(1) == 250 and chunks.next_size(700) == 300  # the short tail joins the last chunk
    assert engine.Chunks(steps=1000, enabled=False).next_size(0) == 1000  # no bar: one chunk an epoch
    capped = engine.Chunks(steps=1000, enabled=True, most=7)
    capped.observe(1, 0.001)
    assert capped.next_size(0) == 7 and capped.next_size(995) == 5


def test_chunked_epochs_are_bit_identical_to_whole_ones(capsys):
    kwargs = dict(epochs=2, batch_size=4, metrics={"accuracy": nnjax.metrics.accuracy}, validation_data=(X, Y))
    whole = nnjax.fit(MODEL, LOSS, ADAM, X, Y, progress=False, **kwargs)
    chunked = nnjax.fit(MODEL, LOSS, ADAM, X, Y, progress=True, progress_every=3, **kwargs)
    assert _same(whole.train_state, chunked.train_state) and whole.history == chunked.history
    captured = capsys.readouterr()
    assert "32/32" in captured.err and "epoch 2/2" in captured.err + captured.out


@pytest.mark.parametrize("fused", ["epoch", "all"])
def test_a_checkpoint_directory_that_cannot_be_made_is_refused_before_training(tmp_path, fused):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    trained = []
    with pytest.raises(nnjax.CheckpointError, match=r"fit: argument `checkpoint_dir` .*a_file/run cannot be created"):
        nnjax.fit(MODEL, LOSS, SGD, X, Y, epochs=2, fused=fused, checkpoint_dir=blocker / "run",
                  callbacks=[lambda *args: trained.append(1)], **QUIET)
    assert trained == []  # refused at the call, not after the run
