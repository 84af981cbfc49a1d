"""Ensembles and sweeps: K models in one vmapped program equal K sequential runs."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src.ensemble import (
    ensemble_predict,
    fit_many,
    init_many,
    make_many_step,
    stack_train_states,
    sweep_configs,
    unstack,
)

EPOCHS, BATCH = 2, 16


@pytest.fixture(scope="module")
def data():
    rs = np.random.RandomState(0)
    x = rs.randn(96, 4).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5, 2.0]) > 0).astype(np.int32)
    xv = rs.randn(64, 4).astype(np.float32)
    yv = (xv @ np.array([1.0, -1.0, 0.5, 2.0]) > 0).astype(np.int32)
    return x, y, xv, yv


def _model(dropout=0.0):
    layers = [nnjax.Dense(8), nnjax.Relu()] + ([nnjax.Dropout(dropout)] if dropout else [])
    return nnjax.serial(*layers, nnjax.Dense(2))


LOSS = nnjax.losses.softmax_cross_entropy
METRICS = {"accuracy": nnjax.metrics.accuracy}


def _close(a, b, atol=1e-5):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=1e-5), a, b)


SWEEP_LRS = [0.3, 0.03]


@pytest.fixture(scope="module")
def sweep(data):
    """2 seeds x 2 learning rates of plain SGD, trained once for the tests that only read it (the K=4 sweep's
    programs are also those of the other K=4 SGD sweeps here: loaded from the compilation cache)."""
    x, y, _, _ = data
    return fit_many(
        _model(),
        LOSS,
        optax.sgd,
        x,
        y,
        seeds=[0, 1],
        hyperparams={"learning_rate": SWEEP_LRS},
        epochs=EPOCHS,
        batch_size=BATCH,
        progress=False,
    )


def test_four_vmapped_seeds_equal_four_sequential_fits(data):
    x, y, xv, yv = data
    model = _model(dropout=0.2)  # dropout keys must also follow each model's own key
    opt = optax.adam(1e-2)
    many = fit_many(
        model,
        LOSS,
        opt,
        x,
        y,
        seeds=[0, 1, 2, 3],
        epochs=EPOCHS,
        batch_size=BATCH,
        metrics=METRICS,
        validation_data=(xv, yv),
        progress=False,
    )
    assert many.history["loss"].shape == (4, EPOCHS)
    assert set(many.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert [c["seed"] for c in many.configs] == [0, 1, 2, 3]
    for i, seed in enumerate([0, 1, 2, 3]):
        one = nnjax.fit(
            model,
            LOSS,
            opt,
            x,
            y,
            seed=seed,
            epochs=EPOCHS,
            batch_size=BATCH,
            metrics=METRICS,
            validation_data=(xv, yv),
            progress=False,
        )
        _close(many.best(i).params, one.train_state.params)
        for name, values in one.history.items():
            np.testing.assert_allclose(many.history[name][i], values, rtol=1e-5, atol=1e-6, err_msg=name)
    # the four models really differ (different seeds)
    w = np.asarray(many.train_states.params["dense_0"]["w"])
    assert float(np.abs(w[0] - w[1]).max()) > 1e-3


def test_seeds_by_learning_rates_sweep_equals_sequential_runs(data, sweep):
    x, y, _, _ = data
    model, lrs, many = _model(), SWEEP_LRS, sweep
    assert many.configs == [{"seed": s, "learning_rate": lr} for s in (0, 1) for lr in lrs]
    assert many.history["loss"].shape == (4, EPOCHS)
    np.testing.assert_allclose(
        many.train_states.opt_state.hyperparams["learning_rate"], [0.3, 0.03, 0.3, 0.03], rtol=1e-6
    )
    for i, c in enumerate(many.configs):
        one = nnjax.fit(
            model,
            LOSS,
            optax.sgd(c["learning_rate"]),
            x,
            y,
            seed=c["seed"],
            epochs=EPOCHS,
            batch_size=BATCH,
            progress=False,
        )
        _close(many.best(i).params, one.train_state.params)
        np.testing.assert_allclose(many.history["loss"][i], one.history["loss"], rtol=1e-5)


def test_fused_modes_agree_and_two_hyperparameters_sweep(data):
    x, y, xv, yv = data
    kwargs = dict(
        seeds=[3],
        hyperparams={"learning_rate": [1e-2, 3e-2], "weight_decay": [0.0, 0.5]},
        epochs=2,
        batch_size=BATCH,
        validation_data=(xv, yv),
        progress=False,
    )
    runs = {
        fused: fit_many(_model(), LOSS, optax.adamw, x, y, fused=fused, **kwargs) for fused in ("epoch", "all", False)
    }
    assert len(runs["epoch"].configs) == 4 and runs["epoch"].history["val_loss"].shape == (4, 2)
    for fused in ("all", False):
        _close(runs[fused].train_states.params, runs["epoch"].train_states.params)
        _close(runs[fused].history, runs["epoch"].history)
    one = nnjax.fit(
        _model(), LOSS, optax.adamw(3e-2, weight_decay=0.5), x, y, seed=3, epochs=2, batch_size=BATCH, progress=False
    )
    _close(runs["epoch"].best(3).params, one.train_state.params)


def test_best_model_is_chosen_by_a_validation_metric(data):
    x, y, xv, yv = data
    # learning rate 0 cannot learn: the best model must be one with a real learning rate
    many = fit_many(
        _model(),
        LOSS,
        optax.sgd,
        x,
        y,
        seeds=[0, 1],
        hyperparams={"learning_rate": [0.0, 0.5]},
        epochs=4,
        batch_size=BATCH,
        metrics=METRICS,
        validation_data=(xv, yv),
        progress=False,
        select="val_accuracy",
        mode="max",
    )
    final = many.history["val_accuracy"][:, -1]
    assert many.best_index == int(np.argmax(final))
    assert many.configs[many.best_index]["learning_rate"] == 0.5
    assert final[many.best_index] > 0.85
    by_loss = fit_many(
        _model(),
        LOSS,
        optax.sgd,
        x,
        y,
        seeds=[0, 1],
        hyperparams={"learning_rate": [0.0, 0.5]},
        epochs=4,
        batch_size=BATCH,
        validation_data=(xv, yv),
        progress=False,
    )
    assert by_loss.best_index == int(np.argmin(by_loss.history["val_loss"][:, -1]))
    best = by_loss.best()
    assert best.params["dense_0"]["w"].shape == (4, 8)
    last = by_loss.best(-1)  # one program takes any model: the index is an argument, checked against K
    np.testing.assert_array_equal(last.params["dense_0"]["w"], by_loss.train_states.params["dense_0"]["w"][3])
    with pytest.raises(IndexError, match="model index 4 is out of range for 4 models"):
        by_loss.best(4)
    acc = nnjax.evaluate(_model(), best, xv, yv, loss=LOSS, metrics=METRICS)["accuracy"]
    assert acc > 0.85


def test_nan_models_are_never_best():
    from nnjax._src.ensemble import _best_index

    history = {"val_loss": np.array([[1.0, np.nan], [2.0, 0.5], [0.1, 0.7]])}
    assert _best_index(history, "val_loss", "min") == 1
    with pytest.raises(ValueError, match="select"):
        _best_index(history, "val_acc", "max")


def test_stack_and_unstack_round_trip_and_init_many_equals_init_train_state():
    model, opt = _model(), optax.adam(1e-3)
    # K=4 as in test_four_vmapped_seeds_...: init_many's op-by-op programs are that fit_many's (same shapes)
    states = [nnjax.init_train_state(model, opt, jax.random.key(s), (4,)) for s in (5, 6, 7, 8)]
    stacked = stack_train_states(states)
    assert stacked.params["dense_0"]["w"].shape == (4, 4, 8) and stacked.key.shape == (4, 2)  # raw key data per model
    _close(init_many(model, opt, [5, 6, 7, 8], (4,)).params, stacked.params)
    for a, b in zip(unstack(stacked), states, strict=True):
        _close(a.params, b.params)
        assert np.array_equal(a.key, b.key)
    with pytest.raises(TypeError, match="factory"):
        init_many(model, optax.adam, [0, 1], (4,))
    with pytest.raises(ValueError, match="one value per model"):
        init_many(model, optax.adam, [0, 1], (4,), hyperparams={"learning_rate": [0.1, 0.2, 0.3]})


def test_sweep_configs_grid_and_zip():
    assert len(sweep_configs(range(8), {"learning_rate": [1, 2, 3, 4]})) == 32
    zipped = sweep_configs([0, 1], {"learning_rate": [0.1, 0.2], "weight_decay": [0.0, 1e-4]}, grid=False)
    assert zipped == [
        {"seed": 0, "learning_rate": 0.1, "weight_decay": 0.0},
        {"seed": 1, "learning_rate": 0.2, "weight_decay": 1e-4},
    ]
    assert [c["seed"] for c in sweep_configs([4], {"learning_rate": [1, 2, 3]}, grid=False)] == [4, 4, 4]
    with pytest.raises(ValueError, match="one length"):
        sweep_configs([0, 1, 2], {"learning_rate": [1, 2]}, grid=False)


def test_many_step_equals_per_model_steps_and_does_not_recompile(data):
    x, y, _, _ = data
    model, lrs = _model(), [0.1, 0.2, 0.3, 0.4]  # K=4: init_many's op-by-op programs are the SGD sweeps'
    ts = init_many(model, optax.sgd, [0, 1, 2, 3], (4,), hyperparams={"learning_rate": lrs})
    singles = unstack(ts)
    step = make_many_step(model, LOSS, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), shared_batch=True)
    xb, yb = jax.device_put(x[:BATCH]), jax.device_put(y[:BATCH])
    ts, metrics = step(ts, (xb, yb))
    assert metrics["loss"].shape == (4,)
    stacked = jax.tree.map(np.asarray, ts.params)  # sliced in NumPy: no eager programs
    for i, (single, lr) in enumerate(zip(singles, lrs, strict=True)):
        new, _ = nnjax.make_train_step(model, LOSS, optax.inject_hyperparams(optax.sgd)(learning_rate=lr))(
            single, (xb, yb)
        )
        _close(jax.tree.map(lambda a, i=i: a[i], stacked), new.params)
    with jax.log_compiles():
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("jax").addHandler(handler)
        try:
            ts, _ = step(ts, (xb, yb))
        finally:
            logging.getLogger("jax").removeHandler(handler)
    assert not [r for r in records if "Compiling" in r.getMessage()]


def test_ensemble_predict_shapes(data, sweep):
    x, y, _, _ = data
    many = sweep  # 4 trained models (fit_many without hyperparameters is test_four_vmapped_seeds_...'s)
    preds = ensemble_predict(_model(), many.train_states, x[:10])
    assert preds.shape == (4, 10, 2)
    np.testing.assert_allclose(preds[1], nnjax.predict(_model(), many.best(1), x[:10]), atol=1e-6)


def test_resume_from_train_states_continues_the_run(data):
    x, y, _, _ = data
    kw = dict(seeds=[0, 1], hyperparams={"learning_rate": [0.1, 0.2]}, batch_size=BATCH, progress=False)
    full = fit_many(_model(), LOSS, optax.sgd, x, y, epochs=3, **kw)
    half = fit_many(_model(), LOSS, optax.sgd, x, y, epochs=1, **kw)
    rest = fit_many(_model(), LOSS, optax.sgd, x, y, epochs=3, train_states=half.train_states, **kw)
    assert rest.history["loss"].shape == (4, 2)  # 2 seeds x 2 learning rates, epochs 2-3
    _close(rest.train_states.params, full.train_states.params)


def test_aggregate_over_seeds_per_setting(data):
    x, y, xv, yv = data
    lrs = [0.3, 0.003]
    many = fit_many(
        _model(),
        LOSS,
        optax.sgd,
        x,
        y,
        seeds=[0, 1],  # K=4: the programs of test_best_model_is_chosen_by_a_validation_metric's second sweep
        hyperparams={"learning_rate": lrs},
        validation_data=(xv, yv),
        epochs=EPOCHS,
        batch_size=BATCH,
        progress=False,
    )
    summary = many.aggregate()
    assert summary.settings == [{"learning_rate": 0.3}, {"learning_rate": 0.003}]
    assert summary.models == [[0, 2], [1, 3]] and summary.select == "val_loss"
    for name, values in many.history.items():
        values = np.asarray(values, np.float64)
        for s, members in enumerate(summary.models):
            np.testing.assert_allclose(summary.mean[name][s], values[members].mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(summary.std[name][s], values[members].std(axis=0, ddof=1), rtol=1e-12)
    expected = int(np.argmin(summary.mean["val_loss"][:, -1]))
    assert summary.best_index == expected and summary.best_setting == summary.settings[expected]
    assert summary.best_setting == {"learning_rate": 0.3}  # 0.003 barely moves in 2 epochs
    by_accuracy = nnjax.ensemble.aggregate(many, select="loss", mode="max")
    assert by_accuracy.best_setting == {"learning_rate": 0.003}  # the highest mean training loss
    with pytest.raises(ValueError, match=r"`select` expected one of \['loss', 'val_loss'\], given 'acc'"):
        many.aggregate("acc")
    with pytest.raises(ValueError, match=r"`mode` expected 'min' or 'max', given 'best'"):
        many.aggregate(mode="best")
