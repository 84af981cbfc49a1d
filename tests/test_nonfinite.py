"""The non-finite guard: skip (count, apply nothing) or halt (stop at the last finite state, name step and leaf)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src.checkpoint import abstract_train_state, checkpoint_steps, restore_checkpoint
from nnjax._src.errors import NonFiniteError, first_nonfinite
from nnjax._src.train import seeded_train_state
from nnjax._src.training_data import epoch_order

N, BATCH, FEATURES = 261, 64, 64  # 4 batches per epoch; 5 examples left out of each epoch
LOSS = nnjax.losses.softmax_cross_entropy
OPT = optax.adam(1e-2)


def _poison():
    """Column 64 of the input is a flag: 1 turns the example into NaN, 2 into Inf, inside the model."""

    def fn(v):
        flag = v[:, FEATURES:]
        return v[:, :FEATURES] + jnp.where(flag == 1, jnp.nan, jnp.where(flag == 2, jnp.inf, 0.0))

    return nnjax.stateless(fn, "Poison")


MODEL = nnjax.serial(_poison(), nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(10))


def _data(poisoned=(), flag=1):
    images, labels = nnjax.data.load_digits()
    x = np.zeros((N, FEATURES + 1), np.float32)
    x[:, :FEATURES] = images.reshape(-1, 64)[:N] / 16.0
    x[list(poisoned), FEATURES] = flag
    return x, labels[:N]


def _start(seed=0):
    """fit's starting state for ``seed`` (its initialization program, compiled once for the file)."""
    return seeded_train_state(MODEL, OPT, seed, (FEATURES + 1,))


def _root_key(seed=0):
    return _start(seed).key


@functools.cache
def _jitted_order():
    return nnjax.jit(lambda key, epoch: epoch_order(key, epoch, N, BATCH))


def _order(key, epoch):
    """``epoch_order(key, epoch, N, BATCH)`` by the program fit(fused=False) draws it with (run eagerly, each of
    its operations compiles a program of its own)."""
    return np.asarray(_jitted_order()(key, epoch))


def _finite(tree):
    return first_nonfinite(tree) is None


@functools.cache
def _plain_step():
    """The jitted step without a guard, one object for the file (a new one traces and lowers it again)."""
    return nnjax.make_train_step(MODEL, LOSS, OPT)


def _copy(train_state):
    """A fresh device copy of a train state, for a jitted step to donate (no program compiled for it)."""
    return jax.device_put(jax.tree.map(np.asarray, train_state))


def test_train_step_skip_halt_and_default():
    x, y = _data(poisoned=[0])
    # Batches of BATCH examples and the jitted steps fit compiles in the tests below (no guard, "skip" with
    # their metric, "halt"): each program is compiled once for the file. Each call donates a copy of `ts`.
    clean, bad = (x[1 : BATCH + 1], y[1 : BATCH + 1]), (x[:BATCH], y[:BATCH])
    ts = _start()
    plain = _plain_step()
    skip = nnjax.make_train_step(MODEL, LOSS, OPT, nonfinite="skip", metrics={"acc": nnjax.metrics.accuracy})
    halt = nnjax.make_train_step(MODEL, LOSS, OPT, nonfinite="halt")

    ref, ref_metrics = plain(_copy(ts), clean)
    assert "nonfinite" not in ref_metrics
    got, metrics = skip(_copy(ts), clean)
    assert int(metrics["nonfinite"]) == 0
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), got.params, ref.params))

    for step_fn, advance in ((skip, 1), (halt, 0)):
        before = jax.tree.map(np.asarray, (ts.params, ts.opt_state))
        after, metrics = step_fn(_copy(ts), bad)
        assert int(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
        assert int(after.step) == int(ts.step) + advance
        assert jax.tree.all(
            jax.tree.map(np.array_equal, jax.tree.map(np.asarray, (after.params, after.opt_state)), before)
        )
        ts = after

    poisoned, _ = plain(_copy(ts), bad)
    assert not _finite(poisoned.params)  # without the guard the NaN goes through
    with pytest.raises(
        ValueError, match="make_train_step: argument `nonfinite` expected None, 'skip' or 'halt', given 'ignore'"
    ):
        nnjax.make_train_step(MODEL, LOSS, OPT, nonfinite="ignore")


@pytest.mark.parametrize("fused", ["epoch", "all", False])
def test_fit_skip_counts_and_checkpoints_only_finite_states(tmp_path, fused):
    x, y = _data(poisoned=[3, 4, 100])
    key = _root_key()
    expected = []
    for epoch in range(3):
        order = _order(key, epoch)
        expected.append(float(sum(np.isin([3, 4, 100], batch).any() for batch in order)))
    result = nnjax.fit(
        MODEL,
        LOSS,
        OPT,
        x,
        y,
        epochs=3,
        batch_size=BATCH,
        progress=False,
        nonfinite="skip",
        fused=fused,
        checkpoint_dir=tmp_path,
        metrics={"acc": nnjax.metrics.accuracy},
    )
    assert result.history["nonfinite"] == expected and sum(expected) >= 3
    assert all(np.isfinite(result.history["loss"])) and all(np.isfinite(result.history["acc"]))
    assert int(result.train_state.step) == 12 and _finite(result.train_state)
    for step in checkpoint_steps(tmp_path):
        restored, _ = restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (FEATURES + 1,)), step=step)
        assert _finite(restored)


@pytest.fixture(scope="module")
def clean_epoch():
    """The train state after one clean epoch: a loop of the jitted step, the programs of the fused=False runs."""
    return nnjax.fit(MODEL, LOSS, OPT, *_data(), epochs=1, batch_size=BATCH, fused=False, progress=False).train_state


@pytest.mark.parametrize(("fused", "flag"), [("epoch", 1), ("all", 2), (False, 1)])  # flag 1: NaN, 2: Inf
def test_fit_halt_names_step_and_leaf_and_keeps_the_last_finite_state(tmp_path, fused, flag, clean_epoch):
    key = _root_key()
    left_out = set(range(N)) - set(_order(key, 0).ravel().tolist())
    order1 = _order(key, 1)
    victim = next(i for i in sorted(left_out) if np.isin(i, order1))  # unseen in epoch 0, seen in epoch 1
    batch = int(np.flatnonzero((order1 == victim).any(axis=1))[0])
    x, y = _data(poisoned=[victim], flag=flag)
    step = 4 + batch
    with pytest.raises(NonFiniteError) as error:
        nnjax.fit(
            MODEL,
            LOSS,
            OPT,
            x,
            y,
            epochs=3,
            batch_size=BATCH,
            progress=False,
            nonfinite="halt",
            fused=fused,
            checkpoint_dir=tmp_path,
        )
    message = str(error.value)
    assert f"non-finite loss or gradient at step {step} (epoch 2, batch {batch} of 4)" in message
    assert "first non-finite leaf is params/dense_1/w" in message
    assert error.value.step == step and error.value.leaf == "params/dense_1/w"
    state = error.value.train_state
    assert int(state.step) == step and _finite(state)
    # The last finite state is where an uninterrupted clean run stands after `step` updates.
    step_fn = _plain_step()
    ts = _copy(clean_epoch)  # donated by the step
    for idx in order1[:batch]:
        ts, _ = step_fn(ts, (x[idx], y[idx]))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.allclose(a, b, atol=1e-6)), ts.params, state.params))
    if fused == "all":
        assert checkpoint_steps(tmp_path) == []  # "all" checkpoints once, after the run
    else:
        assert checkpoint_steps(tmp_path) == [4]
        assert _finite(restore_checkpoint(tmp_path, abstract_train_state(MODEL, OPT, (FEATURES + 1,)))[0])


def test_fit_without_guard_refuses_to_checkpoint_nonfinite(tmp_path):
    x, y = _data(poisoned=[7])
    with pytest.raises(
        NonFiniteError, match="save_checkpoint: refusing to save step 4 .*leaf params/dense_1/w holds NaN or Inf"
    ):  # fused=False: the loop's programs are compiled above (the fused epoch bakes its data in: one more program)
        nnjax.fit(
            MODEL, LOSS, OPT, x, y, epochs=2, batch_size=BATCH, fused=False, progress=False, checkpoint_dir=tmp_path
        )
    assert checkpoint_steps(tmp_path) == []


def test_fit_argument_errors(tmp_path):
    x, y = _data()
    with pytest.raises(ValueError, match="fit: argument `nonfinite` expected None, 'skip' or 'halt', given True"):
        nnjax.fit(MODEL, LOSS, OPT, x, y, nonfinite=True, progress=False)
    with pytest.raises(ValueError, match="fit: argument `resume=True` needs `checkpoint_dir`"):
        nnjax.fit(MODEL, LOSS, OPT, x, y, resume=True, progress=False)
    with pytest.raises(
        ValueError, match=r"fit: argument `checkpoint_every` expected a positive int \(epochs\), given 0"
    ):
        nnjax.fit(MODEL, LOSS, OPT, x, y, checkpoint_dir=tmp_path, checkpoint_every=0, progress=False)
