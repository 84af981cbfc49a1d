"""The checked mode (``nnjax.config.checks``): value checks inside compiled programs, through checkify."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax

KEY = jax.random.key(0)
MLP = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(3))
X = np.random.default_rng(0).random((16, 4), np.float32)
Y = np.arange(16) % 3
XENT = nnjax.losses.softmax_cross_entropy


@pytest.fixture
def checked_mode():
    with nnjax.config.checks(True):
        yield


def test_off_by_default_and_restored_after_with():
    assert not nnjax.config.checks_enabled()
    with nnjax.config.checks(True):
        assert nnjax.config.checks_enabled()
        with nnjax.config.checks(False):
            assert not nnjax.config.checks_enabled()
        assert nnjax.config.checks_enabled()
    assert not nnjax.config.checks_enabled()
    with pytest.raises(TypeError, match="`enabled`"):
        nnjax.config.checks("yes")


def test_the_environment_variable_turns_it_on():
    from nnjax._src.checks import enabled_by_environment

    assert [enabled_by_environment({"NNJAX_CHECKS": v}) for v in ("1", "true", "0", "False", "")] == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert not enabled_by_environment({})


def test_eager_apply_names_nan_inputs_and_the_first_non_finite_layer(checked_mode):
    params, state = MLP.init(KEY, (4,))
    with pytest.raises(nnjax.config.CheckError, match=r"serial\.apply: argument `x` holds NaN"):
        MLP.apply(params, state, np.full((2, 4), np.nan, np.float32))
    params["dense_2"]["b"] = jnp.full((3,), jnp.inf)
    with pytest.raises(nnjax.config.CheckError, match=r"Dense\(3\)\.apply: the output holds NaN or Inf"):
        MLP.apply(params, state, X)


def test_the_train_step_refuses_labels_out_of_range_that_jit_cannot_see(checked_mode):
    step = nnjax.make_train_step(MLP, XENT, optax.sgd(0.1))
    train_state = nnjax.init_train_state(MLP, optax.sgd(0.1), KEY, (4,))
    with pytest.raises(nnjax.config.CheckError, match=r"`labels` expected values in \[0, 3\).*\[3, 5\]"):
        step(train_state, (jnp.asarray(X), jnp.asarray(Y + 3)))


def test_fit_raises_at_the_first_nan_loss(checked_mode):
    nan_loss = lambda p, t: jnp.mean(jnp.log(p[:, 0] - 1e6))  # noqa: E731
    with pytest.raises(nnjax.config.CheckError, match="the loss is NaN or Inf"):
        nnjax.fit(MLP, nan_loss, optax.sgd(0.1), X, Y, epochs=1, batch_size=8, progress=False)


def test_token_ids_outside_the_vocabulary_in_a_users_own_jit():
    gpt = nnjax.models.GPT(vocab_size=20, max_len=8, hidden=8, depth=1, num_heads=2, mlp_dim=16)
    params, state = gpt.init(KEY, (8,))
    tokens = jnp.full((2, 8), 25)
    with nnjax.config.checks(True):
        with pytest.raises(nnjax.config.CheckError, match=r"token ids in \[0, 20\), given ids in \[25, 25\]"):
            nnjax.config.checked(jax.jit(gpt.apply))(params, state, tokens)
    logits = jax.jit(gpt.apply)(params, state, tokens)[0]  # unchecked: the documented NaN lookup
    assert np.isnan(logits).all()


def test_valid_runs_give_the_unchecked_numbers(checked_mode):
    """Same training, same predictions, with and without checks (grad and vmap go through checkify)."""
    fit = lambda: nnjax.fit(MLP, XENT, optax.sgd(0.1), X, Y, epochs=2, batch_size=8, progress=False)  # noqa: E731
    checked = fit()
    with nnjax.config.checks(False):
        plain = fit()
    np.testing.assert_allclose(checked.history["loss"], plain.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(
        nnjax.predict(MLP, checked.train_state, X), nnjax.predict(MLP, plain.train_state, X), rtol=1e-6
    )
    many = nnjax.fit_many(MLP, XENT, optax.sgd(0.1), X, Y, seeds=[0, 1], epochs=1, batch_size=8, progress=False)
    assert many.history["loss"].shape == (2, 1) and np.isfinite(many.history["loss"]).all()
