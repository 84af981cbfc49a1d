"""Data sets that need no network: the embedded UCI digits and generated toy problems.

``load_digits`` reads the 1,797 8x8 handwritten digits shipped inside the package: the test set of
the UCI "Optical Recognition of Handwritten Digits" data (E. Alpaydin, C. Kaynak, 1998;
https://archive.ics.uci.edu/dataset/80, licensed CC BY 4.0), the same copy scikit-learn ships.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

FEATURE_NAMES_HOUSES = ("square_feet", "bedrooms", "distance_km", "age_years")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The embedded UCI digits: ``images (1797, 8, 8)`` uint8 in 0..16 and ``labels (1797,)`` int32 in 0..9.

    Read from the package (no network). Scale before training, e.g.
    ``images.reshape(-1, 64).astype(np.float32) / 16``.

    Returns:
      ``(images, labels)``: ``images (1797, 8, 8)`` uint8 in 0..16 (new arrays on each call) and
      ``labels (1797,)`` int32 in 0..9.

    Example:
      >>> images, labels = nnjax.data.load_digits()
      >>> images.shape, images.dtype, labels.shape, labels.dtype
      ((1797, 8, 8), dtype('uint8'), (1797,), dtype('int32'))
      >>> int(images.max()), np.unique(labels).tolist()
      (16, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    with resources.files("nnjax").joinpath("data_files/digits.npz").open("rb") as f:
        data = np.load(f)
        return data["images"].copy(), data["labels"].astype(np.int32)


def make_xor(dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The four XOR points ``x (4, 2)`` in {0, 1}² and labels ``y (4,)`` = x1 XOR x2 (int32).

    Args:
      dtype: the dtype of ``x``.

    Returns:
      ``(x, y)``: ``x (4, 2)`` of ``dtype`` and ``y (4,)`` int32, in the order 00, 01, 10, 11.

    Example:
      >>> x, y = nnjax.data.make_xor()
      >>> x.tolist(), y.tolist()
      ([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], [0, 1, 1, 0])
    """
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype)
    return x, np.array([0, 1, 1, 0], np.int32)


def make_house_prices(n: int = 2000, *, noise: float = 10.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic house-price set with the source texts' four features.

    Features ``x (n, 4)``: square feet U(500, 3500); bedrooms 1..6, growing with size; distance to the
    city centre in km U(0.5, 30); age in years U(0, 100). Price in $1000s, ``y (n,)``::

        price = 50 + 0.2 * sqft * exp(-distance / 12) + 8 * bedrooms
                + 60 * exp(-age / 10) + 0.01 * (age - 60)² + N(0, noise²)

    Size matters less far from the centre (an interaction), new houses carry a premium that fades
    quickly, and very old houses gain a "historic" premium: a linear model cannot fit it all.

    Args:
      n: the number of houses.
      noise: the standard deviation of the price noise, in $1000s.
      seed: seeds NumPy's ``default_rng``; the same seed gives the same data.

    Returns:
      ``(x, y)``: ``x (n, 4)`` float32, columns square_feet, bedrooms, distance_km, age_years (unscaled:
      standardize before training), and ``y (n,)`` float32 prices in $1000s.

    Example:
      >>> x, y = nnjax.data.make_house_prices(100, seed=1)
      >>> x.shape, y.shape, x.dtype
      ((100, 4), (100,), dtype('float32'))
      >>> bool(x[:, 1].min() >= 1 and x[:, 1].max() <= 6), bool((y > 0).all())
      (True, True)
    """
    rng = np.random.default_rng(seed)
    sqft = rng.uniform(500, 3500, n)
    bedrooms = np.clip(np.round(sqft / 700 + rng.normal(0, 0.7, n)), 1, 6)
    distance = rng.uniform(0.5, 30, n)
    age = rng.uniform(0, 100, n)
    price = (
        50 + 0.2 * sqft * np.exp(-distance / 12) + 8 * bedrooms + 60 * np.exp(-age / 10) + 0.01 * (age - 60) ** 2
        + rng.normal(0, noise, n)
    )
    return np.stack([sqft, bedrooms, distance, age], axis=1).astype(np.float32), price.astype(np.float32)


def make_moons(n: int = 500, *, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles: ``x (n, 2)`` float32, ``y (n,)`` int32 in {0, 1}.

    Args:
      n: the number of points; ``n // 2`` on the upper moon (class 0), the rest on the lower one.
      noise: the standard deviation of the Gaussian noise added to each coordinate.
      seed: seeds NumPy's ``default_rng``.

    Returns:
      ``(x, y)``: ``x (n, 2)`` float32 points and ``y (n,)`` int32 labels, shuffled.

    Example:
      >>> x, y = nnjax.data.make_moons(100, noise=0.05)
      >>> x.shape, x.dtype, np.bincount(y).tolist()
      ((100, 2), dtype('float32'), [50, 50])
    """
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t0, t1 = rng.uniform(0, np.pi, n0), rng.uniform(0, np.pi, n - n0)
    upper = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    lower = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    x = np.concatenate([upper, lower]) + rng.normal(0, noise, (n, 2))
    y = np.concatenate([np.zeros(n0), np.ones(n - n0)]).astype(np.int32)
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order]


def make_spirals(n: int = 600, *, classes: int = 3, noise: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` interleaved spiral arms: ``x (n, 2)`` float32, ``y (n,)`` int32 in [0, classes).

    Args:
      n: the number of points, spread evenly over the arms (point ``i`` is on arm ``i % classes``).
      classes: the number of arms (classes).
      noise: the angular noise, growing with the radius.
      seed: seeds NumPy's ``default_rng``.

    Returns:
      ``(x, y)``: ``x (n, 2)`` float32 points within the unit disc and ``y (n,)`` int32 labels, shuffled.

    Example:
      >>> x, y = nnjax.data.make_spirals(90, classes=3)
      >>> x.shape, np.bincount(y).tolist(), bool((np.linalg.norm(x, axis=1) <= 1).all())
      ((90, 2), [30, 30, 30], True)
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    radius = rng.uniform(0.05, 1.0, n)
    angle = 4.0 * radius + 2 * np.pi * y / classes + rng.normal(0, noise, n) * radius
    x = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order].astype(np.int32)
