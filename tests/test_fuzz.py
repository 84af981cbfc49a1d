"""Bad-input fuzz: every public layer, loss and metric, valid and invalid inputs drawn by hypothesis.

Rule: a valid input runs and keeps the shape contract (finite output); an invalid one raises ValueError
or TypeError (nnjax's LayerError/LayerTypeError are subclasses) whose message names the layer or function
and the offending shape or dtype: never a raw XLA error, never a silent NaN.

To add a layer: append a ``LayerCase(constructor, shape builder, invalid kinds)`` to ``LAYERS``.
Calls are eager (no jit), so a case costs no compilation beyond the per-shape op cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnjax
from nnjax import losses, metrics

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
dim = st.integers(1, 3)  # few distinct shapes: eager ops compile once per shape


class LayerCase(NamedTuple):
    make: Callable[[Any], nnjax.Layer]  # draw -> layer
    input_shape: Callable[[Any], tuple]  # draw -> one example's valid shape
    invalid: tuple[str, ...]  # which mutations must raise: "rank", "width", "int", "size"


def _features(draw):
    return (draw(dim),) if draw(st.booleans()) else (draw(dim), draw(dim))


def _any_shape(draw):
    return tuple(draw(st.lists(dim, min_size=1, max_size=2)))


def _reshape_case(draw):
    shape = _any_shape(draw)
    target = list(reversed(shape))
    if draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return shape, tuple(target)


LAYERS: dict[str, LayerCase] = {
    "Dense": LayerCase(lambda d: nnjax.Dense(d(dim)), _features, ("rank", "width", "int")),
    "Dense(use_bias=False)": LayerCase(
        lambda d: nnjax.Dense(d(dim), use_bias=False), _features, ("rank", "width", "int")
    ),
    "Dropout": LayerCase(lambda d: nnjax.Dropout(d(st.sampled_from([0.0, 0.25, 0.5]))), _any_shape, ()),
    "Flatten": LayerCase(lambda d: nnjax.Flatten(), _any_shape, ()),
    "Identity": LayerCase(lambda d: nnjax.Identity(), _any_shape, ()),
    **{
        name: LayerCase(lambda d, ctor=ctor: ctor(), _any_shape, ("int",))
        for name, ctor in [
            ("Relu", nnjax.Relu),
            ("Sigmoid", nnjax.Sigmoid),
            ("Tanh", nnjax.Tanh),
            ("Gelu", nnjax.Gelu),
            ("Silu", nnjax.Silu),
            ("Softplus", nnjax.Softplus),
            ("Elu", nnjax.Elu),
            ("LeakyRelu", nnjax.LeakyRelu),
            ("Softmax", nnjax.Softmax),
            ("LogSoftmax", nnjax.LogSoftmax),
            ("Step", nnjax.Step),
            ("StraightThroughStep", nnjax.StraightThroughStep),
        ]
    },
}
RESHAPE = "Reshape"  # drawn with its own target shape (see _layer_case)


def _layer_case(draw, name):
    if name == RESHAPE:
        shape, target = _reshape_case(draw)
        return nnjax.Reshape(target), shape, ("size",) if -1 not in target else ()
    case = LAYERS[name]
    return case.make(draw), case.input_shape(draw), case.invalid


_INIT_CACHE: dict = {}


def _init(name, layer, shape):
    key = (name, layer.name, shape)
    if key not in _INIT_CACHE:
        _INIT_CACHE[key] = (*layer.init(jax.random.key(0), shape), layer.output_shape(shape))
    return _INIT_CACHE[key]


COUNTS = {"layers": 0, "losses": 0, "metrics": 0, "configs": 0}


def _expect_error(fn, *names_and_shapes):
    with pytest.raises((ValueError, TypeError)) as error:
        fn()
    message = str(error.value)
    assert "XlaRuntimeError" not in type(error.value).__name__ and "dot_general" not in message, message
    for needle in names_and_shapes:
        assert str(needle) in message, (needle, message)
    return message


def _cases(default: int) -> list:
    """A fuzz test's case counts: ``default`` derandomized cases in the default suite (each new shape is an
    eager compile: cases cost suite time), five times as many in CI's slow pass."""
    return [default, pytest.param(5 * default, marks=pytest.mark.slow)]


def _fuzz(body: Callable[[Any], None], cases: int) -> None:
    """Runs ``body(data)`` on ``cases`` hypothesis draws."""
    settings(max_examples=cases, **SETTINGS)(given(st.data())(body))()


@pytest.mark.parametrize("cases", _cases(80))
def test_layers(cases):
    _fuzz(_fuzz_a_layer, cases)


def _fuzz_a_layer(data):
    name = data.draw(st.sampled_from([*LAYERS, RESHAPE]))
    layer, shape, invalid = _layer_case(data.draw, name)
    kind = data.draw(st.sampled_from(["valid", "valid", *invalid]))
    batch = data.draw(dim)
    params, state, output_shape = _init(name, layer, shape)
    COUNTS["layers"] += 1
    x = jnp.asarray(np.random.default_rng(batch).normal(size=(batch, *shape)), jnp.float32)
    train = data.draw(st.booleans())
    key = jax.random.key(1) if train else None
    if kind == "valid":
        y, _ = layer.apply(params, state, x, key=key, train=train)
        assert y.shape == (batch, *output_shape), (layer.name, shape, y.shape)
        assert bool(jnp.all(jnp.isfinite(y))), layer.name
        return
    if kind == "rank":
        bad = x.reshape(-1)  # drops the feature axes: (batch * features,)
    elif kind == "width":
        bad = jnp.concatenate([x, x[..., :1]], axis=-1)
    elif kind == "int":
        bad = (x * 10).astype(jnp.int32)
    else:  # "size": one element more per example than Reshape expects
        bad = jnp.concatenate([x.reshape(batch, -1), x.reshape(batch, -1)[:, :1]], axis=1)
    _expect_error(
        lambda: layer.apply(params, state, bad, key=key, train=train),
        layer.name.split("(")[0],
        tuple(bad.shape) if kind != "int" else "int32",
    )


def test_dropout_needs_a_key_in_training():
    layer = nnjax.Dropout(0.5)
    _expect_error(lambda: layer.apply({}, {}, jnp.ones((2, 3)), train=True), "Dropout(0.5)", "`key`")


# Layer configs: positive sizes, rates in range, shapes that make sense.
CONFIGS = [
    (nnjax.Dense, st.one_of(st.integers(-3, 0), st.floats(0.5, 3.0), st.just("8"), st.just(None)), "Dense", "features"),
    (nnjax.Dropout, st.one_of(st.floats(1.0, 5.0), st.floats(-3.0, -1e-3), st.just(float("nan"))), "Dropout", "rate"),
    (nnjax.Reshape, st.sampled_from([(0, 2), (-2, 3), (2.5,), ("a",)]), "Reshape", "shape"),
]

# Found by this fuzz (they raised bare Python/JAX errors naming no layer, or nothing); fixed since.
KNOWN_CONFIG_GAPS = [
    (nnjax.Dense, True, "Dense"),  # bool is an int: Dense(True) builds a 1-unit layer
    (nnjax.Dropout, "0.5", "Dropout"),  # TypeError: '<=' not supported between 'float' and 'str'
    (nnjax.Dropout, None, "Dropout"),
    (nnjax.Reshape, (-1, -1), "Reshape"),  # jax: "can only specify one unknown axis size"
    (nnjax.Reshape, 4, "Reshape"),  # TypeError: 'int' object is not iterable
    (nnjax.LeakyRelu, "a", "LeakyRelu"),  # jax: "Error interpreting argument to leaky_relu"
    (nnjax.Softmax, 1.5, "Softmax"),  # TypeError: 'float' object is not iterable
    (nnjax.Step, "x", "Step"),  # TypeError: '>=' not supported
]


@pytest.mark.parametrize(("ctor", "value", "name"), KNOWN_CONFIG_GAPS)
def test_layer_config_errors_found_by_fuzzing(ctor, value, name):
    def build_and_run():
        layer = ctor(value)
        params, state = layer.init(jax.random.key(0), (4,))
        layer.apply(params, state, jnp.ones((2, 4)), key=jax.random.key(0), train=True)

    _expect_error(build_and_run, name)


@settings(max_examples=100, **SETTINGS)
@given(st.data())
def test_layer_configs(data):
    ctor, values, name, argument = data.draw(st.sampled_from(CONFIGS))
    value = data.draw(values)
    COUNTS["configs"] += 1

    def build_and_run():
        layer = ctor(value)
        params, state = layer.init(jax.random.key(0), (4,))
        layer.apply(params, state, jnp.ones((2, 4)), key=jax.random.key(0), train=True)

    _expect_error(build_and_run, name, argument)


# Losses and metrics: (function, valid (predictions, targets) builder, invalid kinds).
def _float(rng, shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _regression(rng, batch, extra):
    return _float(rng, (batch, *extra)), _float(rng, (batch, *extra))


def _classes(rng, batch, extra, classes=None):
    classes = classes or 3
    return _float(rng, (batch, *extra, classes)), jnp.asarray(rng.integers(0, classes, (batch, *extra)), jnp.int32)


def _binary(rng, batch, extra, values=(0, 1)):
    return _float(rng, (batch, *extra)), jnp.asarray(rng.choice(values, (batch, *extra)), jnp.int32)


def _soft(rng, batch, extra):
    logits = _float(rng, (batch, *extra, 3))
    return logits, jax.nn.softmax(_float(rng, (batch, *extra, 3)))


REGRESSION = ("shape", "int_predictions", "weights")
CLASSIFICATION = ("shape", "int_predictions", "float_labels", "label_range", "weights")
SCORES = ("shape", "float_labels", "label_range", "weights")  # metrics: integer scores are fine for argmax
LOSSES = {
    "mse": (losses.mse, _regression, REGRESSION),
    "half_mse": (losses.half_mse, _regression, REGRESSION),
    "mae": (losses.mae, _regression, REGRESSION),
    "huber": (losses.huber, _regression, REGRESSION),
    "softmax_cross_entropy": (losses.softmax_cross_entropy, _classes, CLASSIFICATION),
    "softmax_cross_entropy_soft": (losses.softmax_cross_entropy_soft, _soft, ("shape", "int_predictions", "weights")),
    "binary_cross_entropy_with_logits": (
        losses.binary_cross_entropy_with_logits,
        _binary,
        ("shape", "int_predictions", "label_range", "weights"),
    ),
    "binary_cross_entropy": (
        lambda p, y, w=None: losses.binary_cross_entropy(
            jax.nn.sigmoid(p) if jnp.issubdtype(p.dtype, jnp.floating) else p, y, w
        ),
        _binary,
        ("shape", "int_predictions", "label_range", "weights"),
    ),
    "hinge": (
        losses.hinge,
        lambda r, b, e: _binary(r, b, e, (-1, 1)),
        ("shape", "int_predictions", "label_range", "weights"),
    ),
}
METRICS = {
    "accuracy": (metrics.accuracy, _classes, SCORES),
    "top_k_accuracy": (lambda p, y, w=None: metrics.top_k_accuracy(p, y, w, k=2), _classes, SCORES),
    "binary_accuracy": (metrics.binary_accuracy, _binary, ("shape", "weights")),
    "mae": (metrics.mae, _regression, REGRESSION),
    "rmse": (metrics.rmse, _regression, REGRESSION),
    "r2_score": (lambda p, y, w=None: metrics.r2_score(p, y), _regression, ("shape", "int_predictions")),
    "confusion_matrix": (
        lambda p, y, w=None: metrics.confusion_matrix(p, y),
        _classes,
        ("shape", "float_labels", "label_range"),
    ),
}


def _mutate(kind, predictions, targets, rng, batch):
    weights = None
    if kind == "shape":
        targets = jnp.concatenate([targets, targets[:1]], axis=0)  # one example more
    elif kind == "int_predictions":
        predictions = (predictions * 10).astype(jnp.int32)
    elif kind == "float_labels":
        targets = targets.astype(jnp.float32)
    elif kind == "label_range":
        bad = 7 if rng.random() < 0.5 else -5  # out of range for every table: classes 3, {0, 1}, {-1, +1}
        targets = targets.at[(0,) * targets.ndim].set(bad)
    elif kind == "weights":
        weights = jnp.ones((batch + 1,), jnp.float32)
    return predictions, targets, weights


def _fuzz_functions(data, table, family, name_of):
    name = data.draw(st.sampled_from(sorted(table)))
    fn, build, invalid = table[name]
    kind = data.draw(st.sampled_from(["valid", "valid", *invalid]))
    batch = data.draw(dim)
    extra = () if data.draw(st.booleans()) else (data.draw(dim),)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    predictions, targets = build(rng, batch, extra)
    COUNTS[family] += 1
    if kind == "valid":
        weights = (
            jnp.asarray(rng.uniform(0.1, 1.0, (batch,)), jnp.float32)
            if data.draw(st.booleans()) and name not in ("r2_score", "confusion_matrix")
            else None
        )
        value = fn(predictions, targets, weights) if weights is not None else fn(predictions, targets)
        if name == "confusion_matrix":
            assert value.shape == (3, 3) and int(value.sum()) == targets.size
        elif name == "r2_score":
            assert value.shape == ()  # may be -inf/NaN for constant targets; checked below
        else:
            assert value.shape == () and bool(jnp.isfinite(value)), (name, value)
        return
    predictions, targets, weights = _mutate(kind, predictions, targets, rng, batch)
    call = (lambda: fn(predictions, targets, weights)) if weights is not None else (lambda: fn(predictions, targets))
    needles = [name_of(name)]
    if kind == "shape":
        needles.append(tuple(targets.shape))
    elif kind == "weights":
        needles.append(tuple(weights.shape))
    elif kind == "int_predictions":
        needles.append("int32")
    elif kind == "float_labels":
        needles.append("float32")
    _expect_error(call, *needles)


@pytest.mark.parametrize("cases", _cases(60))
def test_losses(cases):
    _fuzz(lambda data: _fuzz_functions(data, LOSSES, "losses", lambda n: n), cases)


@pytest.mark.parametrize("cases", _cases(60))
def test_metrics(cases):
    _fuzz(lambda data: _fuzz_functions(data, METRICS, "metrics", lambda n: n), cases)


def test_r2_score_constant_targets_is_not_silently_nan():
    value = metrics.r2_score(jnp.ones((3,)), jnp.ones((3,)))
    assert not bool(jnp.isnan(value))


def test_fuzz_case_count():
    """Runs last in this file: the default suite must have drawn at least 300 cases (derandomized: the same
    ones each run); CI's slow pass draws 1,000 more."""
    total = sum(COUNTS.values())
    print(f"\nfuzz cases: {COUNTS}, total {total}")
    assert total >= 300 or math.isclose(total, 0)  # 0 when run alone with -k
