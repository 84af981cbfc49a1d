"""Pooling: both code paths (reshape on CPU, lax.reduce_window) against NumPy, their gradients, shapes, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from traced_init import param_names

import nnjax
from nnjax._src import kernels
from nnjax._src.basic import Dense
from nnjax._src.conv import Conv
from nnjax._src.core import serial
from nnjax._src.errors import LayerError, LayerTypeError
from nnjax._src.pooling import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool


def np_pool(x, window, strides, padding, op):
    """Loop reference. SAME pads so that out = ceil(size / stride), odd pixel at the end; padded cells are ignored."""
    spatial = x.shape[1:-1]
    if padding == "VALID":
        pads = [(0, 0)] * len(window)
    elif padding == "SAME":
        pads = []
        for s, w, st in zip(spatial, window, strides, strict=False):
            total = max((-(-s // st) - 1) * st + w - s, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = list(padding)
    xp = np.pad(x.astype(np.float64), [(0, 0), *pads, (0, 0)], constant_values=np.nan)
    out = [(s + lo + hi - w) // st + 1 for s, (lo, hi), w, st in zip(spatial, pads, window, strides, strict=False)]
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for o in np.ndindex(*out):
        cells = xp[
            (
                slice(None),
                *(slice(oi * st, oi * st + w) for oi, st, w in zip(o, strides, window, strict=False)),
                slice(None),
            )
        ]
        cells = cells.reshape(x.shape[0], -1, x.shape[-1])
        y[(slice(None), *o, slice(None))] = np.nanmax(cells, axis=1) if op == "max" else np.nanmean(cells, axis=1)
    return y


def _data(shape, seed=0):
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def reduce_window_path():
    """Forces the lax.reduce_window formulation (the generic kernels, used off CPU)."""
    with nnjax.config.kernels("generic"):
        yield


CASES = [
    # (spatial, window, strides, padding)
    ((8, 6), (2, 2), None, "VALID"),  # the reshape path on CPU
    ((7, 5), (2, 2), None, "VALID"),  # reshape path, cropping the last row/column
    ((9, 6), (3, 2), None, "VALID"),
    ((7, 7), (3, 3), (2, 2), "VALID"),  # overlapping windows
    ((7, 6), (3, 3), (2, 2), "SAME"),
    ((6, 6), (2, 3), (1, 2), ((1, 0), (1, 1))),
    ((9,), (3,), None, "VALID"),  # 1-D
    ((10,), (4,), (3,), "SAME"),
    ((4, 6, 5), (2, 2, 2), None, "VALID"),  # 3-D, cropping
    ((4, 5, 5), (2, 3, 2), (2, 1, 2), "SAME"),
]


RESHAPE_CASES = [case for case in CASES if case[2] is None and case[3] == "VALID"]  # where the CPU paths differ
POOL_PARAMS = [(case, kind, "default") for case in CASES for kind in ("max", "avg")]
POOL_PARAMS += [(case, kind, "reduce_window") for case in RESHAPE_CASES for kind in ("max", "avg")]


@pytest.mark.parametrize("case, kind, path", POOL_PARAMS, ids=str)
def test_pool_matches_numpy(case, kind, path, request):
    spatial, window, strides, padding = case
    if path == "reduce_window":
        request.getfixturevalue("reduce_window_path")
    layer = (MaxPool if kind == "max" else AvgPool)(window, strides, padding)
    x = _data((2, *spatial, 3))
    y, state = jax.jit(lambda x: layer.apply({}, {}, x))(jnp.asarray(x))
    expected = np_pool(x, window, strides or window, padding, kind)
    assert y.shape == expected.shape and layer.output_shape(x.shape[1:]) == y.shape[1:]
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def _primitives(fn, x):
    return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(x).eqns}


def test_cpu_kernels_reshape_non_overlapping_windows_and_generic_ones_never():
    x = np.zeros((2, 8, 8, 3), np.float32)
    with nnjax.config.kernels("cpu"):
        assert "reduce_window_max" not in _primitives(lambda x: MaxPool(2).apply({}, {}, x)[0], x)
        assert "reduce_window_sum" in _primitives(lambda x: AvgPool(2).apply({}, {}, x)[0], x)  # one form for all
        assert "reduce_window_max" in _primitives(lambda x: MaxPool(3, strides=2).apply({}, {}, x)[0], x)
        assert "reduce_window_sum" in _primitives(lambda x: AvgPool(2, padding="SAME").apply({}, {}, x)[0], x)
    with nnjax.config.kernels("generic"):
        assert "reduce_window_max" in _primitives(lambda x: MaxPool(2).apply({}, {}, x)[0], x)
        assert "reduce_window_sum" in _primitives(lambda x: AvgPool(2).apply({}, {}, x)[0], x)
        assert "reduce_window_max" in _primitives(lambda x: GlobalMaxPool().apply({}, {}, x)[0], x)


@pytest.mark.parametrize("kind", [MaxPool, AvgPool])
@pytest.mark.parametrize("spatial, window", [((8, 6), (2, 2)), ((7, 5), (2, 2)), ((6, 4, 5), (3, 2, 2))])
def test_both_paths_agree_in_value_and_gradient(kind, spatial, window):
    layer = kind(window)
    x = jnp.asarray(_data((2, *spatial, 3)))  # continuous random data: no ties
    g = jnp.asarray(_data((2, *layer.output_shape(spatial + (3,))), 1))

    def value_and_grad():
        f = jax.jit(jax.value_and_grad(lambda x: jnp.sum(layer.apply({}, {}, x)[0] * g)))
        return f(x)

    with nnjax.config.kernels("cpu"):
        fast = value_and_grad()
    with nnjax.config.kernels("generic"):
        slow = value_and_grad()
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-5)
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-6, atol=1e-7)
    if kind is MaxPool:  # the gradient routes each cotangent to its window's arg-max only
        assert np.count_nonzero(np.asarray(fast[1])) == g.size


@pytest.mark.parametrize("spatial, window", [((4, 6), (2, 2)), ((5, 4, 6), (2, 2, 3))])
def test_max_pool_ties_route_to_the_first_maximum_on_both_paths(spatial, window):
    layer = MaxPool(window)
    x = jnp.asarray(np.random.RandomState(0).randint(0, 2, (2, *spatial, 3)).astype(np.float32))  # many ties
    g = jnp.asarray(_data((2, *layer.output_shape(spatial + (3,))), 1))

    def grad():
        return jax.jit(jax.grad(lambda x: jnp.sum(layer.apply({}, {}, x)[0] * g)))(x)

    with nnjax.config.kernels("cpu"):
        fast = grad()
    with nnjax.config.kernels("generic"):
        np.testing.assert_array_equal(fast, grad())  # XLA's select-and-scatter: first maximum in row-major order
    assert np.count_nonzero(np.asarray(fast)) == g.size  # one winner per window, ties or not
    # by hand: a 2x2 window [[1, 1], [0, 1]] sends its cotangent to its top-left cell only
    one = kernels.window_max
    d = jax.jit(jax.grad(lambda v: one(v.reshape(1, 2, 2), (1, 2))[0]))(np.array([1.0, 1.0, 0.0, 1.0], np.float32))
    np.testing.assert_array_equal(d, [1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("mode", ["cpu", "generic"])
def test_global_max_pool_ties_route_to_the_first_maximum(mode):
    x = np.zeros((2, 3, 4, 5), np.float32)  # example 0: all tied; example 1: one maximum per channel
    x[1, 2, 3, :] = 1.0
    with nnjax.config.kernels(mode):  # jit: one program instead of a dozen eager ones
        g = jax.jit(jax.grad(lambda x: jnp.sum(GlobalMaxPool().apply({}, {}, x)[0])))(x)
    expected = np.zeros((2, 3, 4, 5))
    expected[0, 0, 0, :] = 1.0  # the first cell in row-major order
    expected[1, 2, 3, :] = 1.0
    np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize(
    "shape, axis", [((3, 2, 4, 2, 5), (2, 4)), ((2, 3, 2, 3, 2, 4), (1, 3, 5)), ((4, 6, 6, 3), (1, 2))]
)
def test_window_max_cellwise_and_reduction_paths_agree(shape, axis, monkeypatch):
    """Small windows run cell by cell, large ones (and this test's second pass) as reductions."""
    rs = np.random.RandomState(0)
    x = rs.randint(0, 3, shape).astype(np.float32)  # many ties
    x[0, 0] = np.nan  # a NaN maximum: NaN value, zero derivative on both paths
    x, t = jnp.asarray(x), jnp.asarray(_data(shape, 1))

    ct = jnp.asarray(_data(np.max(np.asarray(x), axis=axis).shape, 2))

    def run():  # the value, the JVP and the VJP of a jitted window_max, in one program per pass
        f = jax.jit(lambda x: kernels.window_max(x, axis))
        return jax.jit(lambda x, t, ct: (f(x), *jax.jvp(f, (x,), (t,)), jax.vjp(f, x)[1](ct)[0]))(x, t, ct)

    cells = math.prod(shape[a] for a in axis)
    assert kernels._cellwise(x, axis) == (cells <= kernels.CELLWISE_MAX_CELLS)
    first = run()
    monkeypatch.setattr(kernels, "CELLWISE_MAX_CELLS", 0)
    second = run()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    value, y, dy, grad = first
    np.testing.assert_array_equal(value, np.max(np.asarray(x), axis=axis))
    np.testing.assert_array_equal(y, value)
    assert np.isnan(y[0, 0]).all() and not np.isnan(dy).any() and not np.isnan(grad).any()
    winners = np.count_nonzero(np.asarray(grad).reshape(-1) != 0)
    assert winners == y.size - np.isnan(np.asarray(y)).sum()  # one winner per window with a number for maximum


def test_max_pool_forward_mode_matches_reverse_mode():
    layer = MaxPool(2)
    x, t = jnp.asarray(_data((2, 4, 6, 3))), jnp.asarray(_data((2, 4, 6, 3), 1))
    f = lambda x: layer.apply({}, {}, x)[0]  # noqa: E731
    ct = jnp.asarray(_data((2, 2, 3, 3), 2))

    @jax.jit  # one program for the value, the JVP and the VJP (instead of dozens of eager ones)
    def both(x, t, ct):
        return f(x), *jax.jvp(f, (x,), (t,)), jax.vjp(f, x)[1](ct)[0]

    value, y, dy, pullback = map(np.asarray, both(x, t, ct))
    np.testing.assert_allclose(y, value)
    np.testing.assert_allclose(np.vdot(dy, ct), np.vdot(t, pullback), rtol=1e-5)  # <J t, c> = <t, J^T c>


@pytest.mark.parametrize(
    "layer",
    [
        MaxPool(2),
        AvgPool(2),
        AvgPool((2,), strides=1, padding="SAME"),
        MaxPool((2, 2, 2), padding="SAME"),
        GlobalAvgPool(),
        GlobalMaxPool(),
    ],
    ids=str,
)
def test_gradients_order_2_float64(x64, layer):
    shape = (2, 4, 3, 3, 2) if "(2, 2, 2)" in layer.name else (2, 5, 2) if "(2,)" in layer.name else (2, 4, 6, 2)
    x = _data(shape).astype(np.float64)  # NumPy: check_grads's steps x +- eps t are NumPy ops, not eager programs
    check_grads(jax.jit(lambda x: layer.apply({}, {}, x)[0]), (x,), order=2, modes=("rev",))


def test_global_pools_match_numpy():
    x = _data((2, 3, 4, 5, 6))
    np.testing.assert_allclose(GlobalAvgPool().apply({}, {}, jnp.asarray(x))[0], x.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(GlobalMaxPool().apply({}, {}, jnp.asarray(x[:, 0]))[0], x[:, 0].max(axis=(1, 2)))
    assert GlobalAvgPool().output_shape((7, 6)) == (6,)  # 1-D signal


def test_names_jit_vmap_and_serial():
    assert MaxPool(2).name == "MaxPool((2, 2))"
    assert AvgPool(3, strides=2, padding="same").name == "AvgPool((3, 3), strides=(2, 2), padding='SAME')"
    model = serial(Conv(4, 3), MaxPool(2), Conv(4, 3), AvgPool(2), GlobalMaxPool(), Dense(2))
    assert param_names(model, (9, 9, 1))[1::2] == ["max_pool_1", "avg_pool_3", "dense_5"]
    # the parameters' shapes from tracing init, their values from NumPy (eager init compiles a program per shape)
    shapes, state = jax.eval_shape(lambda: model.init(jax.random.key(0), (9, 9, 1)))
    params = jax.tree.map(lambda s: 0.3 * _data(s.shape, 4), shapes)
    xs = _data((3, 4, 9, 9, 1))  # 3 batches of 4
    ys = np.asarray(jax.jit(jax.vmap(lambda x: model.apply(params, state, x)[0]))(xs))
    np.testing.assert_allclose(ys[1], jax.jit(model.apply)(params, state, xs[1])[0], rtol=1e-5, atol=1e-6)
    assert model.output_shape((9, 9, 1)) == ys.shape[2:] == (2,)


def test_errors():
    with pytest.raises(
        LayerTypeError, match=r"MaxPool\(\(2, 2\)\): argument `x` expected a floating-point array, given dtype uint8"
    ):
        MaxPool(2).apply({}, {}, np.zeros((1, 4, 4, 1), np.uint8))
    with pytest.raises(
        LayerError,
        match=r"MaxPool\(\(2, 2\)\): argument `x` expected shape \(batch, H, W, channels\) \(rank 4\), given \(4, 4\)",
    ):
        MaxPool(2).apply({}, {}, np.zeros((4, 4)))
    with pytest.raises(
        LayerError,
        match=r"AvgPool\(\(3, 3\)\): argument `x` expected spatial sizes of at least the window \(3, 3\)",
    ):
        AvgPool(3).apply({}, {}, np.zeros((1, 2, 5, 1)))
    with pytest.raises(ValueError, match=r"argument `window` expected 1, 2 or 3 ints"):
        MaxPool((2, 2, 2, 2))
    with pytest.raises(
        ValueError, match=r"MaxPool\(\(2, 2\)\): argument `strides` expected a positive int or 2 positive ints, given 0"
    ):
        MaxPool(2, strides=0)
    with pytest.raises(
        LayerError, match=r"GlobalAvgPool: argument `x` expected a batch of shape \(batch, \*spatial, channels\)"
    ):
        GlobalAvgPool().apply({}, {}, np.zeros((4, 3)))
    model = serial(Conv(2, 3), MaxPool(2), MaxPool(2), MaxPool(2))
    with pytest.raises(LayerError, match=r"^serial\[3\] > MaxPool\(\(2, 2\)\): argument `x` expected spatial sizes"):
        model.output_shape((6, 6, 1))
