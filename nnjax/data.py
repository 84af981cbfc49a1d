"""Data: embedded and generated data sets, splitting, batching and feature scaling."""

from nnjax._src.csv_data import Table, load_csv
from nnjax._src.data import Scaler, batches, min_max_scaler, standardizer, train_test_split
from nnjax._src.datasets import load_digits, make_house_prices, make_moons, make_spirals, make_xor
from nnjax._src.idx import FASHION_MNIST_CLASSES, load_fashion_mnist, load_mnist, read_idx, write_idx

__all__ = [
    "FASHION_MNIST_CLASSES",
    "Scaler",
    "Table",
    "batches",
    "load_csv",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "make_house_prices",
    "make_moons",
    "make_spirals",
    "make_xor",
    "min_max_scaler",
    "read_idx",
    "standardizer",
    "train_test_split",
    "write_idx",
]
