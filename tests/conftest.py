"""Test settings: strict dtype promotion so silent float64/int mixing fails loudly; float64 helpers."""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
    """Runs a test with 64-bit floats enabled (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
