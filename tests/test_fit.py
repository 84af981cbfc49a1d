"""fit / evaluate / predict: the three execution modes agree, history, callbacks, data validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax import losses, metrics
from nnjax._src import engine as nnjax_engine
from nnjax._src import training_data as nnjax_fit

MODEL = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dropout(0.1), nnjax.Dense(3))
ADAM = optax.adam(1e-2)  # one object: fit's initialization program is cached per model and optimizer object
RNG = np.random.default_rng(0)
X = RNG.normal(size=(100, 5)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5).astype(np.int32)


def _fit(**kwargs):
    args = dict(epochs=3, batch_size=16, metrics={"accuracy": metrics.accuracy}, validation_data=(X[:30], Y[:30]),
                progress=False)
    return nnjax.fit(MODEL, losses.softmax_cross_entropy, ADAM, X, Y, **{**args, **kwargs})


def test_fused_epoch_fused_all_and_python_loop_agree():
    results = [_fit(fused=mode) for mode in ("epoch", "all", False)]
    for other in results[1:]:
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(results[0].history[name], other.history[name], rtol=1e-5)
        np.testing.assert_allclose(results[0].train_state.params["dense_3"]["w"],
                                   other.train_state.params["dense_3"]["w"], rtol=1e-5, atol=1e-6)
    assert list(results[0].history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 3 for v in results[0].history.values())
    assert int(results[0].train_state.step) == 3 * (100 // 16)


def test_python_loop_over_several_gathered_chunks_agrees_with_the_fused_epoch(monkeypatch):
    """9 steps an epoch: the loop gathers its batches LOOP_CHUNK at a time, the last chunk short (LOOP_CHUNK
    lowered from 32 to 4: each chunk length is a gather program of its own, unrolled, and 32 batches compile
    for a second); a deterministic model, whose jitted step does not pass its array-free state."""
    monkeypatch.setattr(nnjax_engine, "LOOP_CHUNK", 4)
    model = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(3))
    x, y = X[:18], Y[:18]
    assert len(x) // 2 > 2 * nnjax_engine.LOOP_CHUNK  # chunks of 4, 4 and 1 steps
    optimizer = optax.sgd(0.05)
    results = [
        nnjax.fit(model, losses.softmax_cross_entropy, optimizer, x, y, epochs=2, batch_size=2,
                  fused=mode, progress=False)
        for mode in ("epoch", False)
    ]
    np.testing.assert_allclose(results[0].history["loss"], results[1].history["loss"], rtol=1e-5)
    np.testing.assert_allclose(results[0].train_state.params["dense_2"]["w"],
                               results[1].train_state.params["dense_2"]["w"], rtol=1e-5, atol=1e-6)
    assert int(results[1].train_state.step) == 2 * 9


@pytest.mark.parametrize("n, batch", [(100, 16), (7, 7), (1, 1)])
def test_epoch_order_is_a_stable_argsort_of_the_epochs_random_bits(n, batch):
    key = jax.random.key_data(jax.random.key(4))
    bits = np.asarray(jax.random.bits(nnjax_fit.stream_key(key, nnjax_fit.DATA_STREAM, 3), (n,), jnp.uint32))
    steps = n // batch
    got = nnjax_fit.epoch_order(key, 3, n, batch)
    np.testing.assert_array_equal(got, np.argsort(bits, kind="stable")[: steps * batch].reshape(steps, batch))
    assert got.dtype == jnp.int32


def test_epoch_order_keeps_index_order_among_tied_bits(monkeypatch):
    tied = jnp.asarray([5, 1, 5, 1, 0, 5], jnp.uint32)
    monkeypatch.setattr(nnjax_fit.jax.random, "bits", lambda key, shape, dtype: tied)
    np.testing.assert_array_equal(nnjax_fit.epoch_order(jax.random.key(0), 0, 6, 3), [[4, 1, 3], [0, 2, 5]])


def test_epoch_orders_under_lax_map_equal_one_at_a_time():
    keys = jax.vmap(lambda k: jax.random.key_data(k))(jax.random.split(jax.random.key(3), 3))
    mapped = jax.jit(lambda ks: jax.lax.map(lambda k: nnjax_fit.epoch_order(k, 2, 100, 16), ks))(keys)
    for key, order in zip(keys, mapped, strict=True):
        np.testing.assert_array_equal(order, nnjax_fit.epoch_order(key, 2, 100, 16))
        assert order.shape == (6, 16) and len(np.unique(np.asarray(order))) == 96


def test_gather_batches_equals_indexing_each_step():
    order = jnp.asarray(RNG.permutation(100)[:96].reshape(6, 16))
    batches = nnjax_fit.gather_batches((jnp.asarray(X), jnp.asarray(Y)), order)
    assert len(batches) == 6
    for (xb, yb), idx in zip(batches, np.asarray(order), strict=True):
        np.testing.assert_array_equal(xb, X[idx])
        np.testing.assert_array_equal(yb, Y[idx])


def test_continuing_from_a_train_state_equals_one_run():
    whole = _fit(epochs=4)
    half = _fit(epochs=2)
    rest = _fit(epochs=4, train_state=half.train_state)
    assert len(rest.history["loss"]) == 2  # `epochs` is the total: epochs 3 and 4 ran
    np.testing.assert_allclose(rest.history["loss"], whole.history["loss"][2:], rtol=1e-6)
    np.testing.assert_array_equal(rest.train_state.params["dense_0"]["w"], whole.train_state.params["dense_0"]["w"])


def test_callbacks_see_each_epoch_and_can_stop():
    seen = []

    def stop_after_two(epoch, train_state, logs):
        seen.append((epoch, int(train_state.step), logs["val_loss"]))
        return epoch == 1

    result = _fit(epochs=5, callbacks=[stop_after_two])
    assert [e for e, _, _ in seen] == [0, 1]
    assert seen[1][1] == 2 * (100 // 16)
    assert len(result.history["loss"]) == 2


def test_progress_bar_and_epoch_lines(capsys):
    _fit(epochs=2, progress=True, progress_every=2)
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "epoch 1/2" in text and "epoch 2/2" in text and "val_accuracy" in text
    assert "12/12" in captured.err  # the tqdm bar reached the last step


@pytest.fixture(scope="module")
def one_epoch():
    """``_fit(epochs=1)``, for the tests of predict and evaluate (which do not change it)."""
    return _fit(epochs=1)


def test_predict_in_batches_equals_one_batch_and_evaluate_agrees(one_epoch):
    result = one_epoch
    whole = nnjax.predict(MODEL, result.train_state, X, batch_size=1000)
    batched = nnjax.predict(MODEL, result.train_state, X, batch_size=7)
    np.testing.assert_allclose(whole, batched, rtol=1e-6, atol=1e-6)
    values = nnjax.evaluate(MODEL, result.train_state, X, Y, loss=losses.softmax_cross_entropy,
                            metrics={"accuracy": metrics.accuracy}, batch_size=9)
    # The expected values in float64 NumPy (eager jnp would compile a program per operation).
    logits = np.asarray(whole, np.float64)
    top = logits.max(axis=-1)
    cross_entropy = np.mean(top + np.log(np.exp(logits - top[:, None]).sum(axis=-1)) - logits[np.arange(len(Y)), Y])
    assert values["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=-1) == Y))
    assert values["loss"] == pytest.approx(cross_entropy, rel=1e-6)


@pytest.mark.parametrize(
    "x, y, error, message",
    [
        (X, np.where(Y == 2, 3, Y), ValueError, r"fit: argument `labels` expected values in \[0, 3\)"),
        (X, Y.astype(np.float32), TypeError, "expected integer class indices"),
        ((X * 100).astype(np.uint8), Y, TypeError, "scale integer inputs"),
        (X[:50], Y, ValueError, "same number of examples"),
        (X[:0], Y[:0], ValueError, "empty data set"),
        (np.where(X > 2, np.nan, X), Y, ValueError, "NaN or Inf"),
    ],
)
def test_bad_data_is_refused_where_it_enters(x, y, error, message):
    # _fit's optimizer (ADAM): float labels are refused when the step is traced, after the (shared) initialization
    with pytest.raises(error, match=message):
        nnjax.fit(MODEL, losses.softmax_cross_entropy, ADAM, x, y, epochs=1, progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="fit: argument `batch_size`"):
        _fit(batch_size=0)
    with pytest.raises(ValueError, match="fit: argument `fused`"):
        _fit(fused="sometimes")


def test_xor_reaches_100_percent():
    x, y = nnjax.data.make_xor()
    model = nnjax.serial(nnjax.Dense(8), nnjax.Tanh(), nnjax.Dense(2))
    result = nnjax.fit(model, losses.softmax_cross_entropy, optax.adam(0.05), x, y, epochs=300, batch_size=4,
                       fused="all", progress=False)
    predictions = nnjax.predict(model, result.train_state, x)
    assert float(metrics.accuracy(predictions, jnp.asarray(y))) == 1.0


def test_predict_and_evaluate_compile_once_per_model(one_epoch):
    from nnjax._src.inference import compiled_evaluate, compiled_predict

    _predict, _evaluate = compiled_predict(), compiled_evaluate()
    result = one_epoch
    before = (_predict._cache_size(), _evaluate._cache_size())
    for _ in range(3):
        nnjax.predict(MODEL, result.train_state, X)
        nnjax.evaluate(MODEL, result.train_state, X, Y, loss=losses.softmax_cross_entropy,
                       metrics={"accuracy": metrics.accuracy})
    assert _predict._cache_size() - before[0] <= 1 and _evaluate._cache_size() - before[1] <= 1


@pytest.mark.parametrize("fused", ["epoch", "all"])
def test_a_second_fit_of_the_same_model_runs_the_programs_the_first_compiled(fused):
    """Same model, loss, metrics and optimizer objects, other data of the same shapes and another seed:
    nothing is traced, lowered or compiled again (made afresh, the digits MLP's took 0.85 s each time)."""
    kwargs = dict(epochs=2, batch_size=20, fused=fused, progress=False, metrics={"accuracy": metrics.accuracy})
    first = _fit(validation_data=(X[:40], Y[:40]), **kwargs)
    lowered = []

    def on_duration(event, duration, fun_name="", **kw):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        second = nnjax.fit(MODEL, losses.softmax_cross_entropy, ADAM, X[::-1].copy(), Y[::-1].copy(), seed=5,
                           validation_data=(X[40:80], Y[40:80]), **kwargs)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
    assert lowered == []
    assert second.history["loss"] != first.history["loss"] and len(second.history["val_accuracy"]) == 2
