"""Data helpers and embedded/generated data sets."""

import numpy as np
import pytest

import nnjax
from nnjax import data


def test_embedded_digits():
    images, labels = data.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    assert labels.shape == (1797,) and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert labels[0] == 0 and images[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]  # the first UCI test image


def test_train_test_split_partitions_and_stratifies():
    x = np.arange(100)[:, None].astype(np.float32)
    y = (np.arange(100) % 4).astype(np.int32)
    x_train, y_train, x_test, y_test = data.train_test_split(x, y, test_fraction=0.2, seed=1, stratify=True)
    assert len(x_test) == 20 and len(x_train) == 80
    assert sorted(np.concatenate([x_train, x_test])[:, 0].tolist()) == list(range(100))
    np.testing.assert_array_equal(np.bincount(y_test), [5, 5, 5, 5])
    np.testing.assert_array_equal(y_train, x_train[:, 0].astype(int) % 4)  # pairs stay together
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(x, y, test_fraction=1.5)
    with pytest.raises(ValueError, match="same number of examples"):
        data.train_test_split(x, y[:10])


def test_batches_cover_every_example_once():
    x = np.arange(10)[:, None]
    seen = [xb[:, 0].tolist() for xb, _ in data.batches(x, x[:, 0], 3, seed=0)]
    assert [len(b) for b in seen] == [3, 3, 3, 1]
    assert sorted(sum(seen, [])) == list(range(10))
    assert [len(b) for b, _ in data.batches(x, x[:, 0], 3, drop_last=True)] == [3, 3, 3]


def test_scalers_are_fitted_on_train_only():
    x_train = np.array([[0.0, 10.0], [2.0, 30.0]])
    scaler = data.standardizer(x_train)
    np.testing.assert_allclose(scaler.transform(x_train), [[-1, -1], [1, 1]])
    np.testing.assert_allclose(scaler.transform([[4.0, 50.0]]), [[3, 3]])
    np.testing.assert_allclose(scaler.inverse(scaler.transform(x_train)), x_train, rtol=1e-6)
    np.testing.assert_allclose(data.min_max_scaler(x_train).transform([[1.0, 20.0]]), [[0.5, 0.5]])


def test_generated_sets():
    x, y = data.make_xor()
    np.testing.assert_array_equal(y, np.logical_xor(x[:, 0], x[:, 1]))
    x, y = data.make_house_prices(500, seed=1)
    assert x.shape == (500, 4) and y.shape == (500,) and np.isfinite(y).all()
    assert x[:, 0].min() >= 500 and x[:, 2].max() <= 30 and set(np.unique(x[:, 1])) <= {1, 2, 3, 4, 5, 6}
    closer = x[:, 2] < 5
    assert y[closer].mean() > y[~closer].mean()  # the centre is dearer
    x, y = data.make_moons(200, seed=0)
    assert x.shape == (200, 2) and np.bincount(y).tolist() == [100, 100]
    x, y = data.make_spirals(300, classes=3)
    assert np.bincount(y).tolist() == [100, 100, 100]
    assert nnjax.data.make_house_prices(10, seed=3)[1].tolist() == nnjax.data.make_house_prices(10, seed=3)[1].tolist()
