"""Checkpoints of a whole training run through Orbax: save, keep the last N and the best, restore exactly.

    save_checkpoint(directory, train_state, metrics={"val_loss": 0.3}, config={...}, keep=3)
    train_state, info = restore_checkpoint(directory, like)   # like: a TrainState or its abstract shape

One checkpoint is the directory ``<directory>/<step>/`` holding the train state (params, state,
opt_state, step and key; typed PRNG keys are stored as ``jax.random.key_data`` and rewrapped) and a
JSON record (nnjax version, your ``config``, the ``metrics``, and every leaf's shape, dtype and CRC-32),
itself covered by a SHA-256 checksum.

Guarantees:
- Atomic: Orbax writes into ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so a run
  killed mid-save leaves no step directory; the stale temporary directory is removed at the next save.
- Nothing non-finite is written: ``save_checkpoint`` raises ``NonFiniteError`` instead.
- Restore checks every leaf against ``like`` (shapes and dtypes, derived from the model with
  ``jax.eval_shape``) and names all mismatches; it checks the record's checksum before trusting it
  and each array's CRC-32 after reading.
- A failed save (disk full, permissions, I/O) raises a ``CheckpointWriteError`` naming the directory,
  the step and the cause, removes its temporary files, and leaves the earlier checkpoints restorable.
- One writer per directory: a lock (``checkpoint_lock``, ``fcntl.flock``) refuses a second process
  with ``CheckpointLockedError``; ``fit`` and friends hold it for the whole run.
- A corrupt or truncated newest checkpoint (arrays or record): ``restore_checkpoint(step=None)`` warns and falls back
  to the newest one that reads back intact; with an explicit ``step`` it raises ``CheckpointCorruptError``.
- Multi-host: every process calls these functions; Orbax writes the shards each host holds (CRC-32s
  cover only fully addressable arrays) and the primary host writes the JSON record.
"""

from __future__ import annotations

import contextlib
import datetime
import errno as errno_codes
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnjax._src.core import Layer
from nnjax._src.errors import (
    CheckpointCorruptError,
    CheckpointDiskFullError,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointWriteError,
    NonFiniteError,
    first_nonfinite,
    leaf_path,
)
from nnjax._src.train import TrainState, init_train_state
from nnjax._src.types import DType, PyTree, Shape

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; saves there are not guarded against a second writer
    fcntl = None

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


def _orbax() -> Any:
    """``orbax.checkpoint``, imported on first use: it takes about 0.2 s, which ``import nnjax`` does not pay."""
    import orbax.checkpoint

    return orbax.checkpoint


FORMAT = "nnjax-checkpoint/1"
_STATE, _RECORD = "train_state", "nnjax"


def _nnjax_version() -> str:
    try:
        return importlib_metadata.version("nnjax")
    except importlib_metadata.PackageNotFoundError:
        import nnjax

        return getattr(nnjax, "__version__", "unknown")


def _directory(directory: str | os.PathLike, where: str) -> str:
    """Orbax wants an absolute path: expand ``~`` and resolve relative paths against the working directory."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{where}: argument `directory` expected a path, given {type(directory).__name__}.")
    return os.path.abspath(os.path.expanduser(os.fspath(directory)))


# --- why a write failed, and the one-writer lock ------------------------------------------------------

_DISK_FULL = (errno_codes.ENOSPC, getattr(errno_codes, "EDQUOT", errno_codes.ENOSPC))
_NO_PERMISSION = (errno_codes.EACCES, errno_codes.EPERM)
_OS_CODE = re.compile(r"os_error_code='?(\d+)")  # how tensorstore reports the OS error in its messages
_WORDS = {
    "No space left on device": errno_codes.ENOSPC,
    "Disk quota exceeded": _DISK_FULL[1],
    "Permission denied": errno_codes.EACCES,
    "Read-only file system": errno_codes.EROFS,
}


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__, *getattr(current, "exceptions", ())]
    return seen


def _os_error_code(error: BaseException) -> int | None:
    """The OS error number behind ``error``: an ``OSError``'s, or the one tensorstore writes in its message."""
    chain = _chain(error)
    for link in chain:
        if isinstance(link, OSError) and not isinstance(link, CheckpointError) and link.errno:
            return link.errno
    text = " ".join(str(link) for link in chain)
    match = _OS_CODE.search(text)
    if match:
        return int(match.group(1))
    return next((code for words, code in _WORDS.items() if words in text), None)


def _write_error(
    where: str, path: str, step: int | None, error: BaseException, doing: str, *, kept: bool = True
) -> CheckpointWriteError:
    """``error`` (raised while ``doing`` something in ``path``) as a ``CheckpointWriteError`` naming the cause."""
    code = _os_error_code(error)
    if code in _DISK_FULL:
        kind, cause = CheckpointDiskFullError, "disk full"
        hint = "free some space, keep fewer checkpoints (keep=...), or save to another disk"
    elif code == errno_codes.EROFS:
        kind, cause = CheckpointPermissionError, "read-only file system"
        hint = "choose a directory on a writable disk"
    elif code in _NO_PERMISSION:
        kind, cause = CheckpointPermissionError, "permission denied"
        hint = "choose a directory you can write, or fix its permissions"
    else:
        kind, hint = CheckpointWriteError, "check the disk and the directory"
        first = str(error).split("[tensorstore_spec=")[0].strip().splitlines()
        cause = f"{type(error).__name__}: {first[0][:300]}" if first else type(error).__name__
    what = "cannot save" if step is None else f"cannot save step {step}"
    before: list[int] = []
    if kept:
        with contextlib.suppress(Exception):  # listing is only informative here
            before = _complete_steps(path)
    kept_text = f" The checkpoints saved before are unchanged and restorable: steps {before}." if before else ""
    return kind(
        f"{where}: {what} to {path}: {cause} ({doing}).{kept_text} Hint: {hint}.",
        directory=path,
        step=step,
        cause=cause,
        errno=code,
    )


_LOCK_FILE = ".nnjax-writer.lock"
_held: dict[str, list[int | None]] = {}  # path -> [file descriptor, depth]: the locks this process holds
_held_guard = threading.Lock()


def _holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _lock_or_holder(fd: int, patience: float = 0.5) -> dict[str, Any] | None:
    """Takes the flock on ``fd`` (None) or returns the holder's record. A holder writes its record just after
    taking the lock and empties it when it lets go, so an empty record means one of those moments: try again
    for up to ``patience`` seconds (the lock may come free, or the record be written). Raises the OSError of
    a file system without locks."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except OSError as error:
            if error.errno not in (errno_codes.EWOULDBLOCK, errno_codes.EAGAIN, errno_codes.EACCES):
                raise
        holder = _holder(fd)
        if holder or time.monotonic() > deadline:
            return holder
        time.sleep(0.01)


def _acquire(path: str, where: str, step: int | None) -> None:
    """Takes the directory's writer lock (re-entrant in this process); raises ``CheckpointLockedError``."""
    with _held_guard:
        if path in _held:
            _held[path][1] += 1
            return
        if fcntl is None or jax.process_index() != 0:  # the primary host alone guards a shared directory
            _held[path] = [None, 1]
            return
        try:
            os.makedirs(path, exist_ok=True)
            fd = os.open(os.path.join(path, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _write_error(where, path, step, error, f"opening the writer lock {_LOCK_FILE}") from error
        try:
            holder = _lock_or_holder(fd)
        except OSError as error:  # e.g. ENOLCK: a network file system without locking; go on unguarded
            os.close(fd)
            warnings.warn(
                f"{where}: {path} cannot be locked ({error}); a second writer would not be detected.",
                RuntimeWarning,
                stacklevel=4,
            )
            _held[path] = [None, 1]
            return
        if holder is not None:
            os.close(fd)
            who = (
                (
                    f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}: "
                    f"{holder.get('command', '?')}"
                )
                if holder
                else "its details could not be read"
            )
            what = "" if step is None else f" step {step}"
            raise CheckpointLockedError(
                f"{where}: another process is writing checkpoints to {path} ({who}); refusing to save{what} there, so "
                "that neither run deletes or overwrites the other's files. Hint: give each run its own checkpoint "
                "directory, or wait for the other to finish (its lock goes when it exits or dies).",
                directory=path,
                step=step,
                holder=holder,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:200],
        }
        with contextlib.suppress(OSError):  # only informative: a full disk must not stop the lock itself
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        _held[path] = [fd, 1]


def _release(path: str) -> None:
    with _held_guard:
        entry = _held.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[path]
            if entry[0] is not None:
                with contextlib.suppress(OSError):  # no stale record: a refused writer names only a holder
                    os.ftruncate(entry[0], 0)
                os.close(entry[0])  # closing the descriptor drops the flock; the file stays (unlinking would race)


@contextlib.contextmanager
def checkpoint_lock(
    directory: str | os.PathLike, *, where: str = "checkpoint_lock", step: int | None = None
) -> Iterator[str]:
    """Holds the checkpoint directory's one-writer lock for the ``with`` block; yields the absolute path.

    ``save_checkpoint`` takes it for each save and ``fit``/``fit_many``/``fit_stream`` for the whole run, so a
    second process writing to the same directory is refused with ``CheckpointLockedError`` instead of deleting
    the first one's temporary files. The lock is ``fcntl.flock`` on ``<directory>/.nnjax-writer.lock`` (which
    records the holder's pid, host, start time and command for the error message): the operating system drops
    it when the holder exits or is killed, so there are no stale locks. It is re-entrant within a process
    (threads of one process are not told apart). Only the primary process (``jax.process_index() == 0``) takes
    it. Limits: ``flock`` works across machines on NFS (Linux emulates it with NFS locks) but not on every
    network or FUSE file system; where locking fails with an error (``ENOLCK``) a warning says the directory
    is unguarded. On Windows (no ``fcntl``) there is no lock.

    Args:
      directory: the checkpoint directory (created if missing).
      where: the function named in errors.
      step: the step named in errors, if a save is under way.

    Yields:
      The directory's absolute path.

    Raises:
      CheckpointLockedError: another process holds the lock.
      CheckpointWriteError: the directory or its lock file cannot be created (disk full, permission).
      TypeError: ``directory`` is not a path.

    Example:
      >>> import os, tempfile
      >>> train_state = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> with tempfile.TemporaryDirectory() as tmp, nnjax.checkpoint_lock(tmp) as path:
      ...     for step in (1, 2):  # a custom loop: no other process can write here meanwhile
      ...         _ = nnjax.save_checkpoint(path, train_state.replace(step=jnp.int32(step)))
      ...     sorted(os.listdir(path))
      ['.nnjax-writer.lock', '1', '2']
    """
    path = _directory(directory, where)
    _acquire(path, where, step)
    try:
        yield path
    finally:
        _release(path)


def check_writable(directory: str | os.PathLike, where: str) -> str:
    """Checks at a driver's call that ``directory`` can take checkpoints; returns its absolute path.

    Creates it, writes and removes a small probe file (a read-only mount, missing permissions or a full disk
    show here, before any training), and checks that no other process holds its writer lock.

    Raises:
      CheckpointError: the directory cannot be created (a file is in the way).
      CheckpointWriteError: the probe cannot be written (``CheckpointPermissionError``, ``CheckpointDiskFullError``).
      CheckpointLockedError: another process is writing checkpoints there.
    """
    path = _directory(directory, where)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        if _os_error_code(error) in (*_DISK_FULL, *_NO_PERMISSION, errno_codes.EROFS):
            raise _write_error(
                where, path, None, error, "creating the directory; no training was run", kept=False
            ) from error
        raise CheckpointError(f"{where}: argument `checkpoint_dir` {path} cannot be created: {error}.") from error
    try:
        fd, probe = tempfile.mkstemp(prefix=".nnjax-probe-", dir=path)
        try:
            os.write(fd, b"nnjax")
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as error:
        raise _write_error(
            where, path, None, error, "writing a probe file in `checkpoint_dir`; no training was run", kept=False
        ) from error
    with checkpoint_lock(path, where=where):
        pass
    return path


def _manager(
    path: str,
    *,
    keep: int | None = None,
    best_metric: str | None = None,
    best_mode: str = "min",
    read_only: bool = False,
) -> ocp.CheckpointManager:
    ocp = _orbax()
    checkpoint_managers = ocp.checkpoint_managers
    policies: list[Any] = [checkpoint_managers.LatestN(n=keep)]
    best_fn = None
    if best_metric is not None:
        best_fn = lambda metrics: metrics[best_metric]  # noqa: E731
        # BestN sorts ascending and keeps the tail: reverse for "min".
        policies.append(
            checkpoint_managers.BestN(
                get_metric_fn=best_fn, reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False
            )
        )
    options = ocp.CheckpointManagerOptions(
        # best_fn also makes Orbax write the metrics it ranks by; the policy says what is kept.
        best_fn=best_fn,
        best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=False,
        # A read-only use (listing, restoring) neither creates the directory nor cleans it up.
        cleanup_tmp_directories=not read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(path, options=options, item_names=(_STATE, _RECORD))


# The files every complete checkpoint holds: its nnjax record and Orbax's description of the arrays. A step
# directory without them was half deleted (a run killed while removing an old checkpoint) or damaged.
_REQUIRED = (os.path.join(_RECORD, "metadata"), os.path.join(_STATE, "_METADATA"))


def _all_steps(path: str) -> list[int]:
    """The step directories Orbax lists (finished saves; temporary directories are never listed)."""
    if not os.path.isdir(path):
        return []
    with _manager(path, read_only=True) as manager:
        return sorted(manager.all_steps())


def _is_complete(path: str, step: int) -> bool:
    return all(os.path.isfile(os.path.join(path, str(step), name)) for name in _REQUIRED)


def _complete_steps(path: str) -> list[int]:
    return [step for step in _all_steps(path) if _is_complete(path, step)]


_steps = _complete_steps


def _remove_partial(path: str, step: int, before: set[threading.Thread], timeout: float = 30.0) -> None:
    """Removes what a failed save of ``step`` left: Orbax's temporary directories (never a finished step).

    Orbax writes the items of a save from threads and raises on the first failure while the others may still be
    writing; the threads started since the save began (``before`` held the older ones) are joined first, so that
    nothing writes into the directories after they are removed.
    """
    deadline = time.monotonic() + timeout
    for thread in set(threading.enumerate()) - before:
        orbax_thread = type(thread).__module__.startswith("orbax") or thread.name.startswith("asyncio_")
        if orbax_thread and thread is not threading.current_thread():
            with contextlib.suppress(Exception):  # not started; or (Orbax threads) re-raising their own error
                thread.join(max(deadline - time.monotonic(), 0.0))
    for _ in range(20):  # a pooled writer thread (not joined above) may still create a file: remove until none
        with contextlib.suppress(OSError):
            leftovers = [name for name in os.listdir(path) if name.startswith(f"{step}.orbax-checkpoint-tmp")]
            if not leftovers:
                return
            for name in leftovers:
                shutil.rmtree(os.path.join(path, name), ignore_errors=True)
        time.sleep(0.05)


def _record_checksum(record: Mapping[str, Any]) -> str:
    """SHA-256 of the record without its ``checksum``, in a canonical JSON form (as read back from the file)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != "checksum"}, allow_nan=True))
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """The steps of the complete checkpoints in ``directory``, oldest first (``[]`` when none).

    A save killed midway leaves only a temporary directory, which is never listed; nor is a step
    directory missing its record or its array metadata (half deleted, or damaged). Only the directory
    listing is read, not the arrays (``restore_checkpoint`` checks those).

    Args:
      directory: the directory given to ``save_checkpoint`` (it need not exist).

    Returns:
      The saved steps as a sorted ``list[int]``; ``[]`` for a missing or empty directory.

    Raises:
      TypeError: ``directory`` is not a path.

    Example:
      >>> import tempfile
      >>> train_state = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     for step in (10, 20):
      ...         path = nnjax.save_checkpoint(tmp, train_state.replace(step=jnp.int32(step)))
      ...     nnjax.checkpoint_steps(tmp)
      [10, 20]
    """
    return _steps(_directory(directory, "checkpoint_steps"))


def latest_step(directory: str | os.PathLike) -> int | None:
    """The step of the newest complete checkpoint in ``directory``, or None.

    Its arrays are not read: ``restore_checkpoint`` verifies them and falls back past a corrupt one.

    Args:
      directory: the directory given to ``save_checkpoint`` (it need not exist).

    Returns:
      The largest saved step as an ``int``, or None when ``directory`` holds no complete checkpoint.

    Raises:
      TypeError: ``directory`` is not a path.

    Example:
      >>> import tempfile
      >>> train_state = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     print(nnjax.latest_step(tmp))
      ...     path = nnjax.save_checkpoint(tmp, train_state.replace(step=jnp.int32(5)))
      ...     print(nnjax.latest_step(tmp))
      None
      5
    """
    steps = _steps(_directory(directory, "latest_step"))
    return steps[-1] if steps else None


def abstract_train_state(
    model: Layer, optimizer: optax.GradientTransformation, input_shape: Shape, dtype: DType = jnp.float32
) -> TrainState:
    """The shapes and dtypes of ``init_train_state(model, optimizer, key, input_shape)``, without FLOPs.

    It is the ``like`` argument of ``restore_checkpoint``: a ``TrainState`` of ``jax.ShapeDtypeStruct``
    leaves, traced with ``jax.eval_shape`` (no parameters are computed or allocated).

    Args:
      model: the Layer that was trained.
      optimizer: the Optax optimizer that was used (its state's structure must match the checkpoint's).
      input_shape: one example's shape, without the batch axis, e.g. ``(784,)``.
      dtype: the parameter dtype given to ``model.init``.

    Returns:
      A ``TrainState`` whose every leaf is a ``jax.ShapeDtypeStruct`` (shape and dtype only).

    Raises:
      LayerError: ``input_shape`` does not fit the model (raised by ``model.init`` while tracing).

    Example:
      >>> like = nnjax.abstract_train_state(nnjax.Dense(2), optax.adam(1e-3), (3,))
      >>> jax.tree.map(lambda a: (a.shape, str(a.dtype)), like.params)
      {'b': ((2,), 'float32'), 'w': ((3, 2), 'float32')}
      >>> type(like.step).__name__
      'ShapeDtypeStruct'
    """
    # The key is made inside the trace: made outside, it is two small programs to compile.
    return jax.eval_shape(
        lambda seed: init_train_state(model, optimizer, jax.random.key(seed), input_shape, dtype), np.int32(0)
    )


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _dtype_name(leaf: Any) -> str:
    return str(leaf.dtype) if hasattr(leaf, "dtype") else str(np.result_type(leaf))


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": x} -> {"a": {"b": x}}``: the tree Orbax stores (plain dicts, whatever the pytree types)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, last = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def _unnest(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_unnest(value, path + "/"))
        else:
            flat[path] = value
    return flat


def _flatten(tree: PyTree, where: str) -> tuple[list[str], list[Any], Any]:
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [leaf_path(path) or "<root>" for path, _ in pairs]
    if len(set(paths)) != len(paths):
        raise CheckpointError(
            f"{where}: the train state has leaves whose paths collide after joining with '/': {paths}."
        )
    return paths, [leaf for _, leaf in pairs], treedef


def _crc32(array: Any) -> int | None:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return None  # each host holds only its shards; Orbax writes them, we cannot checksum the whole here
    return zlib.crc32(np.ascontiguousarray(jax.device_get(array)).view(np.uint8).reshape(-1))


def _json_ready(where: str, argument: str, value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{where}: argument `{argument}` expected JSON-serializable values (dicts, lists, str, numbers), "
            f"given {value!r}: {error}."
        ) from None
    return value


def save_checkpoint(
    directory: str | os.PathLike,
    train_state: TrainState,
    *,
    metrics: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    keep: int | None = 3,
    best_metric: str | None = None,
    best_mode: str = "min",
    overwrite: bool = False,
) -> str:
    """Saves ``train_state`` as checkpoint ``<directory>/<train_state.step>``; returns that path.

    ``fit(..., checkpoint_dir=...)`` calls it after every ``checkpoint_every`` epochs; call it yourself
    from a custom loop. The write is atomic and synchronous (the checkpoint is complete on return), under
    the directory's one-writer lock (``checkpoint_lock``). The JSON record carries a SHA-256 checksum.

    Args:
      directory: where checkpoints of this run live (created if missing; relative paths and ``~`` are fine).
      train_state: the whole state; every process calls this with its (possibly sharded) arrays. A stacked
        state (``fit_many``'s, one step count per model) is saved under its first model's step.
      metrics: name -> number for this step (e.g. the epoch's logs); stored in the record.
      config: any JSON-serializable description of the run (hyperparameters); stored in the record.
      keep: how many of the newest checkpoints to keep (``None``: all). Older ones are deleted after
        this save, except the best one when ``best_metric`` is given.
      best_metric: a key of ``metrics``; the checkpoint with its best value is kept too.
      best_mode: ``"min"`` (e.g. a loss) or ``"max"`` (e.g. an accuracy).
      overwrite: replace a checkpoint already saved at this step (and delete any newer ones, which
        belong to a run that this one supersedes). Without it, an existing step raises.

    Returns:
      The absolute path of the new checkpoint directory, ``<directory>/<step>`` (a ``str``).

    Raises:
      NonFiniteError: a floating leaf holds NaN or Inf (a non-finite state never reaches disk).
      CheckpointError: the step is already saved (without ``overwrite``), or two leaves' paths collide.
      CheckpointWriteError: the files cannot be written; ``CheckpointDiskFullError`` (disk or quota full),
        ``CheckpointPermissionError`` (permissions, read-only mount) or the I/O error's own words. The
        message names the directory, the step and the cause; the failed save's temporary files are
        removed, and the checkpoints saved before are left restorable.
      CheckpointLockedError: another process is writing checkpoints to ``directory`` (see
        ``checkpoint_lock``); nothing was written.
      ValueError: a ``keep`` that is not a positive int or None, an unknown ``best_mode``, or a
        ``best_metric`` missing from ``metrics`` (or not finite there).
      TypeError: ``directory`` is not a path, or ``config`` is not JSON-serializable.

    Example:
      >>> import os, tempfile
      >>> train_state = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     path = nnjax.save_checkpoint(tmp, train_state, metrics={"val_loss": 0.5}, config={"lr": 0.1})
      ...     os.path.relpath(path, tmp), nnjax.checkpoint_steps(tmp)
      ('0', [0])
    """
    where = "save_checkpoint"
    path = _directory(directory, where)
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
        raise ValueError(f"{where}: argument `keep` expected a positive int or None, given {keep!r}.")
    if best_mode not in ("min", "max"):
        raise ValueError(f"{where}: argument `best_mode` expected 'min' or 'max', given {best_mode!r}.")
    metrics = {name: float(np.asarray(value)) for name, value in (metrics or {}).items()}
    if best_metric is not None and not math.isfinite(metrics.get(best_metric, math.nan)):
        given = metrics.get(best_metric, "nothing")
        raise ValueError(
            f"{where}: argument `best_metric` {best_metric!r} expected a finite value in `metrics`, given {given} "
            f"(metrics: {sorted(metrics)})."
        )
    config = _json_ready(where, "config", dict(config or {}))
    step = int(np.asarray(train_state.step).reshape(-1)[0])  # a stacked state (fit_many): its models' common step

    bad = first_nonfinite(train_state)
    if bad is not None:
        raise NonFiniteError(
            f"{where}: refusing to save step {step} to {path}: leaf {bad} holds NaN or Inf. "
            "Hint: train with nonfinite='skip' or 'halt' to stop non-finite updates.",
            step=step,
            leaf=bad,
        )

    paths, leaves, _ = _flatten(train_state, where)
    arrays, record_leaves = {}, {}
    for name, leaf in zip(paths, leaves, strict=True):
        entry: dict[str, Any] = {"shape": list(np.shape(leaf)), "dtype": _dtype_name(leaf)}
        if _is_key(leaf):
            entry["key_impl"] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        elif not isinstance(leaf, jax.Array):
            leaf = np.asarray(leaf)
        entry["crc32"] = _crc32(leaf)
        arrays[name], record_leaves[name] = leaf, entry
    record = {
        "format": FORMAT,
        "nnjax_version": _nnjax_version(),
        "step": step,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "metrics": metrics,
        "leaves": record_leaves,
    }

    record["checksum"] = _record_checksum(record)

    with checkpoint_lock(path, where=where, step=step):
        threads = set(threading.enumerate())
        try:
            with _manager(path, keep=keep, best_metric=best_metric, best_mode=best_mode) as manager:
                existing = [s for s in manager.all_steps() if s >= step]
                if existing and not overwrite:
                    raise CheckpointError(
                        f"{where}: {path} already holds a checkpoint at step {step}"
                        + (f" (and newer: {existing[1:]})" if len(existing) > 1 else "")
                        + ". Pass overwrite=True to replace it, or restore it with restore_checkpoint."
                    )
                for old in existing:
                    manager.delete(old)
                ocp = _orbax()
                manager.save(
                    step,
                    args=ocp.args.Composite(
                        **{_STATE: ocp.args.StandardSave(_nest(arrays)), _RECORD: ocp.args.JsonSave(record)}
                    ),
                    metrics=metrics if best_metric is not None else None,
                    force=True,
                )
                manager.wait_until_finished()
        except CheckpointError:
            raise
        except Exception as error:  # noqa: BLE001 - OSError, tensorstore's ValueErrors, Orbax's own: all a failed write
            _remove_partial(path, step, threads)
            raise _write_error(where, path, step, error, "while writing its files") from error
    return os.path.join(path, str(step))


def _expected(like: PyTree, where: str) -> tuple[list[str], list[Any], Any, dict[str, dict[str, Any]]]:
    paths, leaves, treedef = _flatten(like, where)
    expected = {}
    for name, leaf in zip(paths, leaves, strict=True):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            leaf = np.asarray(leaf)
        expected[name] = {"shape": list(leaf.shape), "dtype": _dtype_name(leaf)}
    return paths, leaves, treedef, expected


def _describe(entry: Mapping[str, Any]) -> str:
    return f"{tuple(entry['shape'])} {entry['dtype']}"


def _check_leaves(where: str, path: str, step: int, expected: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    problems = []
    for name, want in expected.items():
        have = found.get(name)
        if have is None:
            problems.append(f"  {name}: expected {_describe(want)}, missing from the checkpoint")
        elif (list(have["shape"]), have["dtype"]) != (list(want["shape"]), want["dtype"]):
            problems.append(f"  {name}: expected {_describe(want)}, found {_describe(have)}")
    for name in found:
        if name not in expected:
            problems.append(f"  {name}: not in the model, found {_describe(found[name])}")
    if problems:
        hint = (
            "restore into the train state of the model and optimizer that saved it "
            "(`like=abstract_train_state(model, optimizer, input_shape)`)."
        )
        saved_stacked, model_stacked = _stacked(found), _stacked(expected)
        if saved_stacked != model_stacked:
            saved, model = ("a stacked", "unrolled") if saved_stacked else ("an unrolled", "stacked")
            hint = (
                f"the checkpoint holds {saved} model (nnjax.stack keeps its copies under 'layers') and the "
                f"model is {model}: build the model as it was saved (the zoo's GPT and ViT: "
                f"scan_layers={saved_stacked}), or {hint}"
            )
        raise CheckpointMismatchError(
            f"{where}: checkpoint step {step} in {path} does not fit the model: {len(problems)} leaves differ:\n"
            + "\n".join(problems)
            + f"\nHint: {hint}"
        )


def _stacked(names: Any) -> bool:
    """True when some leaf lies under a ``"layers"`` key: the stacked copies of ``nnjax.stack``."""
    return any("layers" in name.split("/") for name in names)


def _target(leaf: Any, entry: Mapping[str, Any]) -> jax.ShapeDtypeStruct:
    """The abstract array Orbax restores into, placed like ``leaf`` when ``leaf`` says where."""
    sharding = getattr(leaf, "sharding", None)
    if _is_key(leaf):
        shape, dtype = (
            jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)).shape,
            jnp.uint32,
        )
        if isinstance(sharding, jax.sharding.NamedSharding):
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        elif sharding is not None and not isinstance(sharding, jax.sharding.SingleDeviceSharding):
            sharding = None
    else:
        shape, dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _restore_step(
    manager: ocp.CheckpointManager, path: str, step: int, like: PyTree, where: str
) -> tuple[PyTree, dict]:
    ocp = _orbax()
    try:
        record = manager.restore(step, args=ocp.args.Composite(**{_RECORD: ocp.args.JsonRestore()}))[_RECORD]
    except Exception as error:  # noqa: BLE001 - any failure to read the record means a broken checkpoint
        cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise CheckpointCorruptError(
            f"{where}: checkpoint step {step} in {path}: its record cannot be read ({type(error).__name__}: {cause})."
        ) from error
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("leaves"), dict):
        raise CheckpointCorruptError(
            f"{where}: checkpoint step {step} in {path}: its record is not an nnjax checkpoint record ({FORMAT})."
        )
    if record.get("checksum") != _record_checksum(record):
        raise CheckpointCorruptError(
            f"{where}: checkpoint step {step} in {path}: its record ({_RECORD}/metadata) fails its checksum "
            "(the file was changed or damaged after saving)."
        )

    paths, leaves, treedef, expected = _expected(like, where)
    _check_leaves(where, path, step, expected, record["leaves"])
    targets = {name: _target(leaf, record["leaves"][name]) for name, leaf in zip(paths, leaves, strict=True)}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(_nest(targets))}))[
            _STATE
        ]
        arrays = _unnest(restored)
        missing = set(paths) - set(arrays)
        if missing:
            raise KeyError(f"arrays {sorted(missing)} not found")
    except Exception as error:  # noqa: BLE001 - tensorstore/OCDBT read errors have many types
        cause = str(error).split("See full TensorStore details")[0].strip().splitlines()[0][:300] if str(error) else ""
        raise CheckpointCorruptError(
            f"{where}: checkpoint step {step} in {path}: its arrays cannot be read, the files are truncated or damaged "
            f"({type(error).__name__}: {cause})."
        ) from error
    out = []
    for name in paths:
        array, entry = arrays[name], record["leaves"][name]
        crc = entry.get("crc32")
        if crc is not None and _crc32(array) != crc:
            raise CheckpointCorruptError(
                f"{where}: checkpoint step {step} in {path}: leaf {name} fails its CRC-32 check "
                "(the file was changed or truncated after saving)."
            )
        if "key_impl" in entry:
            array = jax.random.wrap_key_data(array, impl=entry["key_impl"])
        out.append(array)
    info = {k: record.get(k) for k in ("step", "nnjax_version", "saved_at", "config", "metrics")}
    return jax.tree_util.tree_unflatten(treedef, out), info


def restore_checkpoint(
    directory: str | os.PathLike, like: PyTree, *, step: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Restores a checkpoint into the structure of ``like``; returns ``(train_state, info)``.

    Args:
      directory: the directory given to ``save_checkpoint``.
      like: a train state of the same model and optimizer, concrete or abstract, e.g.
        ``abstract_train_state(model, optimizer, input_shape)``; its leaves' shardings (when given)
        place the restored arrays; otherwise they go to the first local device.
      step: the step to restore; default: the newest checkpoint that reads back intact.

    Returns:
      ``(train_state, info)``, ``info`` holding ``step``, ``nnjax_version``, ``saved_at``, ``config``
      and ``metrics`` as saved.

    Raises:
      CheckpointNotFoundError: no complete checkpoint (or none at ``step``) in ``directory``.
      CheckpointMismatchError: the checkpoint's leaves differ from ``like``'s (all are listed).
      CheckpointCorruptError: ``step`` was given and it is incomplete, unreadable, or fails its checksums
        (the arrays' CRC-32s or the JSON record's SHA-256); or, with
        ``step=None``, every checkpoint is. (With ``step=None`` a corrupt newest checkpoint only warns,
        ``RuntimeWarning``, and the next older one is tried.)
      TypeError: ``directory`` is not a path.

    Example:
      >>> import tempfile
      >>> model, opt = nnjax.Dense(2), optax.sgd(0.1)
      >>> train_state = nnjax.init_train_state(model, opt, jax.random.key(0), (3,))
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     path = nnjax.save_checkpoint(tmp, train_state, metrics={"val_loss": 0.5}, config={"lr": 0.1})
      ...     like = nnjax.abstract_train_state(model, opt, (3,))
      ...     restored, info = nnjax.restore_checkpoint(tmp, like)
      >>> info["step"], info["metrics"], info["config"]
      (0, {'val_loss': 0.5}, {'lr': 0.1})
      >>> bool(jnp.array_equal(restored.params["w"], train_state.params["w"]))
      True
    """
    where = "restore_checkpoint"
    path = _directory(directory, where)
    listed = _all_steps(path)
    steps = [s for s in listed if _is_complete(path, s)]
    incomplete = [s for s in listed if s not in steps]
    if step is not None and step in incomplete:
        raise CheckpointCorruptError(
            f"{where}: checkpoint step {step} in {path} is incomplete (its record or array metadata is missing); "
            f"complete checkpoints: {steps}."
        )
    if not steps:
        raise CheckpointNotFoundError(
            f"{where}: no complete checkpoint in {path}"
            + (f" (incomplete steps: {incomplete})." if incomplete else ".")
        )
    if step is not None and step not in steps:
        raise CheckpointNotFoundError(
            f"{where}: no checkpoint at step {step} in {path}; complete checkpoints: {steps}."
        )
    newer = [s for s in incomplete if s > steps[-1]]
    if step is None and newer:
        warnings.warn(
            f"{where}: checkpoint steps {newer} in {path} are incomplete (a record or the array metadata is missing). "
            f"Falling back to the previous checkpoint, step {steps[-1]}.",
            RuntimeWarning,
            stacklevel=2,
        )
    failures = []
    with _manager(path, read_only=True) as manager:
        for candidate in [step] if step is not None else steps[::-1]:
            try:
                return _restore_step(manager, path, candidate, like, where)
            except CheckpointCorruptError as error:
                if step is not None:
                    raise
                failures.append(str(error))
                if candidate != steps[0]:
                    warnings.warn(f"{error} Falling back to the previous checkpoint.", RuntimeWarning, stacklevel=2)
    raise CheckpointCorruptError(f"{where}: every checkpoint in {path} is unreadable:\n" + "\n".join(failures))
