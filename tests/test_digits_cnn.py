"""The digits CNN example: a quick smoke run in the default suite, the full accuracy run marked slow."""

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.py"


def load():
    spec = importlib.util.spec_from_file_location("digits_cnn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_one_short_epoch_learns_something():
    result = load().train_and_evaluate({"epochs": 1, "train_limit": 512, "batch_size": 16, "progress": False})
    assert result["epochs"] == 1 and set(result) >= {"test_accuracy", "test_loss", "train_loss", "train_seconds"}
    assert result["test_accuracy"] > 0.4  # 32 Adam steps on 512 images: far above chance (0.1)


def test_models_output_ten_logits():
    module = load()
    assert module.digits_model().output_shape((8, 8, 1)) == (10,)
    assert module.mnist_model().output_shape((28, 28, 1)) == (10,)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match=r"unknown config keys \['epoch'\]"):
        load().train_and_evaluate({"epoch": 1})


@pytest.mark.slow
def test_default_run_reaches_98_percent():
    result = load().train_and_evaluate({"progress": False})
    assert result["test_accuracy"] >= 0.98
