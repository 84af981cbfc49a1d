"""Shared test fixtures.

(Strict dtype promotion, as equinox's tests use, is off: Optax's own update rules mix Python floats
with int32 step counts, which strict mode rejects.)
"""

import gc
import os

# Tests compile hundreds of small programs and run each a few times: compilation is most of the suite's
# time. XLA's backend optimization level 0 compiles about a third faster on CPU (tests/test_attention.py
# and test_fit.py, cold: 78 s -> 52 s): the HLO passes still run, only the machine code is less optimized.
# Set before JAX starts its backend; a level given in XLA_FLAGS is kept
# (`XLA_FLAGS=--xla_backend_optimization_level=2` tests the optimized code generation). XLA:CPU's classic
# loop emitters (`--xla_cpu_use_fusion_emitters=false`) would compile faster still, but miscompile a
# gradient that tests/test_torch_reference.py checks against PyTorch: the suite compiles as users do.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

import nnjax  # noqa: E402

# A worker's heap grows to a few GB of JAX's compiled-program and tracing caches, which every full garbage
# collection walks (about 0.3 s each, 25 of them and 9-11 s per worker in the default suite). Young
# garbage is still collected as usual; the oldest generation is walked a tenth as often.
gc.set_threshold(700, 10, 100)

# The persistent compilation cache, shared by the pytest-xdist workers (a program compiled by one test
# is loaded by the others, and by the next run); NNJAX_COMPILATION_CACHE=0 turns it off, or names another
# directory. Set before any test compiles.
nnjax.config.compilation_cache()


@pytest.fixture
def x64():
    """Runs a test with 64-bit floats enabled (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
