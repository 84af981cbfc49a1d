"""The mistakes campaign: what new users get wrong, and the error each gets.

Every case is a common mistake (a Keras, stax or PyTorch habit, a wrong argument, data that would train
silently on garbage). Rule: each raises nnjax's own error or ValueError/TypeError/KeyError, and the message
names the argument or the layer (the regex) and says what was expected. Nearly all fail before anything
compiles, so the whole table runs in a few seconds.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax import losses

KEY = jax.random.key(0)
MLP = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(3))
BN_MLP = nnjax.serial(nnjax.Dense(8), nnjax.BatchNorm())
X = np.random.default_rng(0).random((16, 4), np.float32)
Y = np.arange(16) % 3
XENT = losses.softmax_cross_entropy


def _params(model=MLP, shape=(4,)):
    return model.init(KEY, shape)


def _fit(model=MLP, loss=XENT, optimizer=None, x=X, y=Y, **kwargs):
    optimizer = optax.sgd(0.1) if optimizer is None else optimizer
    return nnjax.fit(model, loss, optimizer, x, y, epochs=1, batch_size=8, progress=False, **kwargs)


def _fit_many(**kwargs):
    kwargs = {"optimizer": optax.adam, "seeds": [0], "epochs": 1, "progress": False, **kwargs}
    return nnjax.fit_many(MLP, XENT, kwargs.pop("optimizer"), X, Y, **kwargs)


def _apply_other_model_params():
    other = nnjax.serial(nnjax.Dense(8), nnjax.Tanh(), nnjax.Dense(3))
    params, _ = _params(other)
    return MLP.apply(params, _params()[1], X)


def _gpt(vocab=20):
    return nnjax.models.GPT(vocab_size=vocab, max_len=8, hidden=8, depth=1, num_heads=2, mlp_dim=16)


class Mistake(NamedTuple):
    run: Callable[[], object]
    error: type[BaseException]
    names: str  # a regex the message must match: the argument or the layer


MISTAKES: dict[str, Mistake] = {
    # init
    "init: an int input_shape": Mistake(lambda: MLP.init(KEY, 4), TypeError, r"serial\.init.*`input_shape`.*\(4,\)"),
    "init: a Keras (None, 4) input_shape": Mistake(lambda: MLP.init(KEY, (None, 4)), TypeError, r"`input_shape`.*None"),
    "init: an int seed as the key": Mistake(
        lambda: nnjax.Dense(3).init(0, (4,)), TypeError, r"Dense\(3\)\.init.*`key`.*jax\.random\.key"
    ),
    "init: an int dtype": Mistake(lambda: MLP.init(KEY, (4,), 3), TypeError, r"`dtype`.*floating"),
    "init: no input_shape": Mistake(lambda: MLP.init(KEY), TypeError, r"serial\.init.*input_shape"),
    "init_train_state: an int seed": Mistake(
        lambda: nnjax.init_train_state(MLP, optax.sgd(0.1), 0, (4,)), TypeError, r"init_train_state.*`key`"
    ),
    "init_train_state: an optimizer factory": Mistake(
        lambda: nnjax.init_train_state(MLP, optax.adam, KEY, (4,)), TypeError, r"`optimizer`.*adam\(1e-3\)"
    ),
    "init_train_state: a list of layers": Mistake(
        lambda: nnjax.init_train_state([nnjax.Dense(3)], optax.sgd(0.1), KEY, (4,)), TypeError, r"`model`.*serial"
    ),
    # apply
    "apply: a Keras-style call": Mistake(lambda: nnjax.Dense(3)(X), TypeError, r"Dense\(3\).*layer\.apply"),
    "apply: no state (stax habit)": Mistake(lambda: MLP.apply(_params()[0], X), TypeError, r"serial\.apply.*state"),
    "apply: key and train positional": Mistake(
        lambda: MLP.apply(*_params(), X, KEY), TypeError, r"serial\.apply.*keyword-only"
    ),
    "apply: params of another model": Mistake(_apply_other_model_params, ValueError, r"serial.*`params`.*relu_1"),
    "apply: BatchNorm state {}": Mistake(
        lambda: BN_MLP.apply(_params(BN_MLP)[0], {}, X, train=True), ValueError, r"serial.*`state`.*batch_norm_1"
    ),
    "apply: BatchNorm state None": Mistake(
        lambda: BN_MLP.apply(_params(BN_MLP)[0], None, X, train=True), ValueError, r"serial.*`state`.*NoneType"
    ),
    "apply: an int key for Dropout": Mistake(
        lambda: nnjax.Dropout(0.5).apply({}, {}, X, key=42, train=True), TypeError, r"Dropout\(0\.5\)\.apply.*`key`"
    ),
    "apply: BatchNorm training on one example": Mistake(
        lambda: BN_MLP.apply(*_params(BN_MLP), X[:1], train=True), ValueError, r"serial\[1\] > BatchNorm.*one value"
    ),
    "apply: BatchNorm training under vmap over examples": Mistake(
        lambda: jax.vmap(lambda x: BN_MLP.apply(*_params(BN_MLP), x, train=True)[0])(X[:, None]),
        ValueError,
        r"BatchNorm.*per-example",
    ),
    "apply: residual params of a serial": Mistake(
        lambda: nnjax.residual(nnjax.Dense(4)).apply(*_params(nnjax.serial(nnjax.Dense(4))), X),
        ValueError,
        r"Residual.*`params`.*body",
    ),
    # fit
    "fit: an optimizer as a string": Mistake(lambda: _fit(optimizer="adam"), TypeError, r"`optimizer`.*optax\.adam"),
    "fit: an uncalled optimizer factory": Mistake(lambda: _fit(optimizer=optax.adam), TypeError, r"`optimizer`.*call"),
    "fit: a list of layers as the model": Mistake(lambda: _fit(model=[nnjax.Dense(3)]), TypeError, r"`model`.*serial"),
    "fit: an uncalled layer constructor": Mistake(
        lambda: _fit(model=nnjax.Dense), TypeError, r"`model`.*Dense\(\.\.\.\)"
    ),
    "fit: metrics as a list": Mistake(lambda: _fit(metrics=["accuracy"]), TypeError, r"`metrics`.*dict"),
    "fit: one callback not in a list": Mistake(
        lambda: _fit(callbacks=lambda *a: False), TypeError, r"`callbacks`.*\[callback\]"
    ),
    "fit: params where a train state goes": Mistake(
        lambda: _fit(train_state=_params()[0]), TypeError, r"`train_state`.*params="
    ),
    "fit: a loss that returns a vector": Mistake(
        lambda: _fit(loss=lambda p, t: jnp.sum(p, -1)), TypeError, r"loss.*scalar.*\(8,\)"
    ),
    "fit: a README-style loss_fn(params, x, y)": Mistake(
        lambda: _fit(loss=lambda params, x, y: 0.0), TypeError, r"`loss`.*3 required.*objective"
    ),
    "fit: an objective that returns a bare loss": Mistake(
        lambda: _fit(loss=nnjax.objective(lambda p, s, b, *, key, train: jnp.float32(0.0))),
        TypeError,
        r"objective.*\(loss, \(new_state, aux\)\)",
    ),
    "fit: NaN targets": Mistake(
        lambda: _fit(model=nnjax.Dense(1), loss=losses.mse, y=np.full((16, 1), np.nan, np.float32)),
        ValueError,
        r"`y` holds 16 NaN",
    ),
    "fit: labels out of range": Mistake(lambda: _fit(y=Y + 3), ValueError, r"`labels`.*\[0, 3\)"),
    "fit: token ids outside the vocabulary": Mistake(
        lambda: _fit(
            model=_gpt(20),
            loss=losses.softmax_cross_entropy,
            x=np.full((16, 8), 25, np.int32),
            y=np.zeros((16, 8), np.int32),
        ),
        ValueError,
        r"`x`.*token ids in \[0, 20\)",
    ),
    "fit: an empty data set": Mistake(lambda: _fit(x=X[:0], y=Y[:0]), ValueError, r"at least one example"),
    "fit: epochs=True": Mistake(
        lambda: nnjax.fit(MLP, XENT, optax.sgd(0.1), X, Y, epochs=True, progress=False), ValueError, r"`epochs`"
    ),
    # fit_many and fit_stream
    "fit_many: no seeds": Mistake(lambda: _fit_many(seeds=[]), ValueError, r"`seeds`.*at least one"),
    "fit_many: an int for seeds": Mistake(lambda: _fit_many(seeds=3), TypeError, r"`seeds`.*list"),
    "fit_many: an unknown hyperparameter": Mistake(
        lambda: _fit_many(hyperparams={"learning_rte": [0.1]}), TypeError, r"`hyperparams`.*learning_rte"
    ),
    "fit_many: zipped lists of two lengths": Mistake(
        lambda: _fit_many(hyperparams={"learning_rate": [0.1, 0.2], "b1": [0.9]}, grid=False),
        ValueError,
        r"`learning_rate` 2, `b1` 1",
    ),
    "fit_many: a string optimizer": Mistake(lambda: _fit_many(optimizer="adam"), TypeError, r"`optimizer`"),
    "fit_stream: a generator as the source": Mistake(
        lambda: nnjax.fit_stream(MLP, XENT, optax.sgd(0.1), (b for b in [(X, Y)]), epochs=1, input_shape=(4,)),
        TypeError,
        r"`batches`.*lambda epoch",
    ),
    "fit_stream: a string optimizer": Mistake(
        lambda: nnjax.fit_stream(MLP, XENT, "sgd", lambda e: [(X, Y)], epochs=1), TypeError, r"`optimizer`"
    ),
    # steps, inference, transforms
    "make_dp_train_step: a negative clip norm": Mistake(
        lambda: nnjax.per_example.make_dp_train_step(
            MLP, XENT, optax.sgd(0.1), l2_norm_clip=-1.0, noise_multiplier=1.0
        ),
        ValueError,
        r"`l2_norm_clip`.*positive",
    ),
    "make_dp_train_step: a zero clip norm": Mistake(
        lambda: nnjax.per_example.make_dp_train_step(MLP, XENT, optax.sgd(0.1), l2_norm_clip=0.0, noise_multiplier=1.0),
        ValueError,
        r"`l2_norm_clip`.*0",
    ),
    "make_dp_train_step: negative noise": Mistake(
        lambda: nnjax.per_example.make_dp_train_step(MLP, XENT, optax.sgd(0.1), l2_norm_clip=1.0, noise_multiplier=-1),
        ValueError,
        r"`noise_multiplier`",
    ),
    "loss: an empty batch": Mistake(
        lambda: losses.mse(jnp.zeros((0, 2)), jnp.zeros((0, 2))), ValueError, r"mse.*empty"
    ),
    "predict: one unbatched example": Mistake(
        lambda: nnjax.predict(MLP, nnjax.init_train_state(MLP, optax.sgd(0.1), KEY, (4,)), X[0]),
        ValueError,
        r"predict: argument `x`.*\(4,\).*\[None\]",
    ),
    "generate: an unbatched prompt": Mistake(
        lambda: nnjax.models.generate(_gpt(), _params(_gpt(), (8,))[0], jnp.ones((4,), jnp.int32), 2),
        ValueError,
        r"generate: argument `prompt`.*prompt\[None\]",
    ),
    "generate: a float prompt": Mistake(
        lambda: nnjax.models.generate(_gpt(), _params(_gpt(), (8,))[0], jnp.ones((1, 4)), 2),
        TypeError,
        r"generate: argument `prompt`.*integer",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_mistake_gets_a_clear_error(case):
    mistake = MISTAKES[case]
    with pytest.raises(mistake.error) as caught:
        mistake.run()
    message = str(caught.value)
    assert re.search(mistake.names, message, re.S), message
    assert "expected" in message or "Hint" in message, message


def test_campaign_size():
    """The campaign covers every family the issue names (init, apply, fit, ensembles, steps, inference)."""
    families = {case.split(":")[0].split(" ")[0] for case in MISTAKES}
    assert {"init", "apply", "fit", "fit_many", "fit_stream", "predict", "generate", "loss"} <= families
    assert len(MISTAKES) >= 45


def test_a_nan_loss_under_the_default_policy_warns_once_naming_the_epoch_and_the_remedy():
    nan_loss = lambda p, t: jnp.mean(jnp.log(p[:, 0] - 1e6))  # noqa: E731 - log of a negative: NaN
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = nnjax.fit(MLP, nan_loss, optax.sgd(0.1), X, Y, epochs=2, batch_size=8, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert np.isnan(result.history["loss"]).all()
    assert len(messages) == 1 and "epoch 1" in messages[0] and "nonfinite='halt'" in messages[0], messages


def test_no_warning_for_a_finite_run_or_a_chosen_policy():
    nan_loss = lambda p, t: jnp.mean(jnp.log(p[:, 0] - 1e6))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit()
        nnjax.fit(MLP, nan_loss, optax.sgd(0.1), X, Y, epochs=1, batch_size=8, progress=False, nonfinite="skip")


def test_checks_do_not_change_valid_results():
    """The wrapped init/apply give what the layer's own functions give, under jit, grad and vmap."""
    params, state = MLP.init(KEY, (4,))
    raw_init, raw_apply = MLP.init.__wrapped__, MLP.apply.__wrapped__
    raw_params = raw_init(KEY, (4,))[0]
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, raw_params))
    y = jax.jit(MLP.apply)(params, state, X)[0]
    np.testing.assert_allclose(y, raw_apply(params, state, X)[0], rtol=1e-6)
    grads = jax.grad(lambda p: MLP.apply(p, state, X)[0].sum())(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    keys = jax.random.split(KEY, 3)
    stacked = jax.vmap(lambda k: MLP.init(k, (4,))[0])(keys)
    assert stacked["dense_0"]["w"].shape == (3, 4, 8)


def test_inference_and_step_builders_check_their_arguments():
    params = _params()[0]
    with pytest.raises(TypeError, match=r"predict: argument `train_state`.*result\.train_state"):
        nnjax.predict(MLP, params, X)
    with pytest.raises(TypeError, match=r"evaluate: argument `model`.*serial"):
        nnjax.evaluate([nnjax.Dense(3)], None, X, Y, loss=XENT)
    with pytest.raises(TypeError, match=r"make_train_step: argument `optimizer`"):
        nnjax.make_train_step(MLP, XENT, "sgd")
    with pytest.raises(TypeError, match=r"make_eval_step: argument `model`"):
        nnjax.make_eval_step(nnjax.Dense, XENT)
    train_state = nnjax.init_train_state(MLP, optax.sgd(0.1), KEY, (4,))
    logs = nnjax.evaluate(MLP, train_state, X.tolist(), Y.tolist(), loss=XENT)  # lists are accepted, as in fit
    assert np.isfinite(logs["loss"])



def test_wrappers_keep_the_vocabulary_bound():
    """serial, remat and the zoo's renaming pass Embedding's input range on, so fit still checks token ids."""
    from nnjax._src.models import renamed

    embed = nnjax.Embedding(10, 4)
    for layer in (nnjax.serial(embed, nnjax.Dense(3)), nnjax.remat(embed), renamed(embed, "Tokens")):
        assert layer.input_range == (0, 10), layer.name
