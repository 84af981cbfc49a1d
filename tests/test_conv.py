"""Conv and ConvTranspose: against NumPy loop implementations, gradients, transforms, shapes, errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from traced_init import param_names

import nnjax
from nnjax._src.basic import Dense, Flatten
from nnjax._src.conv import Conv, ConvTranspose
from nnjax._src.core import serial
from nnjax._src.errors import LayerError, LayerTypeError
from nnjax._src.pooling import MaxPool

# ---- independent NumPy references -------------------------------------------------------------


def _pads(size, kernel, stride, padding):
    """Per-axis (low, high) padding; SAME puts the odd pixel at the end (as TensorFlow/XLA)."""
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    return padding


def np_conv(x, w, strides, padding, dilation, groups):
    """Direct loop over output positions and kernel taps. x (B, *S, C), w (*K, C/g, F)."""
    n = x.ndim - 2
    kernel = w.shape[:n]
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=False)]
    pads = [
        _pads(s, e, st, padding if isinstance(padding, str) else padding[i])
        for i, (s, e, st) in enumerate(zip(x.shape[1:-1], eff, strides, strict=False))
    ]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(s + lo + hi - e) // st + 1 for s, (lo, hi), e, st in zip(x.shape[1:-1], pads, eff, strides, strict=False)]
    features = w.shape[-1]
    cg, fg = x.shape[-1] // groups, features // groups
    y = np.zeros((x.shape[0], *out, features))
    for o in np.ndindex(*out):
        for k in np.ndindex(*kernel):
            pos = tuple(oi * st + ki * d for oi, ki, st, d in zip(o, k, strides, dilation, strict=False))
            patch = xp[(slice(None), *pos, slice(None))]  # (B, C)
            for g in range(groups):
                y[(slice(None), *o, slice(g * fg, (g + 1) * fg))] += (
                    patch[:, g * cg : (g + 1) * cg] @ w[k][:, g * fg : (g + 1) * fg]
                )
    return y


def np_conv_transpose(x, w, strides, padding, dilation, groups):
    """Scatter: each input pixel adds x[i] @ w[k] at i * stride + k * dilation, then crop/extend.

    Output sizes (documented convention): explicit (lo, hi) crops the full scatter output;
    VALID gives size * stride + max(k_eff - stride, 0); SAME gives size * stride.
    """
    n = x.ndim - 2
    kernel = w.shape[:n]
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=False)]
    full = [(s - 1) * st + e for s, st, e in zip(x.shape[1:-1], strides, eff, strict=False)]
    features = w.shape[-1]
    cg, fg = x.shape[-1] // groups, features // groups
    y = np.zeros((x.shape[0], *full, features))
    for i in np.ndindex(*x.shape[1:-1]):
        for k in np.ndindex(*kernel):
            pos = tuple(ii * st + ki * d for ii, ki, st, d in zip(i, k, strides, dilation, strict=False))
            for g in range(groups):
                y[(slice(None), *pos, slice(g * fg, (g + 1) * fg))] += (
                    x[(slice(None), *i, slice(g * cg, (g + 1) * cg))] @ w[k][:, g * fg : (g + 1) * fg]
                )
    starts, sizes = [], []
    for axis, (s, st, e) in enumerate(zip(x.shape[1:-1], strides, eff, strict=False)):
        p = padding if isinstance(padding, str) else padding[axis]
        if p == "VALID":
            starts.append(0), sizes.append(s * st + max(e - st, 0))
        elif p == "SAME":
            low = e - 1 if st > e - 1 else math.ceil((e + st - 2) / 2)  # lax.conv_transpose's SAME
            starts.append(e - 1 - low), sizes.append(s * st)
        else:
            starts.append(p[0]), sizes.append((s - 1) * st + e - p[0] - p[1])
    y = np.pad(y, [(0, 0), *[(0, max(st + sz - f, 0)) for st, sz, f in zip(starts, sizes, full, strict=False)], (0, 0)])
    return y[(slice(None), *(slice(st, st + sz) for st, sz in zip(starts, sizes, strict=False)), slice(None))]


def _data(shape, seed=0):
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def _init(layer, input_shape, dtype=np.float32, seed=1):
    """``layer.init``'s parameters and state (empty for these layers), traced for their shapes, the parameters'
    values from NumPy: eager ``init`` compiles a random-number program for every new weight shape (~0.3 s
    each). Any values serve the tests that use this; ``init`` itself runs in test_params_dtype_and_initializers
    and (vmapped) in test_jit_vmap_over_models_and_serial."""
    shapes, state = jax.eval_shape(lambda: layer.init(jax.random.key(0), input_shape, dtype))
    assert not jax.tree.leaves(state)
    rs = np.random.RandomState(seed)
    return jax.tree.map(lambda s: (0.5 * rs.standard_normal(s.shape)).astype(s.dtype), shapes), state


def _run(layer, x, seed=1):
    params, state = _init(layer, x.shape[1:], seed=seed)
    y, _ = jax.jit(layer.apply)(params, state, x)
    return params, np.asarray(y)


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


CONV_CASES = [
    # (spatial, in_channels, features, kernel, strides, padding, dilation, groups)
    ((7, 6), 3, 4, (3, 3), 1, "SAME", 1, 1),
    ((7, 6), 3, 4, (3, 2), 2, "SAME", 1, 1),
    ((8, 8), 2, 5, (2, 2), 2, "SAME", 1, 1),
    ((7, 6), 3, 4, (3, 3), (2, 1), "VALID", 1, 1),
    ((7, 6), 3, 4, (3, 3), 1, ((1, 0), (2, 1)), 1, 1),
    ((9, 8), 2, 3, (3, 3), 1, "SAME", 2, 1),
    ((9, 8), 2, 3, (2, 3), 2, "VALID", (2, 1), 1),
    ((6, 6), 4, 6, (3, 3), 1, "SAME", 1, 2),
    ((6, 6), 4, 8, (3, 3), 2, "VALID", 1, 4),  # depthwise, channel multiplier 2
    ((6, 5), 3, 3, (3, 3), 1, "SAME", 1, 3),  # depthwise
    ((11,), 3, 4, (3,), 2, "SAME", 1, 1),  # 1-D
    ((11,), 4, 4, (5,), 1, ((2, 1),), 2, 2),  # 1-D, dilated, grouped
    ((5, 4, 6), 2, 3, (3, 2, 3), (1, 2, 2), "SAME", 1, 1),  # 3-D
    ((5, 5, 5), 2, 4, (2, 2, 2), 1, "VALID", (2, 1, 1), 2),  # 3-D, dilated, grouped
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_numpy_loop(case):
    spatial, cin, features, kernel, strides, padding, dilation, groups = case
    n = len(spatial)
    layer = Conv(features, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)
    x = _data((2, *spatial, cin))
    params, y = _run(layer, x)
    assert params["w"].shape == (*kernel, cin // groups, features) and params["b"].shape == (features,)
    expected = np_conv(x, np.asarray(params["w"], np.float64), _tuple(strides, n), padding, _tuple(dilation, n), groups)
    expected = expected + np.asarray(params["b"])
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    assert layer.output_shape(x.shape[1:]) == y.shape[1:]


TRANSPOSE_CASES = [
    ((4, 5), 3, 2, (3, 3), 2, "SAME", 1, 1),
    ((4, 5), 3, 2, (3, 3), 2, "VALID", 1, 1),
    ((4, 5), 3, 2, (2, 2), 2, "VALID", 1, 1),
    ((4, 4), 2, 3, (2, 2), 3, "VALID", 1, 1),  # kernel smaller than stride: zero rows at the end
    ((4, 5), 3, 2, (3, 3), (2, 1), ((1, 1), (0, 2)), 1, 1),  # PyTorch padding=1 on axis 0
    ((5, 4), 2, 2, (3, 2), 1, "SAME", (2, 1), 1),
    ((4, 4), 4, 6, (3, 3), 2, "SAME", 1, 2),
    ((4, 4), 4, 4, (3, 3), 2, "SAME", 1, 4),  # depthwise
    ((6,), 2, 3, (4,), 2, "SAME", 1, 1),  # 1-D
    ((3, 4, 3), 2, 2, (2, 3, 2), (2, 1, 2), "VALID", 1, 1),  # 3-D
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_matches_numpy_scatter(case):
    spatial, cin, features, kernel, strides, padding, dilation, groups = case
    n = len(spatial)
    layer = ConvTranspose(features, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)
    x = _data((2, *spatial, cin))
    params, y = _run(layer, x)
    assert params["w"].shape == (*kernel, cin // groups, features)
    expected = np_conv_transpose(
        x, np.asarray(params["w"], np.float64), _tuple(strides, n), padding, _tuple(dilation, n), groups
    )
    expected = expected + params["b"]  # non-zero biases (init's are zeros)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    assert layer.output_shape(x.shape[1:]) == y.shape[1:]


@pytest.mark.parametrize("strides", [1, 2, 3])
def test_conv_transpose_is_the_gradient_of_conv(strides):
    # VALID conv from 3 * strides + 3 pixels; its input-gradient is the transposed conv with w's last axes swapped.
    conv = Conv(5, (3, 3), strides=strides, padding="VALID", use_bias=False)
    size = 3 * strides + 3
    x = _data((2, size, size, 4))
    params, _ = _init(conv, x.shape[1:])
    cotangent = _data((2, *conv.output_shape(x.shape[1:])), 5)
    transpose = ConvTranspose(4, (3, 3), strides=strides, padding="VALID", use_bias=False)

    @jax.jit  # one program for both sides (instead of a dozen eager ones)
    def both(x, cotangent):
        _, vjp = jax.vjp(lambda x: conv.apply(params, {}, x)[0], x)
        return transpose.apply({"w": jnp.swapaxes(params["w"], -1, -2)}, {}, cotangent)[0], vjp(cotangent)[0]

    out, gradient = both(x, cotangent)
    np.testing.assert_allclose(out, gradient, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (Conv(3, (2, 2), strides=2, groups=1), (5, 4, 2)),
        (Conv(4, (3,), dilation=2, padding="VALID", groups=2), (7, 2)),
        (Conv(2, (2, 2, 2), padding=((1, 0), (0, 1), (1, 1))), (3, 3, 3, 1)),
        (ConvTranspose(2, (2,), strides=2, padding="VALID", groups=2), (4, 2)),
    ],
    ids=str,
)
def test_gradients_order_2_float64(x64, layer, shape):
    params, state = _init(layer, shape, np.float64, seed=7)  # NumPy arrays: check_grads's steps are NumPy ops
    x = _data((2, *shape), 2).astype(np.float64)
    check_grads(jax.jit(lambda p, x: layer.apply(p, state, x)[0]), (params, x), order=2, modes=("rev",))


def test_params_dtype_and_initializers():
    layer = Conv(8, 3, w_init="he_normal", b_init="ones")
    params, state = layer.init(jax.random.key(0), (6, 6, 2))
    assert jax.tree.map(jnp.shape, params) == {"w": (3, 3, 2, 8), "b": (8,)} and state == {}
    assert params["w"].dtype == jnp.float32
    np.testing.assert_array_equal(params["b"], 1.0)
    assert "b" not in jax.eval_shape(lambda: Conv(8, 3, use_bias=False).init(jax.random.key(0), (6, 6, 2)))[0]
    assert layer.name == "Conv(8, (3, 3))" and ConvTranspose(4, (2,)).name == "ConvTranspose(4, (2,))"


def test_jit_vmap_over_models_and_serial():
    model = serial(Conv(4, 3), MaxPool(2), ConvTranspose(2, (2, 2), strides=2), Flatten(), Dense(3))
    shape = (8, 8, 1)
    x = jnp.asarray(_data((5, *shape)))
    assert param_names(model, shape) == ["conv_0", "max_pool_1", "conv_transpose_2", "flatten_3", "dense_4"]
    params, state = _init(model, shape)
    y, _ = model.apply(params, state, x)
    y_jit, _ = jax.jit(model.apply)(params, state, x)
    np.testing.assert_allclose(y, y_jit, rtol=1e-5, atol=1e-6)
    assert model.output_shape(shape) == y.shape[1:] == (3,)

    ps, ss = jax.jit(lambda key: jax.vmap(lambda k: model.init(k, shape))(jax.random.split(key, 3)))(jax.random.key(1))
    ys, _ = jax.jit(jax.vmap(lambda p, s: model.apply(p, s, x)))(ps, ss)
    assert ys.shape == (3, 5, 3)
    ys = np.asarray(ys)
    one = jax.tree.map(lambda a: np.asarray(a)[2], ps)
    np.testing.assert_allclose(ys[2], jax.jit(model.apply)(one, state, x)[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(ys[0], ys[2])


@pytest.mark.parametrize(
    "kernel, strides, padding, dilation",
    list(itertools.product([(2, 3)], [1, (3, 2)], ["SAME", "VALID", ((2, 0), (1, 1))], [1, 2])),
)
def test_output_shape_formula(kernel, strides, padding, dilation):
    layer = Conv(2, kernel, strides=strides, padding=padding, dilation=dilation)
    shape = (9, 10, 1)
    s, d = _tuple(strides, 2), _tuple(dilation, 2)
    expected = []
    for axis, size in enumerate(shape[:2]):
        eff = (kernel[axis] - 1) * d[axis] + 1
        lo, hi = _pads(size, eff, s[axis], padding if isinstance(padding, str) else padding[axis])
        expected.append(math.ceil(size / s[axis]) if padding == "SAME" else (size + lo + hi - eff) // s[axis] + 1)
    assert layer.output_shape(shape) == (*expected, 2)
    # apply's shape by tracing init and apply (a shape property: no programs to compile)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    y = jax.eval_shape(lambda x: layer.apply(*layer.init(jax.random.key(0), shape), x)[0], x)
    assert y.shape[1:] == (*expected, 2)


# ---- errors ------------------------------------------------------------------------------------


def test_wrong_channel_count_names_layer_and_shapes():
    layer = Conv(8, (3, 3))
    params, state = _init(layer, (28, 28, 1))
    with pytest.raises(
        LayerError, match=r"Conv\(8, \(3, 3\)\): argument `x` expected shape \(batch, H, W, 1\), given \(2, 28, 28, 3\)"
    ):
        layer.apply(params, state, np.zeros((2, 28, 28, 3)))
    params3, _ = _init(layer, (28, 28, 3))
    with pytest.raises(LayerError, match=r"channels-last; move the channel axis last, e.g. `jnp.moveaxis\(x, 1, -1\)`"):
        layer.apply(params3, state, np.zeros((2, 3, 28, 28)))  # NCHW data


def test_missing_axis_hints():
    layer = Conv(8, 3)
    params, state = _init(layer, (28, 28, 1))
    with pytest.raises(LayerError, match=r"rank 4\), given \(2, 28, 28\)\. Hint: add the channel axis"):
        layer.apply(params, state, np.zeros((2, 28, 28)))
    params, state = _init(layer, (28, 28, 3))
    with pytest.raises(LayerError, match=r"add the batch axis"):
        layer.apply(params, state, np.zeros((28, 28, 3)))
    with pytest.raises(LayerError, match=r"input_shape` expected 2 spatial axes and channels.*given \(28, 28\)"):
        layer.init(jax.random.key(0), (28, 28))


def test_integer_pixels_get_a_scaling_hint():
    layer = Conv(4, 3)
    params, state = _init(layer, (8, 8, 1))
    with pytest.raises(
        LayerTypeError,
        match=r"Conv\(4, \(3, 3\)\): argument `x` expected a floating-point array, given dtype uint8.*255",
    ):
        layer.apply(params, state, np.zeros((2, 8, 8, 1), np.uint8))


def test_bad_groups_and_arguments():
    with pytest.raises(
        LayerError, match=r"Conv\(6, \(3, 3\)\): in_channels \(=4.*must be divisible by `groups` \(=3\)"
    ):
        Conv(6, 3, groups=3).init(jax.random.key(0), (8, 8, 4))
    with pytest.raises(ValueError, match=r"`features` \(=5\) must be divisible by `groups` \(=2\)"):
        Conv(5, 3, groups=2)
    with pytest.raises(ValueError, match=r"argument `padding` expected 'SAME', 'VALID' or 2 pairs"):
        Conv(4, 3, padding="FULL")
    with pytest.raises(ValueError, match=r"argument `padding` expected.*given \(1, 1\)"):
        Conv(4, 3, padding=(1, 1))
    with pytest.raises(
        ValueError, match=r"argument `strides` expected a positive int or 2 positive ints, given \(1, 1, 1\)"
    ):
        Conv(4, 3, strides=(1, 1, 1))
    with pytest.raises(ValueError, match=r"argument `kernel_size` expected 1, 2 or 3 ints"):
        Conv(4, (3, 3, 3, 3))
    with pytest.raises(ValueError, match=r"argument `features` expected a positive int, given 0"):
        ConvTranspose(0, 3)


def test_input_smaller_than_kernel():
    layer = Conv(4, (5, 5), padding="VALID")
    with pytest.raises(LayerError, match=r"fit the \(dilated\) kernel \(5, 5\).*given shape \(1, 3, 3, 1\)"):
        layer.output_shape((3, 3, 1))


def test_errors_inside_serial_name_the_position():
    model = serial(Conv(4, 3), Conv(6, 3, groups=3))
    with pytest.raises(LayerError, match=r"^serial\[1\] > Conv\(6, \(3, 3\)\): in_channels \(=4.*by `groups` \(=3\)"):
        model.init(jax.random.key(0), (8, 8, 1))
    model = serial(Conv(4, 3), MaxPool(2), Conv(8, 3))
    params, state = _init(model, (8, 8, 1))
    with pytest.raises(
        LayerError, match=r"^serial\[0\] > Conv\(4, \(3, 3\)\): argument `x` expected shape \(batch, H, W, 1\)"
    ):
        model.apply(params, state, np.zeros((2, 8, 8, 2)))
    with pytest.raises(LayerTypeError, match=r"^serial\[0\] > Conv\(4, \(3, 3\)\).*uint8"):
        model.apply(params, state, np.zeros((2, 8, 8, 1), np.uint8))


# ---- the CPU gradient formulation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, spatial",
    [
        ({"kernel_size": (3, 3)}, (8, 7)),
        ({"kernel_size": (3, 2), "strides": (2, 1), "padding": "VALID", "dilation": (2, 1)}, (9, 8)),
        ({"kernel_size": (2, 3), "strides": (3, 2), "padding": ((2, 3), (0, 4)), "dilation": (1, 2)}, (9, 7)),
        ({"kernel_size": (3,), "padding": ((5, 5),)}, (6,)),  # padding wider than the kernel
        ({"kernel_size": (3, 2, 3), "strides": (2, 1, 2)}, (5, 4, 6)),
    ],
    ids=str,
)
def test_canonical_vjp_matches_jax_conv_gradient(x64, kwargs, spatial):
    layer = Conv(3, **kwargs)
    params, _ = _init(layer, (*spatial, 2), np.float64)
    x = _data((2, *spatial, 2)).astype(np.float64)
    loss = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, {}, x)[0])), argnums=(0, 1)))
    with nnjax.config.kernels("cpu"):
        fast = loss(params, x)
    with nnjax.config.kernels("generic"):  # the same jitted function traces again: the choice is in its cache key
        reference = loss(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), fast, reference)


@pytest.mark.parametrize("mode", ["cpu", "generic"])
def test_canonical_vjp_is_the_cpu_form_without_groups_only(mode):
    x = np.zeros((1, 6, 6, 2), np.float32)
    for layer, expected in [(Conv(2, 3), mode == "cpu"), (Conv(2, 3, groups=2), False)]:
        params, _ = _init(layer, x.shape[1:])
        with nnjax.config.kernels(mode):
            jaxpr = jax.make_jaxpr(lambda x, layer=layer, params=params: layer.apply(params, {}, x)[0])(x)
        names = {e.primitive.name for e in jaxpr.eqns}
        assert ("custom_vjp_call" in names or "custom_vjp_call_jaxpr" in names) == expected, names
