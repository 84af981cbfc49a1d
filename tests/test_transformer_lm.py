"""The Transformer LM example: a tiny run in the default suite, the documented default run as a slow test."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "transformer_lm.py"
spec = importlib.util.spec_from_file_location("transformer_lm", EXAMPLE)
transformer_lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transformer_lm)

TINY = {"length": 4, "d_model": 32, "num_layers": 1, "mlp_dim": 64, "num_train": 2048, "num_test": 256, "steps": 192}


@pytest.mark.slow  # 192 training steps: CI's slow pass (the default suite checks the task and the models' shapes)
def test_tiny_reversal_is_learned():
    result = transformer_lm.train_and_evaluate({**TINY, "verbose": False})
    assert result["greedy_token_accuracy"] >= 0.95, result  # chance is 0.1
    assert result["token_accuracy"] >= 0.95
    assert result["history"]["loss"][-1] < result["history"]["loss"][0] / 10
    sample = result["samples"][0]
    assert sample["prompt"].endswith("|") and len(sample["greedy"]) == len(sample["target"]) == 4


def test_digit_task_layout():
    rng = np.random.default_rng(0)
    seen: set = set()
    train = transformer_lm.digit_task("reverse", 50, 3, rng, seen)
    test = transformer_lm.digit_task("sort", 20, 3, rng, seen)
    assert train.shape == (50, 7) and (train[:, 3] == transformer_lm.SEP).all()
    np.testing.assert_array_equal(train[:, 4:], train[:, 2::-1])
    np.testing.assert_array_equal(test[:, 4:], np.sort(test[:, :3], axis=1))
    assert not {tuple(r) for r in train[:, :3]} & {tuple(r) for r in test[:, :3]}  # held-out strings are new


def test_untied_sinusoidal_and_rope_models_have_the_right_shapes():
    for positional, tie in (("sinusoidal", False), ("rope", True)):
        model = transformer_lm.TransformerLM(
            11, 6, d_model=8, num_heads=2, num_layers=1, mlp_dim=16, positional=positional, tie_embeddings=tie
        )
        params, _ = model.init(jax.random.key(0), (6,))
        assert ("output" in params) == (not tie) and ("learned_positional_embedding_0" in params["body"]) is False
        assert model.output_shape((6,)) == (6, 11)  # traces apply on int tokens
    with pytest.raises(ValueError, match=r"argument `positional` expected one of \['learned', 'rope', 'sinusoidal'\]"):
        transformer_lm.TransformerLM(11, 6, d_model=8, num_heads=2, num_layers=1, mlp_dim=16, positional="alibi")


def test_char_task_windows_and_config_errors():
    text = "abcdefghij" * 20
    train, test, vocab = transformer_lm.char_task(text, 8, 30, 5, np.random.default_rng(0))
    assert vocab == list("abcdefghij") and train.shape == (30, 9) and test.shape == (5, 9)
    assert ((np.diff(train, axis=1) % 10) == 1).all()  # consecutive characters of the text
    with pytest.raises(ValueError, match=r"unknown config keys \['lenght'\]"):
        transformer_lm.train_and_evaluate({"lenght": 4})
    with pytest.raises(ValueError, match=r"task 'chars' needs config\['text_file'\]"):
        transformer_lm.train_and_evaluate({"task": "chars"})


@pytest.mark.slow
def test_chars_task_learns_a_periodic_text(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("abcd" * 400)
    config = {
        **TINY,
        "task": "chars",
        "text_file": str(text),
        "seq_len": 12,
        "num_train": 512,
        "num_test": 64,
        "steps": 96,
    }
    result = transformer_lm.train_and_evaluate({**config, "verbose": False})
    assert result["token_accuracy"] >= 0.9  # a periodic text is predictable after the first characters
    assert set(result["samples"][0]["greedy"]) <= set("abcd")


@pytest.mark.slow
def test_default_config_reverses_digit_strings():
    result = transformer_lm.train_and_evaluate({"verbose": False})
    assert result["greedy_token_accuracy"] >= 0.99 and result["greedy_sequence_accuracy"] >= 0.95, result
