"""Checkpoints under faults: full disks and unwritable directories at several points of a save, damaged
JSON records, half-deleted steps, and a second writer on one directory.

The disk faults use a failing-write shim (the functions Orbax writes its small files and renames its
directories with, and tensorstore's array writes, made to raise the operating system's error); where the
machine lets the tests mount a small tmpfs (root with CAP_SYS_ADMIN), a real disk is filled as well.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils.epath import abstract_path

import nnjax
from nnjax._src import checkpoint as checkpoint_module
from nnjax._src.checkpoint import (
    abstract_train_state,
    checkpoint_lock,
    checkpoint_steps,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from nnjax._src.errors import (
    CheckpointCorruptError,
    CheckpointDiskFullError,
    CheckpointError,
    CheckpointLockedError,
    CheckpointPermissionError,
    CheckpointWriteError,
)

MODEL = nnjax.serial(nnjax.Dense(4), nnjax.Relu(), nnjax.Dense(3))
OPT = optax.sgd(0.1)
SHAPE = (5,)
LIKE = abstract_train_state(MODEL, OPT, SHAPE)
X = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32)


def _state(step, seed=0):
    ts = nnjax.init_train_state(MODEL, OPT, jax.random.key(seed), SHAPE)
    return ts.replace(step=jnp.asarray(step, jnp.int32))


def _same(a, b):
    return all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True)
    )


def _leftovers(directory):
    return sorted(name for name in os.listdir(directory) if "tmp" in name)


# --- the failing-write shim -----------------------------------------------------------------------------


def _fail_writes(monkeypatch, directory, point, code):
    """Makes the save's write at ``point`` raise ``OSError(code)``: a small file Orbax writes (by its name), the
    final rename of the step directory (``"rename"``), or tensorstore's array data (``"arrays"``)."""
    import orbax.checkpoint._src.path.async_path as async_path
    import tensorstore

    def refuse(where):
        raise OSError(code, os.strerror(code), where)

    if point == "arrays":  # tensorstore reports OS errors in a ValueError's text, with the code
        original_open = tensorstore.open

        def open_(spec, *args, **kwargs):
            if kwargs.get("create") or "create" in str(spec):
                raise ValueError(
                    f"RESOURCE_EXHAUSTED: Error writing local file \"{directory}/d/0\": Failed writing: "
                    f"{os.strerror(code)} [os_error_code='{code}'] [tensorstore_spec='{{}}']"
                )
            return original_open(spec, *args, **kwargs)

        monkeypatch.setattr(tensorstore, "open", open_)
    elif point == "rename":
        original_rename = async_path.rename

        async def rename(src, dst):
            if os.path.basename(str(src)).endswith("orbax-checkpoint-tmp") and os.path.basename(str(dst)).isdigit():
                refuse(str(dst))
            return await original_rename(src, dst)

        monkeypatch.setattr(async_path, "rename", rename)
    else:
        original_write = abstract_path.Path.write_text

        def write_text(self, *args, **kwargs):
            if str(self).startswith(str(directory)) and os.path.relpath(str(self), directory).endswith(point):
                refuse(str(self))
            return original_write(self, *args, **kwargs)

        monkeypatch.setattr(abstract_path.Path, "write_text", write_text)


POINTS = [
    "_CHECKPOINT_METADATA",  # the step's first small file
    "nnjax.orbax-checkpoint-tmp/metadata",  # the JSON record
    "array_metadatas/process_0",
    "train_state.orbax-checkpoint-tmp/_METADATA",
    "commit_success.txt",
    "arrays",
    "rename",
]


@pytest.mark.parametrize("point", POINTS)
def test_a_full_disk_at_any_point_of_a_save_raises_disk_full_and_keeps_the_earlier_checkpoints(
    tmp_path, monkeypatch, point
):
    first = _state(1, seed=1)
    save_checkpoint(tmp_path, first, metrics={"loss": 0.5})
    with monkeypatch.context() as patch:
        _fail_writes(patch, tmp_path, point, errno.ENOSPC)
        with pytest.raises(CheckpointDiskFullError) as caught:
            save_checkpoint(tmp_path, _state(2, seed=2))
    error = caught.value
    message = str(error)
    assert f"cannot save step 2 to {tmp_path}: disk full" in message
    assert "saved before are unchanged and restorable: steps [1]" in message and "Hint: free some space" in message
    assert error.step == 2 and error.directory == str(tmp_path) and error.errno == errno.ENOSPC
    assert isinstance(error, CheckpointError) and isinstance(error, OSError)
    assert checkpoint_steps(tmp_path) == [1] and _leftovers(tmp_path) == []  # the failed save's files are gone
    restored, info = restore_checkpoint(tmp_path, LIKE)
    assert info["step"] == 1 and _same(restored, first)
    save_checkpoint(tmp_path, _state(2, seed=2))  # space again: the next save works
    assert checkpoint_steps(tmp_path) == [1, 2]


@pytest.mark.parametrize(
    ("code", "cause"), [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")]
)
def test_an_unwritable_directory_mid_save_raises_a_permission_error(tmp_path, monkeypatch, code, cause):
    save_checkpoint(tmp_path, _state(1))
    with monkeypatch.context() as patch:
        _fail_writes(patch, tmp_path, "_CHECKPOINT_METADATA", code)
        with pytest.raises(CheckpointPermissionError, match=rf"cannot save step 2 to .*: {cause} ") as caught:
            save_checkpoint(tmp_path, _state(2))
    assert isinstance(caught.value, PermissionError) and caught.value.cause == cause
    assert checkpoint_steps(tmp_path) == [1]


def test_any_other_write_failure_is_a_checkpoint_write_error_with_its_words(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _fail_writes(patch, tmp_path, "_CHECKPOINT_METADATA", errno.EIO)
        with pytest.raises(CheckpointWriteError, match=r"cannot save step 3 to .*: OSError: \[Errno 5\] ") as caught:
            save_checkpoint(tmp_path, _state(3))
    assert type(caught.value) is CheckpointWriteError and caught.value.errno == errno.EIO
    assert checkpoint_steps(tmp_path) == []


def _unwritable_probe(monkeypatch):
    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("fused", [False, "epoch", "all"])
def test_fit_refuses_an_unwritable_checkpoint_dir_at_the_call_in_every_mode(tmp_path, monkeypatch, fused):
    trained = []
    if os.geteuid() == 0:  # root writes through chmod: the shim plays the read-only directory
        _unwritable_probe(monkeypatch)
    else:
        tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointPermissionError, match=r"fit: cannot save to .*: permission denied \(writing a "
                           r"probe file in `checkpoint_dir`; no training was run\)"):
            nnjax.fit(MODEL, nnjax.losses.softmax_cross_entropy, OPT, X, Y, epochs=2, batch_size=8, fused=fused,
                      checkpoint_dir=tmp_path, callbacks=[lambda *args: trained.append(1)], progress=False)
    finally:
        tmp_path.chmod(0o700)
    assert trained == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; the shim test above covers it")
def test_a_read_only_directory_refuses_saves(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointPermissionError, match="cannot save step 2 .*permission denied"):
            save_checkpoint(tmp_path, _state(2))
    finally:
        tmp_path.chmod(0o700)
    assert checkpoint_steps(tmp_path) == [1]


# --- a real full disk, where a tmpfs can be mounted ------------------------------------------------------


def _mount(tmp_path, options):
    """A tmpfs at ``tmp_path/disk``, or a skip where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or not sys.platform.startswith("linux") or not mount or not umount:
        pytest.skip("mounting a tmpfs needs root on Linux")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run([umount, "-l", str(disk)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs."""
    yield from _mount(tmp_path, "size=1m")


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only tmpfs (root cannot write there either)."""
    yield from _mount(tmp_path, "ro,size=64k")


def test_a_read_only_mount_is_refused_at_fits_call(read_only_disk):
    with pytest.raises(CheckpointPermissionError, match=r"fit: cannot save to .*disk/run: read-only file system"):
        nnjax.fit(MODEL, nnjax.losses.softmax_cross_entropy, OPT, X, Y, epochs=1, fused="all",
                  checkpoint_dir=read_only_disk / "run", progress=False)
    with pytest.raises(CheckpointPermissionError, match=r"cannot save step 1 to .*: read-only file system"):
        save_checkpoint(read_only_disk, _state(1))


def _fill(disk, leave):
    """Fills ``disk`` up to ``leave`` free bytes with one file; returns its path."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * max(stats.f_bavail * stats.f_frsize - leave, 0))
        except OSError:
            pass
    return filler


def test_a_tmpfs_filled_before_each_point_of_a_save(small_disk):
    directory = small_disk / "run"
    first = _state(1, seed=1)
    save_checkpoint(directory, first)
    outcomes = []
    for leave in range(0, 400_000, 16384):  # fills that stop the save at its first, middle and last files
        filler = _fill(small_disk, leave)
        try:
            save_checkpoint(directory, _state(2, seed=2), keep=None)
            outcomes.append("saved")
        except CheckpointDiskFullError as error:
            assert f"cannot save step 2 to {directory}: disk full" in str(error)
            outcomes.append("full")
        finally:
            os.remove(filler)
        assert _leftovers(directory) == []
        restored, info = restore_checkpoint(directory, LIKE)
        assert _same(restored, first if outcomes[-1] == "full" else _state(2, seed=2))
        if outcomes[-1] == "saved":
            break
    assert outcomes.count("full") >= 3 and outcomes[-1] == "saved", outcomes
    assert checkpoint_steps(directory) == [1, 2]


# --- damaged records ------------------------------------------------------------------------------------


def _record(directory, step):
    return directory / str(step) / "nnjax" / "metadata"


def _two_checkpoints(directory):
    first = _state(1, seed=1)
    save_checkpoint(directory, first, metrics={"loss": 1.845})
    save_checkpoint(directory, _state(2, seed=2), metrics={"loss": 1.845})
    return first


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("1.845", "1.945"),  # a metric silently read back wrong, before the checksum
        ('"float32"', '"float33"'),  # a dtype: was a CheckpointMismatchError with no fallback
        ('"step": 2', '"step": 3'),
        ('"checksum": "sha256:', '"checksum": "sha255:'),
        ('"checksum"', '"checksun"'),
    ],
)
def test_any_damage_to_the_json_record_falls_back_to_the_previous_checkpoint(tmp_path, old, new):
    first = _two_checkpoints(tmp_path)
    record = _record(tmp_path, 2)
    text = record.read_text()
    assert old in text
    record.write_text(text.replace(old, new, 1))
    with pytest.warns(RuntimeWarning, match=r"step 2 in .*record \(nnjax/metadata\) fails its checksum.*Falling back"):
        restored, info = restore_checkpoint(tmp_path, LIKE)
    assert info["step"] == 1 and info["metrics"] == {"loss": 1.845} and _same(restored, first)
    with pytest.raises(CheckpointCorruptError, match="step 2 .*fails its checksum"):
        restore_checkpoint(tmp_path, LIKE, step=2)


def test_a_flipped_bit_anywhere_in_the_record_never_restores_a_wrong_record(tmp_path):
    _two_checkpoints(tmp_path)
    record = _record(tmp_path, 2)
    original = record.read_bytes()
    rng = np.random.default_rng(0)
    for position in rng.choice(len(original), size=12, replace=False):
        damaged = bytearray(original)
        damaged[position] ^= 1 << int(rng.integers(8))
        record.write_bytes(bytes(damaged))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, info = restore_checkpoint(tmp_path, LIKE)
        assert info["step"] == 1, position  # step 2's record, damaged, is never trusted
        assert any("Falling back" in str(w.message) for w in caught)
    record.write_bytes(original)
    assert restore_checkpoint(tmp_path, LIKE)[1]["step"] == 2


def test_truncated_or_missing_records_fall_back_and_are_not_listed(tmp_path):
    first = _two_checkpoints(tmp_path)
    record = _record(tmp_path, 2)
    record.write_bytes(record.read_bytes()[:40])
    with pytest.warns(RuntimeWarning, match="step 2 .*record cannot be read.*Falling back"):
        assert restore_checkpoint(tmp_path, LIKE)[1]["step"] == 1
    record.unlink()  # a step half deleted (a run killed while removing an old checkpoint)
    assert checkpoint_steps(tmp_path) == [1] and latest_step(tmp_path) == 1
    with pytest.warns(RuntimeWarning, match=r"steps \[2\] in .* are incomplete.*Falling back to the previous"):
        restored, info = restore_checkpoint(tmp_path, LIKE)
    assert info["step"] == 1 and _same(restored, first)
    with pytest.raises(CheckpointCorruptError, match=r"step 2 in .* is incomplete.*complete checkpoints: \[1\]"):
        restore_checkpoint(tmp_path, LIKE, step=2)
    (tmp_path / "1" / "train_state" / "_METADATA").unlink()
    assert checkpoint_steps(tmp_path) == []
    with pytest.raises(nnjax.CheckpointNotFoundError, match=r"no complete checkpoint .*incomplete steps: \[1, 2\]"):
        restore_checkpoint(tmp_path, LIKE)


# --- two writers ----------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import fcntl, json, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], ".nnjax-writer.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": "elsewhere", "since": "now", "command": "train.py"}).encode())
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def other_writer(tmp_path):
    """Another process holding ``tmp_path``'s writer lock the way ``save_checkpoint`` does (flock + its record)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_and_the_lock_goes_with_its_holder(tmp_path, other_writer):
    with pytest.raises(
        CheckpointLockedError,
        match=rf"another process is writing checkpoints to {tmp_path} \(pid {other_writer.pid} on elsewhere, "
        r"since now: train\.py\); refusing to save step 1 there.*Hint: give each run its own",
    ) as caught:
        save_checkpoint(tmp_path, _state(1))
    assert caught.value.holder["pid"] == other_writer.pid and caught.value.step == 1
    assert checkpoint_steps(tmp_path) == [] and sorted(os.listdir(tmp_path)) == [".nnjax-writer.lock"]
    trained = []
    with pytest.raises(CheckpointLockedError, match=r"fit: another process is writing checkpoints to .*; refusing to "
                       r"save there"):
        nnjax.fit(MODEL, nnjax.losses.softmax_cross_entropy, OPT, X, Y, epochs=1, batch_size=8,
                  checkpoint_dir=tmp_path, callbacks=[lambda *args: trained.append(1)], progress=False)
    assert trained == []  # refused at the call
    other_writer.send_signal(signal.SIGKILL)  # a writer killed mid-run leaves no stale lock
    other_writer.wait()
    save_checkpoint(tmp_path, _state(1))
    assert checkpoint_steps(tmp_path) == [1]


def test_a_writer_refused_before_the_holder_wrote_its_record_still_names_the_holder(tmp_path):
    """The race of two runs starting together: the holder takes the lock, then writes who it is."""
    late = HOLDER.replace("os.ftruncate(fd, 0)", 'print("locked", flush=True); time.sleep(0.1); os.ftruncate(fd, 0)')
    process = subprocess.Popen([sys.executable, "-c", late, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"  # locked, its record not yet written
        with pytest.raises(CheckpointLockedError, match=rf"\(pid {process.pid} on elsewhere") as caught:
            save_checkpoint(tmp_path, _state(1))
        assert caught.value.holder["pid"] == process.pid
    finally:
        process.kill()
        process.wait()


def test_a_released_lock_leaves_no_record_and_a_momentary_holder_is_waited_for(tmp_path):
    with checkpoint_lock(tmp_path):
        assert json.loads((tmp_path / ".nnjax-writer.lock").read_text())["pid"] == os.getpid()
    assert (tmp_path / ".nnjax-writer.lock").read_text() == ""  # a later refusal never names a gone writer
    brief = textwrap.dedent(
        """
        import fcntl, os, sys, time
        fd = os.open(os.path.join(sys.argv[1], ".nnjax-writer.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        time.sleep(0.2)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", brief, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"  # held 0.2 s, with no record written
        save_checkpoint(tmp_path, _state(1))  # waits for the lock instead of refusing without a name
        assert checkpoint_steps(tmp_path) == [1]
    finally:
        process.kill()
        process.wait()


def test_fit_holds_the_lock_for_the_whole_run_and_releases_it(tmp_path):
    probe = textwrap.dedent(
        """
        import fcntl, os, sys
        fd = os.open(os.path.join(sys.argv[1], ".nnjax-writer.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("free")
        except BlockingIOError:
            print("held", os.pread(fd, 4096, 0).decode())
        """
    )

    def other_process_sees():
        return subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True).stdout

    seen = []
    result = nnjax.fit(MODEL, nnjax.losses.softmax_cross_entropy, OPT, X, Y, epochs=2, batch_size=8,
                       checkpoint_dir=tmp_path, callbacks=[lambda *args: seen.append(other_process_sees())],
                       progress=False)
    assert [s.split()[0] for s in seen] == ["held", "held"]
    holder = json.loads(seen[0].split(maxsplit=1)[1])
    assert holder["pid"] == os.getpid() and holder["host"]
    assert other_process_sees().strip() == "free"  # released at the end of the run
    assert checkpoint_steps(tmp_path) == [4, 8] and int(result.train_state.step) == 8


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with checkpoint_lock(tmp_path) as path:
        with checkpoint_lock(tmp_path):
            save_checkpoint(path, _state(1))
        save_checkpoint(path, _state(2))
        assert path in checkpoint_module._held
    assert str(tmp_path) not in checkpoint_module._held
    assert checkpoint_steps(tmp_path) == [1, 2]


def test_a_file_system_without_locks_warns_and_saves(tmp_path, monkeypatch):
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoint_module.fcntl, "flock", flock)
    with pytest.warns(RuntimeWarning, match=r"cannot be locked .*No locks available.*second writer would not be"):
        save_checkpoint(tmp_path, _state(1))
    assert checkpoint_steps(tmp_path) == [1]


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np, optax
    import nnjax
    directory, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
    open(os.path.join(os.path.dirname(directory), me), "w").close()
    while not os.path.exists(os.path.join(os.path.dirname(directory), other)):  # start together
        time.sleep(0.005)
    x = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = nnjax.serial(nnjax.Dense(4), nnjax.Relu(), nnjax.Dense(3))
    try:
        result = nnjax.fit(model, nnjax.losses.softmax_cross_entropy, optax.sgd(0.1), x, y, epochs=20,
                           batch_size=8, checkpoint_dir=directory, fused=False, progress=False,
                           callbacks=[lambda *args: time.sleep(0.02)])
        print("done", int(result.train_state.step))
    except nnjax.CheckpointLockedError as error:
        print("locked", error.holder.get("pid"))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_two_real_processes_fitting_into_one_directory(tmp_path, trial):
    directory = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    workers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(directory), me, other], stdout=subprocess.PIPE,
                         text=True, env=env)
        for me, other in (("a", "b"), ("b", "a"))
    ]
    outputs = [worker.communicate(timeout=300)[0].split() for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert sorted(output[0] for output in outputs) == ["done", "locked"], outputs
    winner = next(w for w, output in zip(workers, outputs, strict=True) if output[0] == "done")
    loser = next(output for output in outputs if output[0] == "locked")
    assert int(loser[1]) == winner.pid  # the refusal names the process that holds the directory
    assert checkpoint_steps(directory) == [72, 76, 80] and _leftovers(directory) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every listed checkpoint restores, with no fallback
        for step in (72, 76, 80):
            assert restore_checkpoint(directory, LIKE, step=step)[1]["step"] == step


def test_fit_many_and_fit_stream_check_the_directory_at_the_call_too(tmp_path, monkeypatch):
    def mkstemp(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", kwargs.get("dir"))

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp)
    pulled = []

    def batches(epoch):
        pulled.append(epoch)
        yield X[:8], Y[:8]

    expected = r"{}: cannot save to .*: disk full \(writing a probe file in `checkpoint_dir`; no training was run\)"
    with pytest.raises(CheckpointDiskFullError, match=expected.format("fit_stream")):
        nnjax.fit_stream(MODEL, nnjax.losses.softmax_cross_entropy, OPT, batches, epochs=1, input_shape=SHAPE,
                         checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointDiskFullError, match=expected.format("fit_many")):
        nnjax.fit_many(MODEL, nnjax.losses.softmax_cross_entropy, OPT, X, Y, seeds=(0, 1), epochs=1, batch_size=8,
                       checkpoint_dir=tmp_path, progress=False)
    assert pulled == []


ESSENTIAL = {"nnjax/metadata", "train_state/_METADATA", "train_state/manifest.ocdbt"}


@pytest.mark.parametrize("every_file", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_damage_to_any_file_of_the_newest_checkpoint_never_restores_wrong_arrays(tmp_path, every_file):
    """Each file of step 2 in turn truncated to half or deleted: the restore returns step 2 intact (the file was
    redundant: Orbax's per-process copies, commit markers), or warns and returns step 1; never wrong arrays, never
    an error that is not a CheckpointError. The default run damages the essential files and one array file."""
    source = tmp_path / "source"
    save_checkpoint(source, _state(1, seed=1))
    save_checkpoint(source, _state(2, seed=2))
    files = sorted(os.path.relpath(os.path.join(root, name), source / "2")
                   for root, _, names in os.walk(source / "2") for name in names)
    if not every_file:
        files = sorted(ESSENTIAL) + [next(name for name in files if name.startswith("train_state/d/"))]
    fell_back = set()
    for name in files:
        for damage in ("truncate", "delete"):
            trial = tmp_path / "trial"
            shutil.rmtree(trial, ignore_errors=True)
            shutil.copytree(source, trial)
            target = trial / "2" / name
            if damage == "delete":
                target.unlink()
            else:
                target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                restored, info = restore_checkpoint(trial, LIKE)
            assert _same(restored, _state(info["step"], seed=info["step"])), (name, damage)
            if info["step"] == 1:
                assert any("Falling back" in str(w.message) for w in caught), (name, damage)
                fell_back.add(name)
    assert ESSENTIAL <= fell_back and any(name.startswith("train_state/d/") for name in fell_back), fell_back
