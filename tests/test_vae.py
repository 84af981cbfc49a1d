"""examples/vae.py: a VAE of named parts trained by fit with a key-taking objective."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "vae.py"


def load():
    spec = importlib.util.spec_from_file_location("vae", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_reports_both_terms_every_epoch_and_plots(tmp_path):
    vae = load()
    result = vae.train_and_evaluate({"epochs": 3, "progress": False, "plot": str(tmp_path / "vae.png")})
    history = result["history"]
    assert list(history) == ["loss", "kl", "reconstruction", "val_loss", "val_kl", "val_reconstruction"]
    assert all(len(v) == 3 for v in history.values())
    np.testing.assert_allclose(np.add(history["kl"], history["reconstruction"]), history["loss"], rtol=1e-5)
    assert history["loss"][-1] < history["loss"][0]
    assert result["entropy_floor"] < result["baseline_nll"]
    assert sorted(result["train_state"].params) == ["decoder", "encoder"]
    assert (tmp_path / "vae.png").stat().st_size > 10_000


def test_independent_pixels_baseline_and_entropy_floor_by_hand():
    vae = load()
    x_train = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)  # means 0.5 and 0 (clipped to 1e-3)
    x_test = np.array([[1.0, 0.0]], np.float32)
    assert vae.independent_pixels_nll(x_train, x_test) == pytest.approx(np.log(2) - np.log(1 - 1e-3), rel=1e-5)
    assert vae.entropy_floor(np.array([[0.5, 1.0]], np.float32)) == pytest.approx(np.log(2), rel=1e-5)


@pytest.mark.slow
def test_default_run_beats_independent_pixels_by_3_nats():
    result = load().train_and_evaluate({"progress": False})
    assert result["test_neg_elbo"] < result["baseline_nll"] - 3.0  # measured: 23.5 vs 27.1 nats per image
    assert result["test_kl"] > 1.0  # the latent is used
