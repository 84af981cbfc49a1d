"""Per-example gradients, per-example clipping and the DP-SGD step."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import nnjax
from nnjax._src.per_example import (
    clip_per_example,
    make_dp_train_step,
    per_example_grads,
    per_example_norms,
    per_example_value_and_grads,
)

B = 6
LOSS = nnjax.losses.softmax_cross_entropy
# One model object per variant, so the module's jitted functions below compile once for all the tests.
MODEL = nnjax.serial(nnjax.Dense(8), nnjax.Tanh(), nnjax.Dense(3))
DROPOUT_MODEL = nnjax.serial(nnjax.Dense(8), nnjax.Tanh(), nnjax.Dropout(0.5), nnjax.Dense(3))


def _setup(dropout: float = 0.0):
    """The model, parameters of ``model.init``'s structure drawn by NumPy (eager ``jax.random`` draws compile a
    program per shape), its (array-free) state, and a NumPy batch (sliced without eager programs)."""
    assert dropout in (0.0, 0.5)
    model = DROPOUT_MODEL if dropout else MODEL
    shapes, state = jax.eval_shape(lambda: model.init(jax.random.key(0), (5,)))
    assert not jax.tree.leaves(state)
    rs = np.random.RandomState(1)
    x = rs.randn(B, 5).astype(np.float32)
    y = rs.randint(0, 3, size=B).astype(np.int32)
    params = jax.tree.map(lambda a: (0.5 * rs.randn(*a.shape)).astype(np.float32), shapes)
    return model, params, state, x, y


@jax.jit
def _grads(params, state, x, y):
    return per_example_grads(MODEL, LOSS, params, state, (x, y))


@jax.jit
def _batch_grad(params, state, x, y):
    """The gradient of the batch's mean loss (a batch of one: that example's gradient)."""
    return jax.grad(lambda p: LOSS(MODEL.apply(p, state, x, train=True)[0], y))(params)


_clip = jax.jit(clip_per_example)
_norms = jax.jit(per_example_norms)


def _numpy(tree):
    return jax.tree.map(np.asarray, tree)


def _close(a, b, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=1e-5), a, b)


def test_per_example_grads_equal_a_loop_of_single_example_grads():
    _, params, state, x, y = _setup()
    grads = _numpy(_grads(params, state, x, y))
    for i in range(B):
        _close(jax.tree.map(lambda g, i=i: g[i], grads), _batch_grad(params, state, x[i : i + 1], y[i : i + 1]))
    assert grads["dense_0"]["w"].shape == (B, 5, 8)


def test_per_example_grads_with_dropout_use_one_key_per_example():
    model, params, state, x, y = _setup(dropout=0.5)
    loss, key = nnjax.losses.softmax_cross_entropy, jax.random.key(7)
    grads = jax.jit(lambda p, x, y, k: per_example_grads(model, loss, p, state, (x, y), key=k))(params, x, y, key)
    grads = _numpy(grads)

    @jax.jit  # example i's gradient with key i of split(key, B), split and taken inside: no eager programs
    def single(p, xi, yi, key, i):
        k = jax.random.split(key, B)[i]
        return jax.grad(lambda p: loss(model.apply(p, state, xi, key=k, train=True)[0], yi))(p)

    for i in range(B):
        _close(jax.tree.map(lambda g, i=i: g[i], grads), single(params, x[i : i + 1], y[i : i + 1], key, i))
    with pytest.raises(nnjax.LayerError, match="key"):
        per_example_grads(model, loss, params, state, (x, y))  # dropout in training needs a key


def test_mean_of_per_example_grads_is_the_batch_gradient():
    _, params, state, x, y = _setup()
    grads = _numpy(_grads(params, state, x, y))
    _close(jax.tree.map(lambda g: g.mean(0), grads), _batch_grad(params, state, x, y))


def test_per_example_values_and_metrics():
    model, params, state, x, y = _setup()
    loss = nnjax.losses.softmax_cross_entropy
    first_logit = lambda logits, y: logits[0, 0]  # noqa: E731 - on a batch of one: that example's first logit

    @jax.jit  # one program (op by op, each operation was a program of its own)
    def values_and_expected(params, x, y):
        (values, (_, aux)), _ = per_example_value_and_grads(
            model, loss, params, state, (x, y), metrics={"first_logit": first_logit}
        )
        logits = model.apply(params, state, x)[0]
        return values, aux, logits, optax.softmax_cross_entropy_with_integer_labels(logits, y)

    values, aux, logits, want = values_and_expected(params, x, y)
    np.testing.assert_allclose(aux["first_logit"], logits[:, 0], atol=1e-6)
    np.testing.assert_allclose(values, want, atol=1e-6)


def test_clip_per_example_bounds_each_norm_and_keeps_small_ones():
    _, params, state, x, y = _setup()
    grads = _grads(params, state, x, y)
    norms = np.asarray(_norms(grads))
    # hand-computed global norms
    flat = np.concatenate([np.asarray(g).reshape(B, -1) for g in jax.tree.leaves(grads)], axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1), rtol=1e-5)
    max_norm = float(np.median(norms))
    clipped = _clip(grads, max_norm)
    new_norms = np.asarray(_norms(clipped))
    assert (new_norms <= max_norm * (1 + 1e-5)).all()
    small = norms <= max_norm
    assert small.any() and (~small).any()
    np.testing.assert_allclose(new_norms[small], norms[small], rtol=1e-6)  # unchanged
    np.testing.assert_allclose(new_norms[~small], max_norm, rtol=1e-5)  # scaled onto the bound
    # the direction is kept: clipped = grads * (max_norm / norm) for the large ones
    scale = np.minimum(1.0, max_norm / norms)  # the test side in NumPy
    _close(clipped, jax.tree.map(lambda g: g * scale.reshape((B,) + (1,) * (g.ndim - 1)), _numpy(grads)))
    # and the sum agrees with Optax's DP clipping primitive (compiled: op by op, each operation was a program)
    summed, _ = jax.jit(optax.per_example_global_norm_clip)(jax.tree.leaves(grads), max_norm)
    _close([g.sum(0) for g in jax.tree.leaves(_numpy(clipped))], summed, atol=1e-5)


def test_dp_step_without_noise_or_clipping_is_the_ordinary_step():
    model, _, _, x, y = _setup()
    loss, opt = nnjax.losses.softmax_cross_entropy, optax.sgd(0.1)
    ts = nnjax.init_train_state(model, opt, jax.random.key(0), (5,))
    dp = jax.jit(make_dp_train_step(model, loss, opt, l2_norm_clip=1e9, noise_multiplier=0.0, jit=False))
    plain = jax.jit(nnjax.make_train_step(model, loss, opt, jit=False))
    (a, ma), (b, mb) = dp(ts, (x, y)), plain(ts, (x, y))
    _close(a.params, b.params)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    assert float(ma["clipped_fraction"]) == 0.0


def test_dp_step_clips_then_noises_reproducibly():
    model, params, state, x, y = _setup()
    loss, opt = nnjax.losses.softmax_cross_entropy, optax.sgd(1.0)
    ts = nnjax.init_train_state(model, opt, jax.random.key(0), (5,))
    clip = 0.05
    no_noise = jax.jit(make_dp_train_step(model, loss, opt, l2_norm_clip=clip, noise_multiplier=0.0, jit=False))
    new, metrics = no_noise(ts, (x, y))
    grads = _grads(ts.params, ts.state, x, y)
    want = jax.tree.map(lambda p, g: p - g.mean(0), _numpy(ts.params), _numpy(_clip(grads, clip)))  # NumPy
    _close(new.params, want)
    assert float(metrics["clipped_fraction"]) == 1.0
    noisy = make_dp_train_step(model, loss, opt, l2_norm_clip=clip, noise_multiplier=1.0)
    copy = lambda tree: jax.tree.map(lambda a: jax.device_put(np.array(a)), tree)  # noqa: E731 - no program
    a, _ = noisy(copy(ts), (x, y))  # the jitted step donates its input: each call gets new arrays
    b, _ = noisy(copy(ts), (x, y))
    _close(a.params, b.params, atol=0)  # same key -> same noise
    delta = jax.tree.map(lambda u, v: u - v, _numpy(a.params), want)
    noise_std = np.std(delta["dense_0"]["w"])
    np.testing.assert_allclose(noise_std, clip * 1.0 / B, rtol=0.35)  # sigma * C / batch


def test_dp_training_reaches_accuracy_with_fit_style_loop():
    rs = np.random.RandomState(0)
    x = rs.randn(512, 4).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 1.0]) > 0).astype(np.int32)
    model = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(2))
    loss, opt = nnjax.losses.softmax_cross_entropy, optax.adam(1e-2)
    ts = nnjax.init_train_state(model, opt, jax.random.key(0), (4,))
    step = make_dp_train_step(model, loss, opt, l2_norm_clip=1.0, noise_multiplier=0.5, jit=False)
    epoch = jax.jit(lambda ts, xs, ys: jax.lax.scan(lambda t, b: step(t, b), ts, (xs, ys)))
    for _ in range(4):
        ts, metrics = epoch(ts, x.reshape(16, 32, 4), y.reshape(16, 32))
    accuracy = nnjax.evaluate(model, ts, x, y, loss=loss, metrics={"acc": nnjax.metrics.accuracy})["acc"]
    assert accuracy > 0.9, accuracy
    assert metrics["clipped_fraction"].shape == (16,)
