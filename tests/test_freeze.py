"""Freezing by path: the optimizer leaves frozen leaves alone, and the step computes no gradient for them."""

import jax
import numpy as np
import optax
import pytest

import nnjax


def _model():
    backbone = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(8), nnjax.Tanh())
    return nnjax.serial(("backbone", backbone), head=nnjax.Dense(3))


def _data(n=48):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 4).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)


def test_patterns_select_by_path_and_ancestors():
    params, _ = _model().init(jax.random.key(0), (4,))
    for where in ("backbone", "backbone/*", ["backbone/dense_0", "backbone/dense_2"], lambda p: p[:8] == "backbone"):
        opt = nnjax.freeze(optax.sgd(1.0), params, where)
        assert [opt.frozen(p) for p in ("backbone/dense_0/w", "backbone/dense_2/b", "head/w")] == [True, True, False]
    only_w = nnjax.freeze(optax.sgd(1.0), params, "*/w")
    assert only_w.frozen("head/w") and not only_w.frozen("head/b")


def test_freeze_errors_name_the_argument():
    params, _ = _model().init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"`where` \('encoder/\*'\) selects no parameter; .*'head/w'"):
        nnjax.freeze(optax.sgd(1.0), params, "encoder/*")
    with pytest.raises(ValueError, match="selects every parameter"):
        nnjax.freeze(optax.sgd(1.0), params, "*")
    with pytest.raises(TypeError, match="`where` expected a path pattern"):
        nnjax.freeze(optax.sgd(1.0), params, 3)


def test_frozen_fit_equals_hand_written_multi_transform():
    """fit with nnjax.freeze: the backbone stays bit-identical and the head trains exactly as with a
    hand-written optax.multi_transform (whose step still differentiates the backbone)."""
    model, (x, y) = _model(), _data()
    params, _ = model.init(jax.random.key(0), (4,))
    labels = {"backbone": jax.tree.map(lambda _: "frozen", params["backbone"]), "head": {"w": "train", "b": "train"}}
    by_hand = optax.multi_transform({"train": optax.adam(0.05), "frozen": optax.set_to_zero()}, labels)
    loss = nnjax.losses.softmax_cross_entropy
    ours = nnjax.fit(
        model,
        loss,
        nnjax.freeze(optax.adam(0.05), params, "backbone"),
        x,
        y,
        params=params,
        epochs=3,
        batch_size=16,
        progress=False,
    )
    theirs = nnjax.fit(model, loss, by_hand, x, y, params=params, epochs=3, batch_size=16, progress=False)
    for a, b in zip(
        jax.tree.leaves(ours.train_state.params["backbone"]), jax.tree.leaves(params["backbone"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        ours.train_state.params["head"]["w"], theirs.train_state.params["head"]["w"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(ours.history["loss"], theirs.history["loss"], rtol=1e-5)
    assert ours.history["loss"][-1] < ours.history["loss"][0]


def _dots(step, ts, batch):
    return str(jax.make_jaxpr(step)(ts, batch)).count("dot_general")


def test_frozen_step_does_not_differentiate_the_backbone():
    model, (x, y) = _model(), _data(8)
    params, _ = model.init(jax.random.key(0), (4,))
    loss = nnjax.losses.softmax_cross_entropy
    full_opt, frozen_opt = optax.sgd(0.1), nnjax.freeze(optax.sgd(0.1), params, "backbone/*")
    full = nnjax.make_train_step(model, loss, full_opt, jit=False)
    frozen = nnjax.make_train_step(model, loss, frozen_opt, jit=False)
    ts_full = nnjax.init_train_state(model, full_opt, jax.random.key(0), (4,), params=params)
    ts_frozen = nnjax.init_train_state(model, frozen_opt, jax.random.key(0), (4,), params=params)
    # forward: 3 matmuls; full backward: head w, head input, dense_2 w, dense_2 input, dense_0 w = 5 more;
    # frozen backward: the head's w only
    assert _dots(full, ts_full, (x, y)) == 3 + 5
    assert _dots(frozen, ts_frozen, (x, y)) == 3 + 1
    new_full, _ = jax.jit(full)(ts_full, (x, y))
    new_frozen, _ = jax.jit(frozen)(ts_frozen, (x, y))
    np.testing.assert_allclose(new_frozen.params["head"]["w"], new_full.params["head"]["w"], rtol=1e-6)
    np.testing.assert_array_equal(new_frozen.params["backbone"]["dense_0"]["w"], params["backbone"]["dense_0"]["w"])


def test_summary_counts_trainable_and_frozen():
    model = _model()
    params, _ = model.init(jax.random.key(0), (4,))
    opt = nnjax.freeze(optax.sgd(0.1), params, "backbone")
    info = nnjax.summarize(model, (4,), flops=False, frozen=opt)
    assert info.total_params == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    assert info.frozen_params == (4 * 8 + 8) + (8 * 8 + 8)
    text = nnjax.summary(model, (4,), flops=False, show=False, frozen="backbone")
    assert "Trainable params: 27  Frozen params: 112" in text
    assert "Frozen" not in nnjax.summary(model, (4,), flops=False, show=False)


def test_fit_many_takes_a_frozen_optimizer():
    model, (x, y) = _model(), _data(32)
    params, _ = model.init(jax.random.key(0), (4,))
    opt = nnjax.freeze(optax.adam(0.05), params, "backbone")
    assert isinstance(opt, optax.GradientTransformation)
    many = nnjax.fit_many(
        model, nnjax.losses.softmax_cross_entropy, opt, x, y, seeds=[0, 1], epochs=2, batch_size=16, progress=False
    )
    for i, seed in enumerate((0, 1)):
        start = nnjax.init_train_state(model, opt, jax.random.key(seed), (4,)).params
        np.testing.assert_array_equal(
            many.best(i).params["backbone"]["dense_0"]["w"], start["backbone"]["dense_0"]["w"]
        )
        assert not np.array_equal(many.best(i).params["head"]["w"], start["head"]["w"])
