"""Exact resume: a run killed with SIGKILL at random moments (during saves included) and restarted ends
bit-identical to an uninterrupted run; every restart resumes from the last complete checkpoint.

The default suite runs 3 crash trials; ``pytest -m slow`` runs the full 20.
"""

import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src.checkpoint import checkpoint_steps

WORKER = Path(__file__).with_name("crash_worker.py")
EPOCHS = 4
STEPS_PER_EPOCH = 1797 // 32


def _run_worker(directory, out, *, kill_after_epoch=None, delay=0.0, kill_at=None):
    """Runs the worker; kills it ``delay`` s after it announces ``kill_after_epoch`` or ``kill_at`` s after start."""
    xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()  # + the suite's
    env = dict(os.environ, PYTHONPATH=str(WORKER.parent.parent), XLA_FLAGS=xla_flags)
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(directory), str(out), str(EPOCHS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    timer = None
    if kill_at is not None:
        timer = threading.Timer(kill_at, lambda: proc.poll() is None and proc.send_signal(signal.SIGKILL))
        timer.start()
    stderr = []
    drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    drain.start()
    lines = []
    for line in proc.stdout:
        lines.append(line.split())
        if kill_after_epoch is not None and lines[-1] == [
            "epoch_end",
            str(kill_after_epoch),
            str((kill_after_epoch + 1) * STEPS_PER_EPOCH),
        ]:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
    proc.wait()
    drain.join()
    if timer is not None:
        timer.cancel()
    return proc.returncode, lines, "".join(stderr)


def _resumed_from(lines):
    resume = [line[1] for line in lines if line and line[0] == "resume"]
    return None if not resume or resume[0] == "none" else int(resume[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the worker: its final train state and wall time."""
    tmp = tmp_path_factory.mktemp("reference")
    start = time.perf_counter()
    code, lines, stderr = _run_worker(tmp / "ckpt", tmp / "final.npz")
    assert code == 0, stderr[-3000:]
    assert lines[-1] == ["done"]
    assert checkpoint_steps(tmp / "ckpt")[-1] == EPOCHS * STEPS_PER_EPOCH
    return dict(np.load(tmp / "final.npz")), time.perf_counter() - start


def _crash_trials(tmp_path, reference, trials, seed):
    expected, seconds = reference
    rng = random.Random(seed)
    figures = {"trials": 0, "kills": 0, "kills_mid_save": 0, "resumes_checked": 0, "matched": 0}
    for trial in range(trials):
        directory, out = tmp_path / f"trial{trial}", tmp_path / f"trial{trial}.npz"
        kills = 1 + (trial % 3 == 2)  # every third trial is killed twice
        for _ in range(kills):
            before = checkpoint_steps(directory)
            start = max(before, default=0) // STEPS_PER_EPOCH  # the epoch this run resumes at
            if rng.random() < 0.6 and start <= EPOCHS - 2:  # just after an epoch's end: in (or around) its save
                target = min(start + rng.randrange(0, 2), EPOCHS - 2)  # an epoch this run does announce
                kwargs = {"kill_after_epoch": target, "delay": rng.uniform(0.0, 0.25)}
            else:  # anywhere in the run, start-up included; a resumed run is shorter, so the window is too
                kwargs = {"kill_at": rng.uniform(0.2, max(0.3, seconds * (EPOCHS - start) / EPOCHS))}
            code, lines, stderr = _run_worker(directory, out, **kwargs)
            assert "Falling back" not in stderr, stderr[-3000:]
            if code == 0:  # finished before the kill came
                break
            assert code == -signal.SIGKILL, stderr[-3000:]
            figures["kills"] += 1
            if directory.exists() and any(".orbax-checkpoint-tmp" in p.name for p in directory.iterdir()):
                figures["kills_mid_save"] += 1
            if lines:  # it got as far as resuming: from the newest checkpoint complete at its start
                assert _resumed_from(lines) == (before[-1] if before else None)
                figures["resumes_checked"] += 1
        complete = checkpoint_steps(directory)
        code, lines, stderr = _run_worker(directory, out)
        assert code == 0, stderr[-3000:]
        assert "Falling back" not in stderr, stderr[-3000:]
        assert _resumed_from(lines) == (complete[-1] if complete else None)
        figures["resumes_checked"] += 1
        assert not any(".orbax-checkpoint-tmp" in p.name for p in directory.iterdir())
        final = dict(np.load(out))
        assert final.keys() == expected.keys()
        for name in expected:
            assert final[name].dtype == expected[name].dtype and final[name].tobytes() == expected[name].tobytes(), name
        figures["trials"] += 1
        figures["matched"] += 1
        shutil.rmtree(directory)
    print(f"\ncrash figures: {figures}")
    return figures


@pytest.mark.slow  # about 60 s; the 20-trial test beside it is slow too
def test_crash_resume_bit_identical_quick(tmp_path, reference):
    figures = _crash_trials(tmp_path, reference, trials=3, seed=0)
    assert figures["matched"] == 3 and figures["kills"] >= 3


@pytest.mark.slow
def test_crash_resume_bit_identical_20_trials(tmp_path, reference):
    figures = _crash_trials(tmp_path, reference, trials=20, seed=1)
    assert figures["matched"] == 20 and figures["kills"] >= 20
    assert figures["kills_mid_save"] >= 1


# In-process resume and determinism (fast).


def _digits():
    images, labels = nnjax.data.load_digits()
    return images.reshape(-1, 64).astype(np.float32)[:512] / 16.0, labels[:512]


def _fit(**kwargs):
    x, y = _digits()
    model = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dropout(0.1), nnjax.Dense(10))
    return nnjax.fit(
        model, nnjax.losses.softmax_cross_entropy, optax.adam(1e-2), x, y, batch_size=64, progress=False, **kwargs
    )


def _bytes(tree):
    return [np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(tree)]


def _lowerings(fn):
    """``(fn(), {program name: how many times JAX lowered it while fn ran})``: each lowering is a compilation
    or a cache lookup."""
    names = collections.Counter()

    def on_duration(event, duration, fun_name="", **kwargs):
        names[fun_name] += event == "/jax/core/compile/jaxpr_to_mlir_module_duration"

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        return fn(), names
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)


@pytest.mark.parametrize("fused", ["epoch", pytest.param(False, marks=pytest.mark.slow)])  # the loop: CI's slow pass
def test_resume_in_process_is_bit_identical(tmp_path, fused):
    full = _fit(epochs=3, fused=fused)
    first = _fit(epochs=1, fused=fused, checkpoint_dir=tmp_path, resume=True)
    assert checkpoint_steps(tmp_path) == [8]
    rest, lowered = _lowerings(lambda: _fit(epochs=3, fused=fused, checkpoint_dir=tmp_path, resume=True))
    # Each program once (before, the epoch's was compiled again for each placement of its arguments: a
    # restored state is committed to its device, as is all it computes).
    assert lowered and max(lowered.values()) == 1, lowered
    assert checkpoint_steps(tmp_path) == [8, 16, 24]
    assert list(rest.history["loss"]) == full.history["loss"][1:]
    assert _bytes(rest.train_state.params) == _bytes(full.train_state.params)
    assert _bytes(rest.train_state.opt_state) == _bytes(full.train_state.opt_state)
    assert first.history["loss"] == full.history["loss"][:1]


def test_resume_with_nothing_saved_starts_afresh(tmp_path):
    result = _fit(epochs=1, checkpoint_dir=tmp_path / "new", resume=True)
    assert int(result.train_state.step) == 8
    assert checkpoint_steps(tmp_path / "new") == [8]


def test_resume_refuses_a_different_epoch_length(tmp_path):
    _fit(epochs=1, checkpoint_dir=tmp_path)
    x, y = _digits()
    model = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dropout(0.1), nnjax.Dense(10))
    with pytest.raises(ValueError, match="cannot resume exactly from step 8.*8 steps per epoch, this run has 16"):
        nnjax.fit(
            model,
            nnjax.losses.softmax_cross_entropy,
            optax.adam(1e-2),
            x,
            y,
            batch_size=32,
            epochs=2,
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_same_seed_gives_identical_results_twice():
    a, b = _fit(epochs=2, seed=3), _fit(epochs=2, seed=3)
    assert a.history == b.history
    assert _bytes(a.train_state.params) == _bytes(b.train_state.params)
    assert _bytes(a.train_state.opt_state) == _bytes(b.train_state.opt_state)
    c = _fit(epochs=2, seed=4)
    assert _bytes(c.train_state.params) != _bytes(a.train_state.params)
