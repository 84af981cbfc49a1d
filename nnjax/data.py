"""Data: embedded and generated data sets, splitting, batching and feature scaling."""

from nnjax._src.data import Scaler, batches, min_max_scaler, standardizer, train_test_split
from nnjax._src.datasets import load_digits, make_house_prices, make_moons, make_spirals, make_xor

__all__ = [
    "Scaler",
    "batches",
    "load_digits",
    "make_house_prices",
    "make_moons",
    "make_spirals",
    "make_xor",
    "min_max_scaler",
    "standardizer",
    "train_test_split",
]
