"""Callbacks after a real ``fit``: metric writers, early stopping, best model, learning rate."""

import csv
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax as nn
from nnjax._src.callbacks import (
    BestModel,
    CSVLogger,
    EarlyStopping,
    JSONLLogger,
    LearningRateLogger,
    TensorBoardLogger,
    host_copy,
)


def digits(n=512):
    images, labels = nn.data.load_digits()
    return images[:n].reshape(n, 64).astype(np.float32) / 16, labels[:n]


def mlp():
    return nn.serial(nn.Dense(16), nn.Relu(), nn.Dense(10))


FIT = dict(
    loss=nn.losses.softmax_cross_entropy, metrics={"accuracy": nn.metrics.accuracy}, batch_size=64, progress=False
)


@pytest.mark.parametrize("fused", ["epoch", False])
def test_csv_and_jsonl_hold_every_epoch(tmp_path, fused):
    x, y = digits()
    csv_path, jsonl_path = tmp_path / "logs" / "m.csv", tmp_path / "logs" / "m.jsonl"
    result = nn.fit(
        mlp(),
        optimizer=optax.adam(1e-2),
        x=x[:400],
        y=y[:400],
        epochs=4,
        fused=fused,
        validation_data=(x[400:], y[400:]),
        callbacks=[CSVLogger(csv_path), JSONLLogger(jsonl_path)],
        **FIT,
    )
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [r["epoch"] for r in lines] == [0, 1, 2, 3]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    for name, values in result.history.items():
        assert [float(r[name]) for r in rows] == values  # exact: floats round-trip through repr
        assert [r[name] for r in lines] == values
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_csv_append_and_new_column(tmp_path):
    path = tmp_path / "m.csv"
    log = CSVLogger(path)
    log(0, None, {"loss": 1.0})
    log(1, None, {"loss": 0.5, "lr": 0.1})  # a new metric widens the header
    again = CSVLogger(path, append=True)
    again(2, None, {"loss": 0.25, "lr": 0.05})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["loss"], r["lr"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", "0.1"),
        ("2", "0.25", "0.05"),
    ]
    CSVLogger(path)(0, None, {"loss": 3.0})  # without append the file starts over
    assert path.read_text().splitlines() == ["epoch,loss", "0,3.0"]


def test_early_stopping_stops_fit():
    x, y = digits(256)
    stop = EarlyStopping(monitor="val_loss", patience=2)
    # learning rate 0: val_loss never improves after the first epoch
    result = nn.fit(
        mlp(), optimizer=optax.sgd(0.0), x=x, y=y, epochs=20, validation_data=(x, y), callbacks=[stop], **FIT
    )
    assert len(result.history["loss"]) == 3
    assert (stop.best_epoch, stop.stopped_epoch, stop.wait) == (0, 2, 2)
    assert int(result.train_state.step) == 3 * (256 // 64)


def test_early_stopping_modes_and_min_delta():
    stop = EarlyStopping(monitor="val_accuracy", mode="max", patience=2, min_delta=0.01)
    decisions = [stop(e, None, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.6, 0.605, 0.609, 0.7])]
    assert decisions == [False, False, False, True, False]  # 0.605 and 0.609 are within min_delta of 0.6
    assert stop.best == 0.7 and stop.best_epoch == 4
    with pytest.raises(KeyError, match="val_loss.*available.*Hint: pass validation_data"):
        EarlyStopping()(0, None, {"loss": 1.0})
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="lowest")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_best_model_keeps_the_best_state():
    model = nn.Dense(2)
    opt = optax.sgd(0.1)
    states = [nn.init_train_state(model, opt, jax.random.key(i), (3,)) for i in range(3)]
    best = BestModel(monitor="val_loss")
    for epoch, (state, value) in enumerate(zip(states, [3.0, 1.0, 2.0], strict=True)):
        best(epoch, state, {"val_loss": value})
    assert best.best_epoch == 1 and best.best == 1.0
    np.testing.assert_array_equal(best.train_state.params["w"], states[1].params["w"])
    assert isinstance(best.train_state.params["w"], np.ndarray)


def test_best_model_survives_donation_in_fit():
    x, y = digits(256)
    best = BestModel(monitor="loss")
    result = nn.fit(mlp(), optimizer=optax.adam(1e-2), x=x, y=y, epochs=3, callbacks=[best], **FIT)
    assert best.best_epoch == int(np.argmin(result.history["loss"]))
    kept = best.train_state
    assert int(kept.step) == (best.best_epoch + 1) * (256 // 64)
    # the copy is usable after the run (the live states were donated epoch after epoch)
    again = nn.evaluate(mlp(), kept, x, y, loss=nn.losses.softmax_cross_entropy)
    assert np.isfinite(again["loss"])
    if best.best_epoch == 2:
        for a, b in zip(jax.tree.leaves(kept.params), jax.tree.leaves(result.train_state.params), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_host_copy_is_independent_of_donated_buffers():
    tree = {"w": jnp.arange(3.0), "key": jax.random.key(1)}
    kept = host_copy(tree)
    jax.jit(lambda t: jax.tree.map(lambda a: a, t), donate_argnums=0)(tree)
    np.testing.assert_array_equal(kept["w"], [0.0, 1.0, 2.0])
    assert jax.random.key_data(kept["key"]).tolist() == jax.random.key_data(jax.random.key(1)).tolist()


def test_learning_rate_logger_reads_schedule(tmp_path):
    x, y = digits(256)
    schedule = optax.exponential_decay(0.1, transition_steps=4, decay_rate=0.5)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    lr = LearningRateLogger()
    path = tmp_path / "m.csv"
    nn.fit(mlp(), optimizer=opt, x=x, y=y, epochs=3, callbacks=[lr, CSVLogger(path)], **FIT)
    steps = 256 // 64
    expected = [float(schedule(steps * (e + 1) - 1)) for e in range(3)]  # the rate of each epoch's last update
    np.testing.assert_allclose(lr.values, expected, rtol=1e-6)
    assert lr.epochs == [0, 1, 2]
    with open(path, newline="") as f:
        np.testing.assert_allclose([float(r["learning_rate"]) for r in csv.DictReader(f)], expected, rtol=1e-6)


def test_learning_rate_logger_needs_inject_hyperparams():
    state = nn.init_train_state(nn.Dense(1), optax.adam(1e-3), jax.random.key(0), (2,))
    with pytest.raises(ValueError, match="inject_hyperparams"):
        LearningRateLogger()(0, state, {})
    chained = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=0.25))
    state = nn.init_train_state(nn.Dense(1), chained, jax.random.key(0), (2,))
    logs = {}
    LearningRateLogger()(0, state, logs)
    assert logs == {"learning_rate": 0.25}


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboardX")
    x, y = digits(256)
    tb = TensorBoardLogger(tmp_path / "tb")
    nn.fit(mlp(), optimizer=optax.adam(1e-2), x=x, y=y, epochs=2, validation_data=(x, y), callbacks=[tb], **FIT)
    tb.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    data = events[0].read_bytes()
    for tag in (b"loss", b"val_loss", b"accuracy", b"val_accuracy"):
        assert tag in data


def test_tensorboard_logger_missing_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"nnjax\[tensorboard\]"):
        TensorBoardLogger(tmp_path)
