"""Checkpoints: round trip, retention (last N + best), leaf checks, corruption, stale temporaries, guards."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src.checkpoint import (
    abstract_train_state,
    checkpoint_steps,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from nnjax._src.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    NonFiniteError,
)

MODEL = nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(10))
OPT = optax.adam(1e-3)


def _state(step=0, seed=0, model=MODEL, shape=(64,)):
    ts = nnjax.init_train_state(model, OPT, jax.random.key(seed), shape)
    return ts.replace(step=jnp.asarray(step, jnp.int32))


def _same(a, b):
    a = a.replace(key=jax.random.key_data(a.key))
    b = b.replace(key=jax.random.key_data(b.key))
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def _data_files(step_dir):
    files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / "train_state") for f in names]
    return sorted((f for f in files if os.sep + "d" + os.sep in f), key=os.path.getsize)


def test_round_trip_restores_every_leaf_bit_for_bit(tmp_path):
    ts = _state(step=7, seed=3)
    ts = ts.replace(opt_state=OPT.update(ts.params, ts.opt_state, ts.params)[1])  # non-trivial moments
    path = save_checkpoint(tmp_path, ts, metrics={"loss": jnp.float32(0.5)}, config={"lr": 1e-3, "layers": [32, 10]})
    assert path == str(tmp_path / "7")
    restored, info = restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (64,)))
    assert _same(restored, ts)
    assert restored.key.dtype == ts.key.dtype == jnp.uint32  # TrainState keeps raw key data
    typed = ts.replace(key=jax.random.key(5))  # typed keys are stored as key data and rewrapped
    save_checkpoint(tmp_path / "typed", typed)
    back, _ = restore_checkpoint(tmp_path / "typed", typed)
    assert jax.dtypes.issubdtype(back.key.dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(back.key) == jax.random.key_impl(typed.key)
    assert (jax.random.key_data(back.key) == jax.random.key_data(typed.key)).all()
    assert info["step"] == 7 and info["nnjax_version"] == nnjax.__version__
    assert info["config"] == {"lr": 1e-3, "layers": [32, 10]} and info["metrics"] == {"loss": 0.5}
    # A concrete train state works as `like` too, and places arrays like it.
    restored2, _ = restore_checkpoint(tmp_path, _state(seed=9))
    assert _same(restored2, ts)
    assert latest_step(tmp_path) == 7 and checkpoint_steps(tmp_path) == [7]


def test_keeps_last_n_and_the_best(tmp_path):
    for step, loss in zip(range(1, 7), [3.0, 0.5, 2.0, 4.0, 5.0, 6.0], strict=True):
        save_checkpoint(tmp_path / "min", _state(step), metrics={"loss": loss}, keep=2, best_metric="loss")
        save_checkpoint(
            tmp_path / "max", _state(step), metrics={"acc": loss}, keep=2, best_metric="acc", best_mode="max"
        )
        save_checkpoint(tmp_path / "last", _state(step), keep=2)
    assert checkpoint_steps(tmp_path / "min") == [2, 5, 6]
    assert checkpoint_steps(tmp_path / "max") == [5, 6]  # the best (6.0) is also the newest
    assert checkpoint_steps(tmp_path / "last") == [5, 6]
    with pytest.raises(ValueError, match="`best_metric` 'loss' expected a finite value in `metrics`"):
        save_checkpoint(tmp_path / "min", _state(7), metrics={"acc": 1.0}, best_metric="loss")


def test_restore_into_a_different_model_names_every_mismatched_leaf(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    with pytest.raises(CheckpointMismatchError) as error:
        restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (65,)))
    message = str(error.value)
    assert "params/dense_0/w: expected (65, 32) float32, found (64, 32) float32" in message
    assert "opt_state/0/mu/dense_0/w: expected (65, 32) float32, found (64, 32) float32" in message
    assert "3 leaves differ" in message
    other = nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(10))
    with pytest.raises(
        CheckpointMismatchError, match=r"params/dense_4/w: expected \(16, 10\) float32, missing from the checkpoint"
    ):
        restore_checkpoint(tmp_path, abstract_train_state(other, OPT, (64,)))
    with pytest.raises(
        CheckpointMismatchError, match=r"params/dense_0/w: expected \(64, 32\) float16, found \(64, 32\) float32"
    ):
        restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (64,), jnp.float16))


def test_truncated_newest_checkpoint_errors_clearly_and_the_previous_restores(tmp_path):
    first, second = _state(1, seed=1), _state(2, seed=2)
    save_checkpoint(tmp_path, first)
    save_checkpoint(tmp_path, second)
    biggest = _data_files(tmp_path / "2")[-1]
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    like = abstract_train_state(MODEL, OPT, (64,))
    with pytest.raises(CheckpointCorruptError, match="checkpoint step 2 in .* cannot be read|leaf .* fails its CRC-32"):
        restore_checkpoint(tmp_path, like, step=2)
    with pytest.warns(RuntimeWarning, match="checkpoint step 2 .*Falling back to the previous checkpoint"):
        restored, info = restore_checkpoint(tmp_path, like)
    assert info["step"] == 1 and _same(restored, first)
    restored, _ = restore_checkpoint(tmp_path, like, step=1)
    assert _same(restored, first)


def test_flipped_bytes_fail_the_checksum(tmp_path):
    save_checkpoint(tmp_path, _state(1, seed=1))
    save_checkpoint(tmp_path, _state(2, seed=2))
    for data in _data_files(tmp_path / "2"):
        with open(data, "r+b") as f:
            blob = bytearray(f.read())
            for i in range(len(blob) // 3, len(blob) // 3 + 64):
                blob[i] ^= 0xFF
            f.seek(0)
            f.write(blob)
    like = abstract_train_state(MODEL, OPT, (64,))
    with pytest.raises(CheckpointCorruptError, match="checkpoint step 2 in"):
        restore_checkpoint(tmp_path, like, step=2)
    with pytest.warns(RuntimeWarning, match="Falling back"):
        assert restore_checkpoint(tmp_path, like)[1]["step"] == 1


def test_corrupt_record_and_all_corrupt(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    record = next(p for p in (tmp_path / "1" / "nnjax").iterdir() if p.is_file() and "METADATA" not in p.name)
    record.write_text('{"format": "nnjax-checkpoint/1", "leaves": ')
    with pytest.raises(
        CheckpointCorruptError, match="every checkpoint in .* is unreadable:\n.*step 1 .*record cannot be read"
    ):
        restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (64,)))
    record.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointCorruptError, match="not an nnjax checkpoint record"):
        restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (64,)), step=1)


def test_stale_temporary_directory_is_never_listed_and_is_cleaned_at_the_next_save(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    stale = tmp_path / "2.orbax-checkpoint-tmp"
    (stale / "train_state").mkdir(parents=True)
    (stale / "train_state" / "half_written").write_bytes(b"\0" * 10)
    assert checkpoint_steps(tmp_path) == [1] and latest_step(tmp_path) == 1
    assert restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (64,)))[1]["step"] == 1
    save_checkpoint(tmp_path, _state(2))
    assert not stale.exists() and checkpoint_steps(tmp_path) == [1, 2]


def test_existing_step_needs_overwrite_which_drops_newer_steps(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, _state(step, seed=step))
    with pytest.raises(
        CheckpointError, match=r"already holds a checkpoint at step 2 \(and newer: \[3\]\).*overwrite=True"
    ):
        save_checkpoint(tmp_path, _state(2, seed=9))
    save_checkpoint(tmp_path, _state(2, seed=9), overwrite=True)
    assert checkpoint_steps(tmp_path) == [1, 2]
    assert _same(restore_checkpoint(tmp_path, _state())[0], _state(2, seed=9))


def test_relative_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    save_checkpoint("runs/a", _state(1))
    assert (tmp_path / "runs" / "a" / "1").is_dir()
    assert latest_step("~/runs/a") == 1
    assert restore_checkpoint("~/runs/a", _state())[1]["step"] == 1


def test_nonfinite_state_never_reaches_disk(tmp_path):
    ts = _state(1)
    bad = ts.replace(
        params={**ts.params, "dense_2": {**ts.params["dense_2"], "b": ts.params["dense_2"]["b"].at[3].set(jnp.inf)}}
    )
    with pytest.raises(
        NonFiniteError, match="refusing to save step 1 .*leaf params/dense_2/b holds NaN or Inf"
    ) as error:
        save_checkpoint(tmp_path, bad)
    assert error.value.leaf == "params/dense_2/b" and error.value.step == 1
    assert checkpoint_steps(tmp_path) == [] and not any(tmp_path.iterdir())


def test_argument_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no complete checkpoint in"):
        restore_checkpoint(tmp_path / "empty", _state())
    save_checkpoint(tmp_path, _state(1))
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint at step 5 .* complete checkpoints: \[1\]"):
        restore_checkpoint(tmp_path, _state(), step=5)
    with pytest.raises(TypeError, match="`config` expected JSON-serializable values"):
        save_checkpoint(tmp_path, _state(2), config={"opt": OPT})
    with pytest.raises(ValueError, match="`keep` expected a positive int or None, given 0"):
        save_checkpoint(tmp_path, _state(2), keep=0)
    with pytest.raises(ValueError, match="`best_mode` expected 'min' or 'max'"):
        save_checkpoint(tmp_path, _state(2), best_mode="best")
    with pytest.raises(TypeError, match="`directory` expected a path, given int"):
        save_checkpoint(3, _state(2))
    assert checkpoint_steps(tmp_path) == [1]


def test_fit_checkpoints_and_best(tmp_path):
    images, labels = nnjax.data.load_digits()
    x = images.reshape(-1, 64).astype(np.float32)[:256] / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = nnjax.fit(
            MODEL,
            nnjax.losses.softmax_cross_entropy,
            OPT,
            x,
            labels[:256],
            epochs=5,
            batch_size=64,
            progress=False,
            validation_data=(x[:64], labels[:64]),
            checkpoint_dir=tmp_path,
            keep=2,
            best_metric="val_loss",
            checkpoint_every=2,
        )
    assert checkpoint_steps(tmp_path)[-2:] == [16, 20]
    _, info = restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (64,)))
    assert info["metrics"]["val_loss"] == pytest.approx(result.history["val_loss"][-1])
    assert info["config"]["fit"] == {"examples": 256, "batch_size": 64, "steps_per_epoch": 4, "seed": 0}


def test_round_trip_of_a_state_from_the_jitted_step(tmp_path):
    """A deterministic model's jitted step (array-free model state, not passed): save, restore, train on."""
    step = nnjax.make_train_step(MODEL, nnjax.losses.softmax_cross_entropy, OPT)
    ts = _state()
    x, y = jnp.ones((8, 64)), jnp.zeros(8, jnp.int32)
    for _ in range(3):
        ts, _ = step(ts, (x, y))
    assert isinstance(ts.step, jax.Array) and ts.step.dtype == jnp.int32 and int(ts.step) == 3
    save_checkpoint(tmp_path, ts)
    assert latest_step(tmp_path) == 3
    restored, info = restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (64,)))
    assert info["step"] == 3 and int(restored.step) == 3
    assert _same(restored, ts)
    more, _ = step(restored, (x, y))  # and it trains on from there
    assert int(more.step) == 4
