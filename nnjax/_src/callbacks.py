"""Callbacks for ``fit``: metric writers, early stopping, best-model tracking, learning-rate logging.

A callback is any function ``(epoch, train_state, logs) -> stop?`` that ``fit`` calls on the host after
each epoch, with ``logs`` the epoch's metrics as Python floats (``{"loss": ..., "val_loss": ...}``);
returning True stops training. The classes here are such callables with a little memory::

    csv = CSVLogger("runs/metrics.csv")
    stop = EarlyStopping(monitor="val_loss", patience=5)
    best = BestModel(monitor="val_accuracy", mode="max")
    result = fit(model, loss, opt, x, y, validation_data=(xv, yv), callbacks=[csv, stop, best])
    best.train_state  # a host copy of the state at the best epoch

The train state passed to a callback is donated to the next epoch's compiled program: a callback that
keeps it must copy it (``BestModel`` does, with ``host_copy``). With ``fit(..., fused="all")`` the
whole run is one program, so callbacks run afterwards and all see the final state.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src.step_stats import find_hyperparams
from nnjax._src.types import PyTree

Logs = dict[str, float]


def host_copy(tree: PyTree) -> PyTree:
    """A copy of a pytree that survives donation: NumPy arrays on the host (PRNG keys copied on device).

    ``fit`` donates the train state to the next epoch's compiled program, which deletes the arrays a
    callback was given; a callback that keeps the state must keep a ``host_copy`` (``BestModel`` does).

    Args:
      tree: any pytree of arrays, e.g. a ``TrainState``.

    Returns:
      A pytree of the same structure: every leaf a new ``np.ndarray`` on the host, except typed PRNG key
      arrays, which NumPy cannot hold: those are new key arrays on their device.

    Example:
      >>> tree = {"w": jnp.ones((2, 3)), "key": jax.random.key(0)}
      >>> kept = nnjax.callbacks.host_copy(tree)   # safe to keep after `tree` is donated to the next step
      >>> type(kept["w"]).__name__, kept["w"].shape
      ('ndarray', (2, 3))
      >>> bool((jax.random.key_data(kept["key"]) == jax.random.key_data(tree["key"])).all())
      True
    """

    def copy(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jnp.array(leaf, copy=True)
        return np.array(jax.device_get(leaf), copy=True)

    return jax.tree.map(copy, tree)


def _row(epoch: int, logs: Mapping[str, Any]) -> dict[str, Any]:
    return {"epoch": epoch, **{k: _plain(v) for k, v in logs.items()}}


def _plain(value: Any) -> Any:
    """A JSON/CSV-friendly value: float for scalars, list for arrays (e.g. an ensemble's losses)."""
    array = np.asarray(value)
    if array.ndim == 0:
        return array.item()
    return array.tolist()


class CSVLogger:
    """Writes one CSV row per epoch: ``epoch`` and every metric in ``logs``; flushed after each epoch.

    The columns are those of the first epoch; a metric that appears later rewrites the file with the
    wider header (earlier rows get empty cells).

    Pass it to ``fit(..., callbacks=[CSVLogger(path)])``; ``fit`` calls it after each epoch as
    ``logger(epoch, train_state, logs)``, and it returns False (it never stops training).

    Args:
      path: the CSV file; its folder is created.
      append: keep an existing file's rows (e.g. when resuming); otherwise the file is replaced on the
        first epoch.

    Attributes:
      path: the file, as a string.
      rows: the rows written so far (one dict per epoch; with ``append``, the file's earlier rows first).
      columns: the header: ``epoch``, then the metrics in the order they first appeared.

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     logger = nnjax.callbacks.CSVLogger(os.path.join(tmp, "runs", "metrics.csv"))
      ...     for epoch, loss in enumerate([0.9, 0.5]):
      ...         stop = logger(epoch, None, {"loss": loss})   # what fit does after each epoch
      ...     with open(logger.path) as f:
      ...         print(f.read().strip())
      epoch,loss
      0,0.9
      1,0.5
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path = os.fspath(path)
        self.append = append
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        self._started = False

    def _load_existing(self) -> None:
        if self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = list(reader)

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def __call__(self, epoch: int, train_state: Any, logs: Logs) -> bool:
        if not self._started:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._load_existing()
            self._started = True
        row = _row(epoch, logs)
        new_columns = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new_columns or not os.path.exists(self.path):
            self.columns += new_columns
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
        return False


class JSONLLogger:
    """Writes one JSON object per line and per epoch: ``{"epoch": 0, "loss": ..., ...}``; flushed each epoch.

    Pass it to ``fit(..., callbacks=[JSONLLogger(path)])``; calling it returns False (it never stops
    training). Array-valued metrics (an ensemble's losses) are written as lists, NaN as ``NaN``.

    Args:
      path: the ``.jsonl`` file; its folder is created.
      append: keep an existing file's lines; otherwise the file is replaced on the first epoch.

    Attributes:
      path: the file, as a string.

    Example:
      >>> import json, os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     logger = nnjax.callbacks.JSONLLogger(os.path.join(tmp, "metrics.jsonl"))
      ...     for epoch, loss in enumerate([0.9, 0.5]):
      ...         stop = logger(epoch, None, {"loss": loss, "val_loss": loss + 0.25})
      ...     with open(logger.path) as f:
      ...         [json.loads(line) for line in f]
      [{'epoch': 0, 'loss': 0.9, 'val_loss': 1.15}, {'epoch': 1, 'loss': 0.5, 'val_loss': 0.75}]
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path = os.fspath(path)
        self.append = append
        self._started = False

    def __call__(self, epoch: int, train_state: Any, logs: Logs) -> bool:
        mode = "a"
        if not self._started:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            mode = "a" if self.append else "w"
            self._started = True
        with open(self.path, mode) as f:
            f.write(json.dumps(_row(epoch, logs), allow_nan=True) + "\n")
        return False


class TensorBoardLogger:
    """Writes every metric as a TensorBoard scalar (step = epoch) through ``tensorboardX``.

    ``tensorboardX`` is an optional dependency: ``pip install 'nnjax[tensorboard]'``.
    View with ``tensorboard --logdir LOGDIR``.

    Array-valued metrics (an ensemble's) become one curve per member, ``name/0``, ``name/1``, ...
    Calling it returns False (it never stops training); ``close()`` closes the writer.

    Args:
      logdir: the run's folder.
      step: ``"epoch"`` (x axis in epochs) or ``"step"`` (x axis in optimizer updates, ``train_state.step``).

    Attributes:
      logdir: the folder, as a string. step: the x axis. writer: the ``tensorboardX.SummaryWriter``.

    Raises:
      ImportError: tensorboardX is not installed.
      ValueError: ``step`` is neither ``"epoch"`` nor ``"step"``.

    Example:
      >>> import importlib.util, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     if importlib.util.find_spec("tensorboardX"):   # the optional dependency
      ...         logger = nnjax.callbacks.TensorBoardLogger(tmp)
      ...         stop = logger(0, None, {"loss": 0.5})   # fit(..., callbacks=[logger]) does this each epoch
      ...         logger.close()
      ...     else:
      ...         stop = False
      >>> stop
      False
    """

    def __init__(self, logdir: str | os.PathLike, *, step: str = "epoch"):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "TensorBoardLogger needs the optional package tensorboardX: pip install 'nnjax[tensorboard]' "
                "(or pip install tensorboardX)."
            ) from error
        if step not in ("epoch", "step"):
            raise ValueError(f"TensorBoardLogger: argument `step` expected 'epoch' or 'step', given {step!r}.")
        self.logdir = os.fspath(logdir)
        self.step = step
        self.writer = SummaryWriter(self.logdir)

    def __call__(self, epoch: int, train_state: Any, logs: Logs) -> bool:
        x = epoch if self.step == "epoch" else int(np.max(jax.device_get(train_state.step)))
        for name, value in logs.items():
            array = np.asarray(value, np.float64)
            if array.ndim == 0:
                self.writer.add_scalar(name, float(array), x)
            else:  # one curve per ensemble member
                for i, v in enumerate(array.reshape(-1)):
                    self.writer.add_scalar(f"{name}/{i}", float(v), x)
        self.writer.flush()
        return False

    def close(self) -> None:
        self.writer.close()


def _check_monitor(who: str, mode: str, monitor: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"{who}: argument `mode` expected 'min' or 'max', given {mode!r}.")
    if not isinstance(monitor, str):
        raise TypeError(f"{who}: argument `monitor` expected a metric name (str), given {type(monitor).__name__}.")


def _monitored(who: str, monitor: str, logs: Logs) -> float:
    if monitor not in logs:
        hint = " Hint: pass validation_data to fit to get val_* metrics." if monitor.startswith("val_") else ""
        raise KeyError(f"{who}: monitored metric {monitor!r} is not in the logs; available: {sorted(logs)}.{hint}")
    value = np.asarray(logs[monitor], np.float64)
    if value.ndim != 0:
        raise ValueError(f"{who}: monitored metric {monitor!r} must be a scalar, given shape {value.shape}.")
    return float(value)


class _Tracker:
    """Remembers the best value of one metric."""

    def __init__(self, who: str, monitor: str, mode: str, min_delta: float):
        _check_monitor(who, mode, monitor)
        if min_delta < 0:
            raise ValueError(f"{who}: argument `min_delta` expected a non-negative number, given {min_delta!r}.")
        self.who, self.monitor, self.mode, self.min_delta = who, monitor, mode, float(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Tracker):
    """Stops training after ``patience`` epochs in a row in which ``monitor`` did not improve by ``min_delta``.

    Pass it to ``fit(..., callbacks=[EarlyStopping(...)])``: calling it returns True to stop training.
    A NaN value never counts as an improvement.

    Args:
      monitor: a key of the logs, e.g. ``"val_loss"`` or ``"val_accuracy"``.
      patience: epochs in a row without improvement after which training stops (at least 1).
      mode: ``"min"`` (lower is better, losses) or ``"max"`` (higher is better, accuracies).
      min_delta: the smallest change that counts as an improvement (at least 0).

    Attributes:
      best, best_epoch: the best value seen and its epoch (``inf``/``-inf`` and None before the first).
      stopped_epoch: the epoch training stopped after (None if it did not).
      wait: epochs since the last improvement.

    Raises:
      ValueError: an unknown ``mode``, a ``patience`` below 1 or a negative ``min_delta``; when called,
        a monitored metric that is not a scalar (e.g. an ensemble's per-member losses).
      TypeError: ``monitor`` is not a string.
      KeyError: when called, ``monitor`` is not among the logged metrics.

    Example:
      >>> stop = nnjax.callbacks.EarlyStopping("val_loss", patience=2)
      >>> [stop(epoch, None, {"val_loss": v}) for epoch, v in enumerate([1.0, 0.8, 0.9, 0.85])]
      [False, False, False, True]
      >>> stop.best, stop.best_epoch, stop.stopped_epoch
      (0.8, 1, 3)
    """

    def __init__(self, monitor: str = "val_loss", *, patience: int = 5, mode: str = "min", min_delta: float = 0.0):
        super().__init__("EarlyStopping", monitor, mode, min_delta)
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: argument `patience` expected a positive int, given {patience!r}.")
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    def __call__(self, epoch: int, train_state: Any, logs: Logs) -> bool:
        value = _monitored(self.who, self.monitor, logs)
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False


class BestModel(_Tracker):
    """Keeps a host copy of the train state at the epoch where ``monitor`` was best.

    Pass it to ``fit(..., callbacks=[BestModel(...)])``; calling it returns False (it never stops
    training). The copy is made with ``host_copy``, so it survives the donation of the state.

    Args:
      monitor, mode, min_delta: as for ``EarlyStopping``.

    Attributes:
      train_state: the best state (NumPy arrays; usable with ``predict``/``evaluate``), None before the
        first improvement. best, best_epoch: the best value and its epoch.

    Raises:
      ValueError, TypeError, KeyError: as for ``EarlyStopping``.

    Example:
      >>> best = nnjax.callbacks.BestModel("val_accuracy", mode="max")
      >>> for epoch, accuracy in enumerate([0.7, 0.9, 0.8]):
      ...     stop = best(epoch, {"w": jnp.full((2,), float(epoch))}, {"val_accuracy": accuracy})
      >>> best.best, best.best_epoch, best.train_state["w"].tolist()
      (0.9, 1, [1.0, 1.0])
    """

    def __init__(self, monitor: str = "val_loss", *, mode: str = "min", min_delta: float = 0.0):
        super().__init__("BestModel", monitor, mode, min_delta)
        self.train_state: Any = None

    def __call__(self, epoch: int, train_state: Any, logs: Logs) -> bool:
        value = _monitored(self.who, self.monitor, logs)
        if self.improved(value):
            self.best, self.best_epoch = value, epoch
            self.train_state = host_copy(train_state)
        return False


class LearningRateLogger:
    """Records the learning rate of an ``optax.inject_hyperparams`` optimizer after each epoch.

    The value is the one the epoch's last update used (with a schedule: ``schedule(step - 1)``).

    It also adds ``logs[name]`` so the writers listed AFTER it in ``callbacks`` record the rate too
    (``fit``'s returned history is unchanged), e.g.
    ``fit(model, loss, opt, x, y, callbacks=[LearningRateLogger(), CSVLogger("m.csv")])``. Calling it
    returns False (it never stops training).

    Args:
      name: the key it adds to ``logs``.
      hyperparam: the injected hyperparameter to read from ``train_state.opt_state``.

    Attributes:
      epochs, values: the epochs seen and the value after each (a float, or a list for an ensemble).

    Raises:
      ValueError: when called, the optimizer state holds no injected hyperparameter ``hyperparam``.

    Example:
      >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.25)
      >>> train_state = nnjax.init_train_state(nnjax.Dense(2), opt, jax.random.key(0), (3,))
      >>> lr, logs = nnjax.callbacks.LearningRateLogger(), {"loss": 0.5}
      >>> lr(0, train_state, logs), lr.values, logs
      (False, [0.25], {'loss': 0.5, 'learning_rate': 0.25})
    """

    def __init__(self, name: str = "learning_rate", *, hyperparam: str = "learning_rate"):
        self.name, self.hyperparam = name, hyperparam
        self.epochs: list[int] = []
        self.values: list[Any] = []

    def __call__(self, epoch: int, train_state: Any, logs: Logs) -> bool:
        hyperparams = find_hyperparams(train_state.opt_state)
        if hyperparams is None or self.hyperparam not in hyperparams:
            raise ValueError(
                f"LearningRateLogger: no injected hyperparameter {self.hyperparam!r} in the optimizer state. Hint: "
                f"build the optimizer with optax.inject_hyperparams, e.g. "
                f"optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
            )
        value = _plain(jax.device_get(hyperparams[self.hyperparam]))
        self.epochs.append(epoch)
        self.values.append(value)
        logs[self.name] = value
        return False
