"""nnjax.jit: jax.jit with nnjax's per-backend XLA options (on CPU: convolutions on XLA's own kernels)."""

import re

import jax
import jax.numpy as jnp
import jaxlib.version
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src import kernels  # the compiler_options kernel

CPU = jax.default_backend() == "cpu"


def conv_fn():
    layer = nnjax.Conv(64, 3)  # the anchor CNN's second convolution, batch 8
    params, state = layer.init(jax.random.key(0), (14, 14, 32))
    x = jax.random.normal(jax.random.key(1), (8, 14, 14, 32))
    return (lambda p, x: layer.apply(p, state, x)[0]), params, x


def library_fused_ops(compiled_text: str) -> set[str]:
    """The HLO ops inside the computations that XLA:CPU hands to YNNPACK (``ynn_fusion`` calls)."""
    called = re.findall(r"%ynn_fusion[.\d]* = .*?calls=%([\w.]+)", compiled_text)
    ops = set()
    for name in called:
        body = re.search(rf"%{re.escape(name)} \(.*?\{{(.*?)\n\}}", compiled_text, re.S)
        ops |= set(re.findall(r"= \S+ (\w[\w-]*)\(", body.group(1))) if body else set()
    return ops


@pytest.mark.skipif(not CPU, reason="the options are for the CPU backend")
def test_cpu_options_known_to_this_xla():
    assert nnjax.default_compiler_options() == kernels.CPU_COMPILER_OPTIONS
    assert nnjax.default_compiler_options("cpu") == kernels.CPU_COMPILER_OPTIONS


def test_other_backends_get_no_options():
    assert nnjax.default_compiler_options("gpu") is None
    assert nnjax.default_compiler_options("tpu") is None


@pytest.mark.skipif(not CPU, reason="the options are for the CPU backend")
def test_a_jaxlib_listed_as_accepting_the_options_compiles_with_them():
    if jaxlib.version.__version__ not in kernels.ACCEPTING_JAXLIBS:
        pytest.skip(f"jaxlib {jaxlib.version.__version__} is not listed: nnjax asks its XLA at start")
    assert kernels._accepted({**kernels.CPU_COMPILER_OPTIONS, **kernels.SETUP_CPU_COMPILER_OPTIONS})


def test_unknown_option_falls_back_to_none(monkeypatch):
    monkeypatch.setattr(kernels, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option_nnjax": True})
    monkeypatch.setattr(kernels, "ACCEPTING_JAXLIBS", frozenset())  # asked, whatever the jaxlib
    known = kernels._known_cpu_options.__wrapped__()  # probed again: all together fail, then one by one
    assert "xla_cpu_no_such_option_nnjax" not in known
    assert known.items() >= kernels.SETUP_CPU_COMPILER_OPTIONS.items()
    monkeypatch.setattr(kernels, "_known_cpu_options", lambda: known)
    assert kernels.default_compiler_options.__wrapped__("cpu") is None


@pytest.mark.skipif(not CPU, reason="the options are for the CPU backend")
def test_setup_programs_compile_for_compile_time_on_cpu_only():
    with nnjax.config.kernels("cpu"):
        assert kernels.setup_jit_options() == {**kernels.CPU_COMPILER_OPTIONS, **kernels.SETUP_CPU_COMPILER_OPTIONS}
        order = nnjax._src.compile.setup_jit(lambda key: jnp.argsort(jax.random.bits(key, (50,))))
        np.testing.assert_array_equal(order(jax.random.key(1)), np.argsort(jax.random.bits(jax.random.key(1), (50,))))
    with nnjax.config.kernels("generic"):
        assert kernels.setup_jit_options() is None


@pytest.mark.skipif(not CPU, reason="the options are for the CPU backend")
@nnjax.config.kernels("cpu")  # the CPU form of the compiler_options kernel, whatever NNJAX_KERNELS says
def test_cpu_convolution_runs_on_xla_kernels_and_matches_jax_jit():
    fn, params, x = conv_fn()
    ours = nnjax.jit(fn).lower(params, x).compile().as_text()
    assert "convolution" not in library_fused_ops(ours)
    assert re.search(r"= f32\[8,14,14,64\]\S* convolution\(", ours)  # XLA's own convolution op
    stock = jax.jit(fn).lower(params, x).compile().as_text()
    if "convolution" not in library_fused_ops(stock):
        pytest.skip("this XLA does not hand convolutions to YNNPACK by default")
    np.testing.assert_allclose(nnjax.jit(fn)(params, x), jax.jit(fn)(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not CPU, reason="the options are for the CPU backend")
@nnjax.config.kernels("cpu")
def test_train_step_and_fit_compile_with_the_options():
    model = nnjax.serial(nnjax.Conv(4, 3), nnjax.Relu(), nnjax.Flatten(), nnjax.Dense(3))
    tx = optax.sgd(0.1)
    ts = nnjax.init_train_state(model, tx, jax.random.key(0), (6, 6, 2))
    x = jax.random.normal(jax.random.key(1), (4, 6, 6, 2))
    y = jnp.array([0, 1, 2, 1])
    step = nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx)
    text = step.compiled.lower((ts.step, ts.params, ts.state, ts.opt_state), ts.key, (x, y)).compile().as_text()
    assert "convolution" not in library_fused_ops(text)
    assert "convolution(" in text
    plain = jax.jit(nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx, jit=False))
    expected, _ = plain(ts, (x, y))
    got, _ = step(nnjax.init_train_state(model, tx, jax.random.key(0), (6, 6, 2)), (x, y))
    tol = dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(expected.params), strict=True):
        np.testing.assert_allclose(a, b, **tol)
