"""In-memory data helpers: train/test split, shuffled mini-batches, feature scaling fitted on train only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from nnjax._src.errors import check_same_leading


def _check_examples(where: str, **arrays: Any) -> None:
    """Same number of examples in each array, and at least one."""
    check_same_leading(where, **arrays)
    for name, a in arrays.items():
        if np.ndim(a) == 0 or np.shape(a)[0] == 0:
            raise ValueError(f"{where}: argument `{name}` expected at least one example (shape (n, ...), n >= 1), given shape {np.shape(a)}.")


def _check_finite(where: str, name: str, x: np.ndarray) -> None:
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
        raise ValueError(f"{where}: argument `{name}` holds {int((~np.isfinite(x)).sum())} NaN or Inf values (shape {x.shape}).")


def train_test_split(
    x: Any, y: Any, *, test_fraction: float = 0.2, seed: int = 0, stratify: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffles and splits ``(x, y)`` into ``(x_train, y_train, x_test, y_test)``.

    The test part holds ``round(test_fraction * n)`` examples (with ``stratify``, that many of each
    class, rounded per class).

    Args:
      x: ``(n, ...)`` inputs (any array-like).
      y: ``(n, ...)`` targets, the same ``n``; ``(n,)`` integer class labels when ``stratify``.
      test_fraction: share of examples held out, in (0, 1).
      seed: seeds the shuffle (NumPy's ``default_rng``).
      stratify: keep each class's share equal in both parts (``y`` must hold class labels).

    Returns:
      ``(x_train, y_train, x_test, y_test)``, NumPy arrays: ``x_train (n - n_test, ...)``,
      ``x_test (n_test, ...)``, and ``y`` likewise, both parts in shuffled order.

    Raises:
      ValueError: ``x`` and ``y`` differ in length or are empty, ``test_fraction`` is not in (0, 1), or
        a part would be empty.
      TypeError: ``stratify=True`` with non-integer ``y``.

    Example:
      >>> x, y = np.arange(20).reshape(10, 2), np.arange(10) % 2
      >>> x_train, y_train, x_test, y_test = nnjax.data.train_test_split(x, y, test_fraction=0.2, stratify=True)
      >>> x_train.shape, x_test.shape, np.bincount(y_test).tolist()
      ((8, 2), (2, 2), [1, 1])
    """
    _check_examples("train_test_split", x=x, y=y)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"train_test_split: argument `test_fraction` expected a value in (0, 1), given {test_fraction!r}.")
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    if stratify and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"train_test_split: argument `y` expected integer class labels with stratify=True, given dtype {y.dtype}.")
    if stratify:
        test = []
        for label in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == label))
            test.append(members[: int(round(test_fraction * members.size))])
        test_idx = np.sort(np.concatenate(test))
        train_idx = rng.permutation(np.setdiff1d(np.arange(len(y)), test_idx))
        test_idx = rng.permutation(test_idx)
    else:
        order = rng.permutation(len(y))
        n_test = int(round(test_fraction * len(y)))
        test_idx, train_idx = order[:n_test], order[n_test:]
    if train_idx.size == 0 or test_idx.size == 0:
        raise ValueError(f"train_test_split: {len(y)} examples with test_fraction {test_fraction} leave one part empty.")
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def batches(x: Any, y: Any, batch_size: int, *, seed: int | None = 0, drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(x_batch, y_batch)`` mini-batches, shuffled by ``seed`` (``None``: in order).

    A generator: one pass over the data (call it again for the next epoch, e.g. with ``seed=epoch``).
    Its arguments are checked when the first batch is asked for, not when it is called.

    Args:
      x: ``(n, ...)`` inputs.
      y: ``(n, ...)`` targets, the same ``n``.
      batch_size: examples per batch, a positive int.
      seed: seeds the shuffle (NumPy's ``default_rng``); None keeps the order.
      drop_last: drop the last batch when it is smaller than ``batch_size``.

    Yields:
      ``(x_batch, y_batch)``: NumPy arrays ``(batch_size, ...)``; the last one smaller unless ``drop_last``.

    Raises:
      ValueError: ``x`` and ``y`` differ in length or are empty, or ``batch_size`` is not a positive int.

    Example:
      >>> x, y = np.arange(10).reshape(5, 2), np.arange(5)
      >>> [y_batch.tolist() for _, y_batch in nnjax.data.batches(x, y, 2, seed=None)]
      [[0, 1], [2, 3], [4]]
      >>> [x_batch.shape for x_batch, _ in nnjax.data.batches(x, y, 2, drop_last=True)]
      [(2, 2), (2, 2)]
    """
    _check_examples("batches", x=x, y=y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batches: argument `batch_size` expected a positive int, given {batch_size!r}.")
    n = np.shape(x)[0]
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield np.asarray(x)[idx], np.asarray(y)[idx]


class Scaler(NamedTuple):
    """An affine feature scaling ``(x - shift) / scale``, fitted on training data only.

    Fit it with ``standardizer`` or ``min_max_scaler`` on the training inputs, then apply the same
    scaling to training, validation and test inputs with ``transform``. ``inverse`` undoes it (e.g. for
    predictions of a scaled target).

    Attributes:
      shift: ``(...)`` per-feature offset (one example's shape; float64 from ``standardizer`` and
        ``min_max_scaler``).
      scale: ``(...)`` per-feature divisor, positive (1 where the training feature was constant).

    Example:
      >>> scaler = nnjax.data.Scaler(shift=np.array([1.0, 20.0]), scale=np.array([1.0, 10.0]))
      >>> scaler.transform([[1.0, 40.0], [3.0, 20.0]]).tolist()   # float32
      [[0.0, 2.0], [2.0, 0.0]]
      >>> scaler.inverse([[0.0, 2.0]]).tolist()
      [[1.0, 40.0]]
    """

    shift: np.ndarray
    scale: np.ndarray

    def transform(self, x: Any) -> np.ndarray:
        """``(x - shift) / scale`` as float32 for ``x: (n, ...)`` of the fitted shape; raises ValueError otherwise."""
        x = np.asarray(x)
        if x.shape[1:] != self.shift.shape:
            raise ValueError(
                f"Scaler.transform: argument `x` expected shape (n, {', '.join(map(str, self.shift.shape))}) like the data "
                f"it was fitted on, given {x.shape}."
            )
        return ((x - self.shift) / self.scale).astype(np.float32)

    def inverse(self, x: Any) -> np.ndarray:
        """``x * scale + shift``: undoes ``transform`` (float64 result, no shape check)."""
        return np.asarray(x) * self.scale + self.shift


def _safe(scale: np.ndarray) -> np.ndarray:
    return np.where(scale > 0, scale, 1.0)


def standardizer(x_train: Any) -> Scaler:
    """Fits per-feature standardization (zero mean, unit variance) on ``x_train: (n, ...)``.

    Args:
      x_train: ``(n, ...)`` training inputs, finite; each position of one example is a feature.

    Returns:
      A ``Scaler`` with ``shift`` the mean and ``scale`` the (population) standard deviation of each
      feature, both of one example's shape; a constant feature gets scale 1.

    Raises:
      ValueError: ``x_train`` is empty or a scalar, or holds NaN or Inf.

    Example:
      >>> x_train = np.array([[0.0, 10.0], [2.0, 30.0]])
      >>> scaler = nnjax.data.standardizer(x_train)
      >>> scaler.shift.tolist(), scaler.scale.tolist()
      ([1.0, 20.0], [1.0, 10.0])
      >>> scaler.transform(x_train).tolist()
      [[-1.0, -1.0], [1.0, 1.0]]
    """
    _check_examples("standardizer", x_train=x_train)
    x_train = np.asarray(x_train, np.float64)
    _check_finite("standardizer", "x_train", x_train)
    return Scaler(x_train.mean(axis=0), _safe(x_train.std(axis=0)))


def min_max_scaler(x_train: Any) -> Scaler:
    """Fits per-feature normalization to [0, 1] on ``x_train: (n, ...)``.

    Args:
      x_train: ``(n, ...)`` training inputs, finite; each position of one example is a feature.

    Returns:
      A ``Scaler`` with ``shift`` the minimum and ``scale`` the range (max - min) of each feature, both
      of one example's shape; a constant feature gets scale 1. Other data may map outside [0, 1].

    Raises:
      ValueError: ``x_train`` is empty or a scalar, or holds NaN or Inf.

    Example:
      >>> x_train = np.array([[0.0, 10.0], [2.0, 30.0], [1.0, 20.0]])
      >>> scaler = nnjax.data.min_max_scaler(x_train)
      >>> scaler.transform(x_train).tolist()
      [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]
    """
    _check_examples("min_max_scaler", x_train=x_train)
    x_train = np.asarray(x_train, np.float64)
    _check_finite("min_max_scaler", "x_train", x_train)
    low = x_train.min(axis=0)
    return Scaler(low, _safe(x_train.max(axis=0) - low))
