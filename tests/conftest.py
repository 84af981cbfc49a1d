"""Shared test fixtures.

(Strict dtype promotion, as equinox's tests use, is off: Optax's own update rules mix Python floats
with int32 step counts, which strict mode rejects.)
"""

import os

# Tests compile hundreds of small programs and run each a few times: compilation is most of the suite's
# time. Two XLA:CPU flags make it about 40% cheaper (the HLO passes still run; only the machine code is
# less optimized): backend optimization level 0 (tests/test_attention.py and test_fit.py, cold: 78 s ->
# 52 s) and XLA's classic loop emitters instead of its MLIR fusion emitters (test_models.py and
# test_recurrent.py, cold: 66 s -> 49 s). Set before JAX starts its backend; a flag given in XLA_FLAGS is
# kept (`XLA_FLAGS=--xla_backend_optimization_level=2` tests the optimized code generation).
for flag, value in (("xla_backend_optimization_level", "0"), ("xla_cpu_use_fusion_emitters", "false")):
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{flag}={value}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

import nnjax  # noqa: E402

# The persistent compilation cache, shared by the pytest-xdist workers (a program compiled by one test
# is loaded by the others, and by the next run); NNJAX_COMPILATION_CACHE=0 turns it off, or names another
# directory. Set before any test compiles.
nnjax.config.compilation_cache()


@pytest.fixture
def x64():
    """Runs a test with 64-bit floats enabled (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
