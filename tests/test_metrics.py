"""Feature distances, the in-project classifier, and the spectral metrics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.linalg

from sagd_jax.data import default_data_config, get_source
from sagd_jax.data.grf import grf_spectrum
from sagd_jax.evaluation import remove_band
from sagd_jax.images import to_uint8
from sagd_jax.metrics.features import (
    GaussianStats,
    frechet_distance,
    kernel_distance,
    kernel_distance_blocks,
)
from sagd_jax.metrics.spectra import (
    band_energy,
    radial_average,
    radial_power_spectrum,
    radial_spectrum_error_off_band,
    variance_error,
)
from sagd_jax.spectral import parse_bands


def test_frechet_distance_matches_a_float64_sqrtm_reference():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))
    b = rng.standard_normal((300, 12)) * np.linspace(0.5, 2, 12) + 0.3
    sa, sb = GaussianStats.of(a), GaussianStats.of(b)
    root = scipy.linalg.sqrtm(sa.cov @ sb.cov).real
    reference = (np.sum((sa.mean - sb.mean) ** 2) + np.trace(sa.cov) + np.trace(sb.cov)
                 - 2 * np.trace(root))
    assert frechet_distance(sa, sb) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-9)
    # Closed form for diagonal Gaussians: sum (mu diff)^2 + (sqrt(var_a) - sqrt(var_b))^2.
    diag_a = GaussianStats(np.zeros(3), np.diag([1.0, 4.0, 9.0]))
    diag_b = GaussianStats(np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert frechet_distance(diag_a, diag_b) == pytest.approx(3 + 1 + 0 + 4)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    same = kernel_distance(rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16)),
                           num_subsets=50, subset_size=500)
    shifted = kernel_distance(rng.standard_normal((2000, 16)),
                              rng.standard_normal((2000, 16)) + 0.5, num_subsets=50,
                              subset_size=500)
    assert abs(same.mean) < 3 * same.std
    assert shifted.mean > 10 * shifted.std > 0 and shifted.mean > 20 * abs(same.mean)


def test_block_kid_standard_error_matches_the_spread_of_independent_repeats():
    # 40 independent generated sets of 500 against one reference law: the block s.e. of one
    # set must match the spread of KID across sets, and the mean the large-sample KID.
    rng = np.random.default_rng(2)
    draw = lambda n, shift: rng.standard_normal((n, 8)) + shift  # noqa: E731
    repeats = [kernel_distance_blocks(draw(500, 0.3), draw(2000, 0.0), num_blocks=10, seed=i)
               for i in range(40)]
    means = np.array([r.mean for r in repeats])
    typical_sem = np.sqrt(np.mean([r.sem**2 for r in repeats]))
    assert 0.6 < means.std(ddof=1) / typical_sem < 1.6
    population = kernel_distance(draw(4000, 0.3), draw(4000, 0.0), num_subsets=1,
                                 subset_size=4000).mean
    assert abs(means.mean() - population) < 4 * means.std(ddof=1) / np.sqrt(len(means))
    assert repeats[0].block_size == 50 and repeats[0].num_blocks == 10
    with pytest.raises(ValueError, match="KID blocks"):
        kernel_distance_blocks(draw(3, 0.0), draw(3, 0.0), num_blocks=2)


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_classifier_short_recipe_and_feature_distances_on_fashion_mnist():
    from sagd_jax.data.fashion_mnist import load_labeled_fashion_mnist
    from sagd_jax.metrics.classifier import FeatureExtractor, Recipe, train_classifier

    train, test = load_labeled_fashion_mnist("train"), load_labeled_fashion_mnist("test")
    recipe = Recipe()
    params, accuracy = train_classifier(recipe, train, test, max_steps=250, log=lambda m: None)
    assert accuracy >= 0.82  # the full recipe (5 epochs) is documented at >= 0.90
    features = FeatureExtractor(params, recipe, accuracy)
    images = test[0][:4000]
    half_a, half_b = features(images[:2000]), features(images[2000:])
    rng = np.random.default_rng(0)
    flat = images.reshape(len(images), -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(images.shape)
    blurred = remove_band(images.astype(np.float32) / 127.5 - 1, "highpass:0.3")
    stats = GaussianStats.of(half_a)
    fd_self = frechet_distance(stats, GaussianStats.of(half_a))
    fd_halves = frechet_distance(stats, GaussianStats.of(half_b))
    fd_shuffled = frechet_distance(stats, GaussianStats.of(features(shuffled[:2000])))
    fd_blurred = frechet_distance(stats, GaussianStats.of(features(blurred[:2000])))
    assert abs(fd_self) < 1e-4 * fd_halves
    assert fd_shuffled > 20 * fd_halves and fd_blurred > 5 * fd_halves
    kid_halves = kernel_distance(half_a, half_b, num_subsets=20, subset_size=500)
    kid_blurred = kernel_distance(half_a, features(blurred[:2000]), num_subsets=20,
                                  subset_size=500)
    assert abs(kid_halves.mean) < 3 * kid_halves.std + 1e-12
    assert kid_blurred.mean > 10 * max(kid_halves.std, abs(kid_halves.mean))


@pytest.mark.needs_fashion_mnist
def test_the_classifier_is_trained_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    """``load_or_train`` on a 3-step recipe: the second call loads the cached weights (no
    training) and gives the same features; the CLI's flags are the common ones only."""
    from sagd_jax.metrics import classifier
    from sagd_jax.train_classifier import main

    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path))
    recipe = classifier.Recipe(epochs=1, max_steps=3)
    said = []
    first = classifier.load_or_train(recipe, log=said.append)
    assert any("training" in line for line in said) and 0.0 <= first.test_accuracy <= 1.0
    names = sorted(os.listdir(tmp_path / "classifier"))
    assert names == [f"{recipe.name}.json", f"{recipe.name}.msgpack"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(classifier, "train_classifier", no_training)
    said.clear()
    again = classifier.load_or_train(recipe, log=said.append)
    assert said == [f"classifier: loading {tmp_path / 'classifier' / names[1]}"]
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_array_equal(first(images), again(images))
    assert again.test_accuracy == first.test_accuracy and first(images).shape == (5, 256)
    with pytest.raises(ValueError, match="28, 28, 1"):
        first(images[:, :14])
    assert main(["sagd-classifier", "surplus"]) == 2


def grf_images(gamma, rho0=0.1, size=32, count=512):
    cfg = default_data_config()
    cfg.name, cfg.image_size, cfg.channels, cfg.num_examples = "grf", size, 1, count
    cfg.grf.gamma, cfg.grf.rho0 = gamma, rho0
    return get_source(cfg).get(np.arange(count)), cfg


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_radial_spectrum_recovers_the_power_law_of_synthetic_fields(gamma):
    images, _ = grf_images(gamma)
    centers, power = radial_power_spectrum(images, num_bins=12)
    ok = np.isfinite(power) & (centers > 0.1) & (centers < 1.0)
    slope = np.polyfit(np.log(centers[ok] + 0.1), np.log(power[ok]), 1)[0]
    assert slope == pytest.approx(-gamma, abs=0.15)


def test_band_energy_of_a_band_stopped_image_is_zero():
    images, _ = grf_images(1.0, count=16)
    band = parse_bands("bandpass:0.3:0.5")[0]
    stopped = remove_band(images, "bandpass:0.3:0.5")
    total = np.sum(images.astype(np.float64) ** 2) / len(images)
    assert band_energy(images, band) > 0.05 * total
    assert band_energy(stopped, band) < 1e-12 * band_energy(images, band)
    # Energy is conserved across a band and its complement (Parseval).
    complement = band_energy(images, parse_bands("bandstop:0.3:0.5")[0])
    assert band_energy(images, band) + complement == pytest.approx(total, rel=1e-9)


def test_spectrum_error_off_band_ignores_the_band_and_sees_everything_else():
    images, _ = grf_images(1.0, count=16)
    band = parse_bands("bandpass:0.3:0.5")[0]
    stopped = remove_band(images, "bandpass:0.3:0.5")  # differs from images only inside
    off = radial_spectrum_error_off_band(stopped, images, band)
    assert off["mean_abs_log_ratio"] < 1e-6  # float32 round trip
    centers, full = radial_power_spectrum(stopped)  # the whole spectrum sees the band
    assert np.nanmax(np.abs(np.log(full / radial_power_spectrum(images)[1]))) > 5
    # Outside the band every frequency counts: twice the amplitude is log 4 in every bin.
    doubled = radial_spectrum_error_off_band(2.0 * images, images, band)
    assert doubled["mean_abs_log_ratio"] == pytest.approx(np.log(4.0), rel=1e-9)
    # The radial bins lying wholly inside the band have nothing left and are skipped.
    inside = (centers > 0.33) & (centers < 0.47)
    assert inside.any() and np.isnan(np.asarray(off["samples"])[inside]).all()


def test_variance_error_of_exact_samples_sits_at_the_monte_carlo_floor():
    images, cfg = grf_images(1.5, count=2000, size=16)
    c = grf_spectrum(cfg)
    err = variance_error(images, c)
    assert err["mean_abs_log_ratio"] < 1.3 * err["monte_carlo_floor"]
    assert err["mean_abs_log_ratio"] > 0.7 * err["monte_carlo_floor"]
    doubled = variance_error(2 * images, c)
    assert doubled["mean_abs_log_ratio"] == pytest.approx(np.log(4), abs=0.05)
    rho, radial = radial_average(err["ratio"], 16)
    assert np.nanmax(np.abs(radial - 1)) < 0.1 and np.isfinite(radial).sum() >= 12


def test_evaluate_cli_refuses_a_missing_samples_file_in_one_line(tmp_path, run_cli):
    missing = tmp_path / "none" / "samples.npz"
    result = run_cli("sagd_jax.evaluate", f"--samples={missing}")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: --samples={missing}: no such file or folder"]
    assert os.listdir(tmp_path) == []


def test_evaluate_cli_judges_samples_of_a_run_and_writes_one_results_file(tmp_path, run_cli,
                                                                          tiny_config):
    """Twice the run's own grf data as "samples": the spectrum error is log 4 in every bin."""
    from sagd_jax.workdir import Workdir

    config = tiny_config()
    workdir = Workdir(str(tmp_path / "run"))
    workdir.prepare(config)
    images = 2.0 * get_source(config.data).get(np.arange(256)).astype(np.float32)
    folder = tmp_path / "generated"
    folder.mkdir()
    np.savez(folder / "samples.npz", arr_0=to_uint8(images), float32=images)
    (folder / "manifest.json").write_text(f'{{"workdir": "{workdir.path}"}}')
    result = run_cli("sagd_jax.evaluate", f"--samples={folder / 'samples.npz'}",
                     "--max_reference=256")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["spectrum_mean_abs_log_ratio"] == pytest.approx(np.log(4.0), rel=1e-5)
    assert "reference: up to 256 clean grf images" in result.stderr
    report = json.loads((folder / "evaluation.json").read_text())
    assert report["num_samples"] == 256 and report["sampling"] == {"workdir": workdir.path}
    assert (summary["grf_variance_mean_abs_log_ratio"]
            == report["grf_variance"]["mean_abs_log_ratio"])
    assert sorted(os.listdir(folder)) == ["evaluation.json", "evaluation_grf_variance.png",
                                          "evaluation_spectrum.png", "manifest.json",
                                          "samples.npz"]
    out = folder / "evaluation.json"
    assert f"results: {out}" in result.stderr
    # Again: the stored results, printed; nothing rewritten.
    again = run_cli("sagd_jax.evaluate", f"--samples={folder / 'samples.npz'}")
    assert again.returncode == 0 and json.loads(again.stdout) == summary
    assert f"results: {out} (already there" in again.stderr
    assert json.loads(out.read_text()) == report
    # --overwrite computes them again and keeps the old file.
    before = out.read_bytes()
    redone = run_cli("sagd_jax.evaluate", f"--samples={folder / 'samples.npz'}", "--overwrite")
    assert redone.returncode == 0 and json.loads(redone.stdout) == summary
    assert (folder / "evaluation.json.previous").read_bytes() == before
    # A set grown since (or a file of other results) is refused, nothing written.
    grown = np.concatenate([images, images[:44]])
    np.savez(folder / "samples.npz", arr_0=to_uint8(grown), float32=grown)
    listing = sorted(os.listdir(folder))
    grown = run_cli("sagd_jax.evaluate", f"--samples={folder / 'samples.npz'}")
    assert grown.returncode == 2 and grown.stdout == ""
    assert grown.stderr.strip().splitlines() == [
        f"error: --out={out}: holds results of 256 samples, the set has 300; pass --overwrite "
        "(the old file is kept) or another --out"]
    assert sorted(os.listdir(folder)) == listing
