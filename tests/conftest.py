"""Shared test fixtures.

(Strict dtype promotion, as equinox's tests use, is off: Optax's own update rules mix Python floats
with int32 step counts, which strict mode rejects.)
"""

import jax
import pytest


@pytest.fixture
def x64():
    """Runs a test with 64-bit floats enabled (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
