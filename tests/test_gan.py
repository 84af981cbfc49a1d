"""examples/gan.py: the mode-coverage metrics, the fused pure steps, and (slow) the default run's targets."""

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "gan.py"


def load():
    spec = importlib.util.spec_from_file_location("gan_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gan = load()
CONFIG = gan.GANConfig()
CENTERS = gan.mode_centers(CONFIG)
TINY = dict(steps=40, batch_size=32, hidden=16, latent_dim=4, eval_samples=400, log_every=20)


def metrics(samples):
    return gan.mode_metrics(samples, CENTERS, CONFIG.sigma, CONFIG.min_mode_share)


def test_centers_lie_evenly_on_the_ring():
    assert CENTERS.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(CENTERS, axis=1), CONFIG.radius, rtol=1e-6)
    np.testing.assert_allclose(CENTERS[0], [CONFIG.radius, 0.0], atol=1e-6)
    np.testing.assert_allclose(CENTERS[2], [0.0, CONFIG.radius], atol=1e-6)


def test_samples_at_the_modes_cover_all_of_them_with_full_quality():
    result = metrics(np.repeat(CENTERS, 10, axis=0))
    assert result["modes_covered"] == 8 and result["modes"] == 8
    assert result["high_quality"] == 1.0
    np.testing.assert_allclose(result["mode_shares"], [1 / 8] * 8)


def test_collapsed_samples_cover_only_their_modes():
    samples = np.concatenate([np.repeat(CENTERS[:3], 100, axis=0), np.zeros((100, 2))])  # 3 modes + the centre
    result = metrics(samples)
    assert result["modes_covered"] == 3
    assert result["high_quality"] == pytest.approx(0.75)


def test_quality_counts_only_samples_within_three_sigma():
    sigma = CONFIG.sigma
    inside = CENTERS[0] + np.array([2.9 * sigma, 0.0])
    outside = CENTERS[0] + np.array([3.1 * sigma, 0.0])
    result = metrics(np.stack([inside, outside]))
    assert result["high_quality"] == 0.5
    assert metrics(np.zeros((5, 2)))["modes_covered"] == 0 and metrics(np.zeros((5, 2)))["high_quality"] == 0.0


def test_a_mode_needs_its_minimum_share_to_count():
    # 1000 samples at mode 0 and 20 at mode 1: mode 1 holds ~2% < 1/32 of the samples
    samples = np.concatenate([np.repeat(CENTERS[:1], 1000, axis=0), np.repeat(CENTERS[1:2], 20, axis=0)])
    assert metrics(samples)["modes_covered"] == 1
    samples = np.concatenate([np.repeat(CENTERS[:1], 1000, axis=0), np.repeat(CENTERS[1:2], 40, axis=0)])
    assert metrics(samples)["modes_covered"] == 2


def test_real_data_scores_perfectly_and_mmd_separates_distributions():
    real = gan.sample_data(jax.random.key(0), 4000, CONFIG)
    result = metrics(real)
    assert result["modes_covered"] == 8 and result["high_quality"] > 0.98  # 1 - exp(-9/2) = 98.9% in 2-D
    other = gan.sample_data(jax.random.key(1), 1000, CONFIG)
    assert abs(gan.mmd2(real[:1000], other)) < 0.02
    assert gan.mmd2(real[:1000], other * 0.5) > 0.1


@pytest.mark.slow  # 80 GAN steps in two chunk programs: CI's slow pass
def test_fused_chunks_equal_one_longer_chunk():
    config = gan.GANConfig(**TINY)
    one = gan.make_train_chunk(config, 40)(gan.init_state(config))[0]
    two = gan.init_state(config)
    chunk = gan.make_train_chunk(config, 20)  # the tiny run's chunk
    two = chunk(chunk(two)[0])[0]
    for a, b in zip(
        jax.tree.leaves((one.generator.params, one.discriminator.params)),
        jax.tree.leaves((two.generator.params, two.discriminator.params)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert int(one.generator.step) == int(one.discriminator.step) == 40


def test_batch_must_split_into_packs():
    with pytest.raises(ValueError, match="multiple of `pack`"):
        gan.make_train_step(gan.GANConfig(batch_size=33, pack=2))


def test_tiny_run_reports_every_metric():
    result = gan.train_and_evaluate(TINY)
    assert 0 <= result["modes_covered"] <= 8 and 0.0 <= result["high_quality"] <= 1.0
    assert np.isfinite(result["mmd2"]) and len(result["mode_shares"]) == 8
    assert result["history"]["step"] == [20, 40]
    assert all(np.isfinite(result["history"]["d_loss"])) and all(np.isfinite(result["history"]["g_loss"]))
    assert result["config"]["steps"] == 40 and result["train_seconds"] > 0


def test_main_parses_flags(capsys):
    flags = [
        "--steps",
        "40",
        "--batch-size",
        "32",
        "--hidden",
        "16",
        "--latent-dim",
        "4",
        "--log-every",
        "20",
        "--eval-samples",
        "100",
        "--seed",
        "3",
        "--quiet",
    ]  # the tiny run's program, compiled once
    result = gan.main(flags)
    assert result["config"]["steps"] == 40 and result["config"]["hidden"] == 16 and result["config"]["seed"] == 3
    assert "modes covered" in capsys.readouterr().out


@pytest.mark.slow
def test_default_run_covers_the_modes_with_good_samples():
    result = gan.train_and_evaluate()
    assert result["modes_covered"] >= 7, result["mode_shares"]
    assert result["high_quality"] >= 0.80
