"""The generic (accelerator) and CPU kernels agree: values and ``jax.grad``, in float64, for every layer
family with a backend-specific form, the layers applied inside a ``lax.scan`` inside ``jit`` (as in a
fused epoch); forward mode works through the generic forms everywhere; and the switch itself
(``nnjax.config.kernels``, ``NNJAX_KERNELS``)."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnjax
from nnjax._src import kernels

MODES = ("cpu", "generic")


def _data(shape, seed=0, integers=False):
    """float64 NumPy data (NumPy edits and slices compile nothing); the tests enable float64 in JAX."""
    rs = np.random.RandomState(seed)
    x = rs.randint(0, 3, shape) if integers else rs.standard_normal(shape)  # integers: many ties
    return x.astype(np.float64)


def _init(layer, input_shape, seed=3):
    """``layer.init``'s float64 parameters and state, traced for their shapes, their values from NumPy: eager
    ``init`` compiles a random-number program for every new weight shape (0.2-0.5 s each). The forms must
    agree for any values; state (BatchNorm's running mean and variance) positive."""
    params, state = jax.eval_shape(lambda: layer.init(jax.random.key(0), input_shape, jnp.float64))
    rs = np.random.RandomState(seed)
    return (
        jax.tree.map(lambda s: 0.5 * rs.standard_normal(s.shape), params),
        jax.tree.map(lambda s: 0.5 + rs.random_sample(s.shape), state),
    )


@functools.partial(jax.jit, static_argnames=("layer", "train", "in_scan"))
def _jit_value_and_grads(params, state, array, extra, *, layer, train, in_scan):
    """One jitted function for every test: a case's program (one per layer, shape and kernel choice) is
    traced and compiled once, then reused (the ``ties`` cases of the pool tests)."""

    def loss(params, array):
        def once(scale):
            inputs = array * scale if extra is None else {**extra, "x": array * scale}
            y, _ = layer.apply(params, state, inputs, train=train)
            y = y["x"] if isinstance(y, dict) else y
            return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

        if not in_scan:
            return once(1.0)
        total, _ = jax.lax.scan(lambda c, scale: (c + once(scale), None), 0.0, jnp.array([1.0, 0.5]))
        return total

    return jax.value_and_grad(loss, argnums=(0, 1))(params, array)


def _value_and_grads(layer, x, *, train=False, in_scan=False):
    """``jit`` of the value and the gradients (params and input) of a smooth scalar of the layer's output;
    ``x`` an array or ``{"x": array, "mask": ...}`` (differentiated in the array); ``in_scan``: the layer
    applied twice inside a ``lax.scan`` (as in a fused epoch)."""
    extra = {k: v for k, v in x.items() if k != "x"} if isinstance(x, dict) else None
    array = x["x"] if isinstance(x, dict) else x
    params, state = _init(layer, array.shape[1:])
    return _jit_value_and_grads(params, state, array, extra, layer=layer, train=train, in_scan=in_scan)


def _assert_agree(layer, x, **kwargs):
    results = {}
    for mode in MODES:
        with nnjax.config.kernels(mode):
            results[mode] = _value_and_grads(layer, x, **kwargs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), results["cpu"],
                 results["generic"])
    return results["cpu"]


CONVS = [
    (nnjax.Conv(3, (3, 3)), (2, 7, 6, 2)),
    (nnjax.Conv(3, (3, 2), strides=(2, 1), padding="VALID", dilation=(2, 1)), (2, 9, 8, 2)),
    (nnjax.Conv(4, (2, 3), strides=2, padding=((2, 1), (0, 3))), (2, 7, 7, 2)),
    (nnjax.Conv(4, (3,), groups=2), (2, 8, 4)),
    (nnjax.Conv(2, (2, 2, 3), strides=(1, 2, 2)), (1, 4, 5, 6, 2)),
    (nnjax.ConvTranspose(3, (3, 3), strides=2), (2, 4, 5, 2)),
    (nnjax.ConvTranspose(2, (3,), strides=3, padding="VALID", dilation=2), (2, 5, 3)),
]


@pytest.mark.parametrize("layer, shape", CONVS, ids=[repr(c[0]) for c in CONVS])
def test_conv_forms_agree_in_scan_and_jit(x64, layer, shape):
    _assert_agree(layer, _data(shape), in_scan=True)


POOLS = [
    (nnjax.MaxPool(2), (2, 8, 6, 3)),  # reshape form on CPU
    (nnjax.MaxPool(2), (2, 7, 5, 3)),  # reshape form, cropping
    (nnjax.MaxPool(3, strides=2), (2, 7, 7, 3)),  # overlapping windows
    (nnjax.MaxPool((3, 3), strides=1, padding="SAME"), (2, 5, 6, 2)),
    (nnjax.MaxPool((2, 2, 2)), (1, 4, 6, 5, 2)),
    (nnjax.AvgPool(2), (2, 8, 6, 3)),
    (nnjax.AvgPool((3,), strides=(2,), padding="SAME"), (2, 9, 3)),
    (nnjax.AvgPool((2, 3, 2)), (1, 4, 6, 5, 2)),
    (nnjax.GlobalMaxPool(), (2, 5, 4, 3)),
    (nnjax.GlobalAvgPool(), (2, 5, 4, 3)),
]


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("layer, shape", POOLS, ids=[repr(p[0]) for p in POOLS])
def test_pool_forms_agree_ties_included(x64, layer, shape, ties):
    _assert_agree(layer, _data(shape, integers=ties))


NORMS = [nnjax.BatchNorm(), nnjax.LayerNorm(), nnjax.GroupNorm(2), nnjax.RMSNorm()]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("layer", NORMS, ids=repr)
def test_normalization_forms_agree(x64, layer, train):
    _assert_agree(layer, _data((4, 3, 4)), train=train)


CELLS = [nnjax.SimpleRNNCell(5), nnjax.LSTMCell(5), nnjax.GRUCell(5)]


def _recurrent_grid() -> list:
    """Every cell x mask x wrapper: the default suite runs six of the eighteen, which pair each cell with
    each mask setting and each mask setting with each wrapper; CI's slow pass runs the other twelve."""
    covering = {(0, False, "rnn"), (0, True, "reverse_last"), (1, False, "reverse_last"),
                (1, True, "bidirectional"), (2, False, "bidirectional"), (2, True, "rnn")}
    return [
        pytest.param(cell, masked, wrap, marks=() if (i, masked, wrap) in covering else pytest.mark.slow,
                     id=f"{type(cell).__name__}-{'masked' if masked else 'full'}-{wrap}")
        for i, cell in enumerate(CELLS)
        for masked in (False, True)
        for wrap in ("rnn", "reverse_last", "bidirectional")
    ]


@pytest.mark.parametrize(("cell", "masked", "wrap"), _recurrent_grid())
def test_recurrent_forms_agree_masked_and_bidirectional_in_scan_and_jit(x64, cell, masked, wrap):
    layer = {
        "rnn": lambda: nnjax.RNN(cell),
        "reverse_last": lambda: nnjax.RNN(cell, reverse=True, return_sequences=False),
        "bidirectional": lambda: nnjax.Bidirectional(cell),
    }[wrap]()
    x = _data((3, 6, 4))
    if masked:
        x = {"x": x, "mask": nnjax.sequence_mask(np.array([6, 2, 4]), 6)}
    _assert_agree(layer, x, in_scan=True)


CANONICAL_CONV = nnjax.Conv(2, (3, 3))  # no groups: the CPU form is a custom VJP, without forward mode
FORWARD = [
    (nnjax.Dense(3), (2, 4)),
    (CANONICAL_CONV, (2, 5, 5, 2)),
    (nnjax.Conv(4, (3,), groups=2), (2, 6, 4)),
    (nnjax.ConvTranspose(2, (2, 2), strides=2), (2, 3, 3, 2)),
    (nnjax.MaxPool(2), (2, 4, 4, 2)),
    (nnjax.MaxPool(3, strides=2), (2, 5, 5, 2)),
    (nnjax.AvgPool(2), (2, 4, 4, 2)),
    (nnjax.GlobalMaxPool(), (2, 4, 4, 2)),
    (nnjax.GlobalAvgPool(), (2, 4, 4, 2)),
    (nnjax.BatchNorm(), (4, 3)),
    (nnjax.LayerNorm(), (2, 3, 4)),
    (nnjax.GroupNorm(2), (2, 3, 4)),
    (nnjax.RMSNorm(), (2, 4)),
    (nnjax.SimpleRNN(3), (2, 5, 3)),
    (nnjax.LSTM(4), (2, 5, 3)),
    (nnjax.GRU(4, return_sequences=False), (2, 5, 3)),
    (nnjax.Bidirectional(nnjax.SimpleRNNCell(3)), (2, 5, 3)),
    (nnjax.MultiHeadAttention(2), (2, 4, 6)),
    (nnjax.TransformerEncoderBlock(2, 8), (2, 4, 6)),
    (nnjax.TransformerDecoderBlock(2, 8), (2, 4, 6)),
    (nnjax.serial(nnjax.Dropout(0.5), nnjax.Gelu(), nnjax.Softmax(), nnjax.Flatten()), (2, 3, 4)),
]


@pytest.mark.parametrize("layer, shape", FORWARD, ids=[repr(f[0]) for f in FORWARD])
def test_forward_mode_works_through_every_layer_under_the_generic_kernels(x64, layer, shape):
    """``jax.jvp`` against ``jax.vjp``: <u, J t> == <J^T u, t> for random t and u, under the generic kernels;
    the same JVP under the CPU kernels, or ForwardModeError where the CPU form has none."""
    x, t = _data(shape), _data(shape, seed=1)
    params, state = _init(layer, shape[1:])

    def f(x):
        return layer.apply(params, state, x)[0]

    u = _data(jax.eval_shape(f, x).shape, seed=2)
    # The JVP and the VJP as one program; under the CPU kernels the same function traces again, and where a
    # layer's forms are the same, the program is the same and comes from the compilation cache.
    jvp_and_vjp = jax.jit(lambda x, t, u: (jax.jvp(f, (x,), (t,))[1], jax.vjp(f, x)[1](u)[0]))
    with nnjax.config.kernels("generic"):
        jt, jtu = map(np.asarray, jvp_and_vjp(x, t, u))
    np.testing.assert_allclose(np.vdot(u, jt), np.vdot(jtu, t), rtol=1e-10)
    with nnjax.config.kernels("cpu"):
        if layer is CANONICAL_CONV:
            match = r"Conv\(2, \(3, 3\)\): forward-mode .*kernels\('generic'\)"
            with pytest.raises(nnjax.ForwardModeError, match=match):
                jax.jvp(f, (x,), (t,))
        else:
            np.testing.assert_allclose(jvp_and_vjp(x, t, u)[0], jt, rtol=1e-9, atol=1e-12)


def test_the_switch_resolves_nests_and_keys_jit_caches():
    expected_auto = "cpu" if jax.default_backend() == "cpu" else "generic"
    with nnjax.config.kernels("auto"):
        assert nnjax.config.active_kernels() == expected_auto
    with nnjax.config.kernels("generic"):
        assert nnjax.config.active_kernels() == "generic"
        with nnjax.config.kernels("cpu", generic=("conv",)):
            assert nnjax.config.active_kernels() == "cpu"
            from nnjax._src.config import use_cpu_form

            assert not use_cpu_form("conv") and use_cpu_form("max_pool")
        assert nnjax.config.active_kernels() == "generic"
    traces = []
    pool = nnjax.MaxPool(2)

    @jax.jit
    def f(x):
        traces.append(nnjax.config.active_kernels())
        return pool.apply({}, {}, x)[0]

    x = jnp.ones((1, 4, 4, 1))
    for mode in ("cpu", "generic", "cpu", "generic"):
        with nnjax.config.kernels(mode):
            f(x)
    assert traces == ["cpu", "generic"]  # one trace per choice, then the cache serves each


def test_the_switch_rejects_unknown_modes_and_names():
    with pytest.raises(ValueError, match=r"argument `mode` expected one of \('auto', 'generic', 'cpu'\), given 'gpu'"):
        with nnjax.config.kernels("gpu"):
            pass
    match = r"argument `generic` expected a sequence of names .* given \('convolution',\)"
    with pytest.raises(ValueError, match=match):
        with nnjax.config.kernels("cpu", generic=("convolution",)):
            pass


def test_compiler_options_are_the_cpu_kernels_only():
    with nnjax.config.kernels("generic"):
        assert kernels.jit_options() is None
        assert nnjax.jit(lambda x: x + 1)(jnp.float32(1)) == 2
    with nnjax.config.kernels("cpu"):
        assert kernels.jit_options() == kernels.default_compiler_options()
        assert nnjax.jit(lambda x: x + 1)(jnp.float32(1)) == 2


def test_environment_variable_sets_the_whole_process():
    code = "import nnjax; print(nnjax.config.active_kernels())"
    env = {**os.environ, "NNJAX_KERNELS": "generic"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "generic"
