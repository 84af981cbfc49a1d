"""In-memory data helpers: train/test split, shuffled mini-batches, feature scaling fitted on train only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from nnjax._src.errors import check_same_leading


def train_test_split(
    x: Any, y: Any, *, test_fraction: float = 0.2, seed: int = 0, stratify: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffles and splits ``(x, y)`` into ``(x_train, y_train, x_test, y_test)``.

    Args:
      test_fraction: share of examples held out, in (0, 1).
      seed: seeds the shuffle.
      stratify: keep each class's share equal in both parts (``y`` must hold class labels).
    """
    check_same_leading("train_test_split", x=x, y=y)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"train_test_split: argument `test_fraction` expected a value in (0, 1), given {test_fraction!r}.")
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
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
    """Yields ``(x_batch, y_batch)`` mini-batches, shuffled by ``seed`` (``None``: in order)."""
    check_same_leading("batches", x=x, y=y)
    if batch_size < 1:
        raise ValueError(f"batches: argument `batch_size` expected a positive int, given {batch_size!r}.")
    n = np.shape(x)[0]
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield np.asarray(x)[idx], np.asarray(y)[idx]


class Scaler(NamedTuple):
    """An affine feature scaling ``(x - shift) / scale``, fitted on training data only."""

    shift: np.ndarray
    scale: np.ndarray

    def transform(self, x: Any) -> np.ndarray:
        return ((np.asarray(x) - self.shift) / self.scale).astype(np.float32)

    def inverse(self, x: Any) -> np.ndarray:
        return np.asarray(x) * self.scale + self.shift


def _safe(scale: np.ndarray) -> np.ndarray:
    return np.where(scale > 0, scale, 1.0)


def standardizer(x_train: Any) -> Scaler:
    """Fits per-feature standardization (zero mean, unit variance) on ``x_train: (n, ...)``."""
    x_train = np.asarray(x_train, np.float64)
    return Scaler(x_train.mean(axis=0), _safe(x_train.std(axis=0)))


def min_max_scaler(x_train: Any) -> Scaler:
    """Fits per-feature normalization to [0, 1] on ``x_train: (n, ...)``."""
    x_train = np.asarray(x_train, np.float64)
    low = x_train.min(axis=0)
    return Scaler(low, _safe(x_train.max(axis=0) - low))
