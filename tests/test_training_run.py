"""training_run: fit's fused run as a pure function of its hyperparameters, differentiated and vmapped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax


def _data(n=24, dtype=np.float32):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 3).astype(dtype)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.randn(n, 1)).astype(dtype)
    return x, y


def _model():
    return nnjax.serial(nnjax.Dense(4), nnjax.Tanh(), nnjax.Dense(1))


def _numpy_init(model, seed, dtype=np.float32):
    """``(params, state)`` of ``model.init``'s structure for input (3,), the parameters drawn by NumPy (each
    shape of an eager ``jax.random`` draw would be a compiled program of its own); the state has no arrays."""
    rng = np.random.RandomState(seed)
    params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), (3,), dtype))
    assert not jax.tree.leaves(state)
    return jax.tree.map(lambda s: (0.5 * rng.randn(*s.shape)).astype(dtype), params), state


def test_same_numbers_as_fit():
    x, y = _data()
    val = (x[:8], y[:8])
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.05)
    run = nnjax.training_run(
        _model(),
        nnjax.losses.mse,
        opt,
        x,
        y,
        epochs=3,
        batch_size=8,
        validation_data=val,
        metrics={"mae": nnjax.metrics.mae},
    )
    train_state, history = jax.jit(run)({"learning_rate": 0.05}, jax.random.key(3))
    fitted = nnjax.fit(
        _model(),
        nnjax.losses.mse,
        optax.adam(0.05),
        x,
        y,
        epochs=3,
        batch_size=8,
        seed=3,
        validation_data=val,
        metrics={"mae": nnjax.metrics.mae},
        progress=False,
    )
    assert sorted(history) == sorted(fitted.history) == ["loss", "mae", "val_loss", "val_mae"]
    # Two programs (a traced learning rate here, a constant one in fit) round differently in float32, and
    # Adam's normalized steps carry a rounding difference on: equal to 1e-4, not bit for bit.
    for name, values in fitted.history.items():
        np.testing.assert_allclose(history[name], values, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(train_state.params), jax.tree.leaves(fitted.train_state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert int(train_state.step) == 9


def test_hypergradient_matches_finite_differences_float64(x64):
    """d(validation loss after 2 epochs of Adam)/d(learning rate, weight decay), and d/d(initial params)."""
    x, y = _data(12, np.float64)
    val = _data(30, np.float64)

    def adamw(h):
        return optax.adamw(h["learning_rate"], weight_decay=h["weight_decay"], eps_root=1e-8)

    run = nnjax.training_run(
        _model(), nnjax.losses.mse, adamw, x, y, epochs=2, batch_size=4, validation_data=val, dtype=jnp.float64
    )
    key = jax.random.key(0)
    params, _ = _numpy_init(_model(), 1, np.float64)

    def val_loss(lr, wd, p):
        return run({"params": p, "learning_rate": lr, "weight_decay": wd}, key)[1]["val_loss"][-1]

    # One compiled program: the finite differences take the values of the program that gives the gradient.
    value_and_grad = jax.jit(jax.value_and_grad(val_loss, argnums=(0, 1, 2)))
    forward = lambda lr, wd, p: value_and_grad(lr, wd, p)[0]  # noqa: E731
    g_lr, g_wd, g_params = value_and_grad(0.03, 0.1, params)[1]
    h = 1e-6
    np.testing.assert_allclose(
        g_lr, (forward(0.03 + h, 0.1, params) - forward(0.03 - h, 0.1, params)) / (2 * h), rtol=1e-5
    )
    np.testing.assert_allclose(
        g_wd, (forward(0.03, 0.1 + h, params) - forward(0.03, 0.1 - h, params)) / (2 * h), rtol=1e-5
    )
    direction, _ = _numpy_init(_model(), 2, np.float64)  # the test side in NumPy: no eager programs
    shifted = lambda t: jax.tree.map(lambda a, d: a + t * d, params, direction)  # noqa: E731
    fd = (forward(0.03, 0.1, shifted(h)) - forward(0.03, 0.1, shifted(-h))) / (2 * h)
    directional = sum(np.vdot(g, d) for g, d in zip(jax.tree.leaves(g_params), jax.tree.leaves(direction), strict=True))
    np.testing.assert_allclose(directional, fd, rtol=1e-5)
    assert abs(float(g_lr)) > 1e-3 and abs(float(g_wd)) > 1e-6


def test_injected_hyperparameters_vmap_and_remat():
    x, y = _data()
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    run = nnjax.training_run(_model(), nnjax.losses.mse, opt, x, y, epochs=2, batch_size=8)
    final = lambda lr, key: run({"learning_rate": lr}, key)[1]["loss"][-1]  # noqa: E731
    lrs = jnp.array([0.001, 0.01, 0.05])
    many = jax.jit(jax.vmap(final, in_axes=(0, None)))(lrs, jax.random.key(0))
    # The single run and the vmap over seeds compiled too: run op by op, each eager operation (and the
    # run's scan) was a compiled program of its own.
    np.testing.assert_allclose(many[1], jax.jit(final)(0.01, jax.random.key(0)), rtol=1e-5)
    assert many[2] < many[0]  # more learning lowers the loss on this problem
    over_seeds = jax.jit(lambda key: jax.vmap(final, in_axes=(None, 0))(0.01, jax.random.split(key, 2)))
    seeds = over_seeds(jax.random.key(0))
    assert seeds.shape == (2,) and float(seeds[0]) != float(seeds[1])
    jaxpr = str(jax.make_jaxpr(jax.grad(final))(0.01, jax.random.key(0)))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_training_run_errors():
    x, y = _data()
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    run = nnjax.training_run(_model(), nnjax.losses.mse, opt, x, y, epochs=1)
    # The runs are traced abstractly (jax.eval_shape), as jax.jit traces them: the hyperparameters are checked
    # while tracing, and no initialization program is compiled only to raise.
    with pytest.raises(
        ValueError, match=r"expected keys among the optimizer's injected hyperparameters \['learning_rate'\]"
    ):
        jax.eval_shape(run, {"weight_decay": 0.1}, jax.random.key(0))
    plain = nnjax.training_run(_model(), nnjax.losses.mse, optax.sgd(0.1), x, y, epochs=1)
    with pytest.raises(ValueError, match="the optimizer has no injected hyperparameters"):
        jax.eval_shape(plain, {"learning_rate": 0.1}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"`epochs` expected a positive int, given 0"):
        nnjax.training_run(_model(), nnjax.losses.mse, opt, x, y, epochs=0)
    with pytest.raises(TypeError, match="`optimizer` expected an optax.GradientTransformation or a function"):
        nnjax.training_run(_model(), nnjax.losses.mse, 0.1, x, y, epochs=1)


def test_maml_meta_gradient_through_the_train_step_equals_the_hand_written_one():
    model = nnjax.serial(nnjax.Dense(4), nnjax.Tanh(), nnjax.Dense(1))
    inner = optax.sgd(0.1)
    step = nnjax.make_train_step(model, nnjax.losses.mse, inner, jit=False)
    params, state = _numpy_init(model, 0)
    x, y = _data(8)
    support, query = (x[:4], y[:4]), (x[4:], y[4:])

    def through_step(p):
        ts = nnjax.init_train_state(model, inner, jax.random.key(0), (3,), params=p)
        ts, _ = step(ts, support)
        return nnjax.losses.mse(model.apply(ts.params, state, query[0])[0], query[1])

    def by_hand(p):
        loss = lambda q, batch: nnjax.losses.mse(model.apply(q, state, batch[0])[0], batch[1])  # noqa: E731
        adapted = jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p, support))
        return loss(adapted, query)

    ours, theirs = jax.jit(jax.grad(through_step))(params), jax.jit(jax.grad(by_hand))(params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
