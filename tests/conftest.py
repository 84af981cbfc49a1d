"""Shared test fixtures.

(Strict dtype promotion, as equinox's tests use, is off: Optax's own update rules mix Python floats
with int32 step counts, which strict mode rejects.)
"""

import jax
import pytest

import nnjax

# The persistent compilation cache, shared by the pytest-xdist workers (a program compiled by one test
# is loaded by the others, and by the next run); NNJAX_COMPILATION_CACHE=0 turns it off, or names another
# directory. Set before any test compiles.
nnjax.config.compilation_cache()


@pytest.fixture
def x64():
    """Runs a test with 64-bit floats enabled (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
