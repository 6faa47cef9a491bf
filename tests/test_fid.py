"""Inception FID/KID/IS of image sets: reference statistics of a data split (computed once,
cached by dataset, split, size and preprocessing), published statistics, the evaluator's
Inception metrics and its offline behaviour, and the trainer's in-training evaluation.

The network runs with random weights (``inception.random_state_dict``): the real file cannot
be downloaded here; its exactness against torch-fidelity is tests/test_inception.py's."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sagd_jax.config import default_config
from sagd_jax.images import to_uint8
from sagd_jax.metrics import fid, inception
from sagd_jax.metrics.features import GaussianStats, frechet_distance

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inception") / "random.npz"
    np.savez(path, **inception.random_state_dict(0))
    return str(path)


@pytest.fixture(scope="module")
def extractor(weights):
    """Inception at 75x75 input: other features than FID's 299, 16x cheaper (these tests
    check the statistics and the plumbing, not the network)."""
    return inception.InceptionFeatures.from_file(weights, batch_size=40, input_size=75)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """No user cache, no weights from the environment, no network."""
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setenv(inception.URL_ENV_VAR, "http://127.0.0.1:9/closed.pth")


def _patches_config(count: int = 120, size: int = 32, channels: int = 3):
    config = default_config()
    config.data.update(dict(name="natural_patches", image_size=size, channels=channels,
                            num_examples=count))
    return config


def _blur(images: np.ndarray, width: int) -> np.ndarray:
    """Box blur of uint8 images over ``width`` x ``width`` pixels (edges clamped)."""
    x = images.astype(np.float64)
    pad = width // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = sum(x[:, i:i + images.shape[1], j:j + images.shape[2]]
              for i in range(width) for j in range(width)) / width**2
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _noisy(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, std, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_fid_of_a_split_against_itself_is_zero_and_grows_with_blur_and_noise(extractor,
                                                                             tmp_path):
    data = _patches_config(count=40).data
    reference, path = fid.compute_reference(data, extractor, "train", 40)
    assert path.startswith(str(tmp_path / "cache" / "inception_reference"))
    _, chunks = fid.clean_pixels(data, "train", 40)
    images = np.concatenate(list(chunks))
    assert images.dtype == np.uint8 and images.shape == (40, 32, 32, 3)
    same = fid.inception_metrics(images, extractor, reference, num_subsets=10,
                                 subset_size=20)
    # ~0 up to the round-off of square roots of a rank-40 covariance's null eigenvalues
    scale = np.trace(reference.stats.cov)
    assert abs(same["fid"]) < 1e-5 * scale
    assert abs(same["kid"]["mean"]) < 3 * same["kid"]["std"] + 1e-9
    assert same["inception_score"]["num_splits"] == 10 and same["inception_score"]["mean"] > 1

    def fid_of(images):
        return frechet_distance(reference.stats, GaussianStats.of(extractor(images)))

    blurred = [fid_of(_blur(images, w)) for w in (3, 7)]
    noisy = [fid_of(_noisy(images, s)) for s in (10, 40)]
    assert 0 < blurred[0] < blurred[1], blurred
    assert 0 < noisy[0] < noisy[1], noisy
    assert min(blurred[0], noisy[0]) > 100 * abs(same["fid"])


def test_the_reference_is_cached_by_split_size_and_preprocessing(extractor, monkeypatch):
    data = _patches_config(count=40).data
    first, path = fid.compute_reference(data, extractor, "train", 40)
    stamp = os.stat(path).st_mtime_ns

    def no_features(*args, **kwargs):
        raise AssertionError("the cached reference was recomputed")

    monkeypatch.setattr(extractor, "features_and_logits", no_features)
    again, same_path = fid.compute_reference(data, extractor, "train", 40)
    assert same_path == path and os.stat(path).st_mtime_ns == stamp
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.stats.cov, first.stats.cov)
    names = {fid.reference_name(data, "train", 40, extractor.name)}
    for key, value in (("center_crop_fraction", 0.8), ("crop", "random"), ("resize", False),
                       ("image_size", 16)):
        changed = data.copy_and_resolve_references()
        changed[key] = value
        names.add(fid.reference_name(changed, "train", 40, extractor.name))
    names.add(fid.reference_name(data, "test", 40, extractor.name))
    names.add(fid.reference_name(data, "train", 39, extractor.name))
    names.add(fid.reference_name(data, "train", 40, "other-weights.pth"))
    assert len(names) == 8


@pytest.mark.slow
def test_published_statistics_give_the_fid_of_the_computed_ones(extractor, tmp_path):
    data = _patches_config(count=30).data
    reference, _ = fid.compute_reference(data, extractor, "train", 30)
    published = tmp_path / "cifar10_pytorch_fid.npz"  # pytorch-fid's / EDM's layout
    np.savez(published, mu=reference.stats.mean.astype(np.float32),
             sigma=reference.stats.cov)
    loaded = fid.load_reference(str(published))
    assert loaded.features is None
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (20, 24, 24, 3), dtype=np.uint8)
    ours = fid.inception_metrics(images, extractor, reference, 5, 20)
    theirs = fid.inception_metrics(images, extractor, loaded, 5, 20)
    assert theirs["fid"] == pytest.approx(ours["fid"], rel=1e-6)
    assert "kid" in ours and "kid" not in theirs
    feats = extractor(images)
    assert ours["fid"] == pytest.approx(
        frechet_distance(GaussianStats.of(feats), GaussianStats.of(reference.features)),
        rel=1e-9)


def _error_line(stderr):
    """The one error line of a failed download, after its one retry's warning."""
    *retried, line = stderr.strip().splitlines()
    assert len(retried) == 1 and retried[0].endswith("; trying again"), retried
    return line


def _rgb_run_with_samples(tmp_path, config):
    from sagd_jax.data import get_source
    from sagd_jax.workdir import Workdir

    workdir = Workdir(str(tmp_path / "run"))
    workdir.prepare(config)
    images = get_source(config.data).get(np.arange(24)).astype(np.float32)
    images = np.clip(images + np.random.default_rng(0).normal(0, 0.2, images.shape), -1, 1)
    folder = tmp_path / "generated"
    folder.mkdir()
    np.savez(folder / "samples.npz", arr_0=to_uint8(images),
             float32=images.astype(np.float32))
    (folder / "manifest.json").write_text(json.dumps({"workdir": workdir.path}))
    return folder


@pytest.mark.slow
def test_evaluate_reports_inception_fid_kid_and_is_of_rgb_samples(tmp_path, run_cli, weights):
    folder = _rgb_run_with_samples(tmp_path, _patches_config(count=32))
    result = run_cli("sagd_jax.evaluate", f"--samples={folder / 'samples.npz'}",
                     f"--inception_weights={weights}", "--inception_reference_images=32",
                     "--num_subsets=5", "--subset_size=20")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    report = json.loads((folder / "evaluation.json").read_text())["inception"]
    assert summary["inception_fid"] == report["fid"] > 0
    assert report["kid"]["subset_size"] == 20 and report["inception_score"]["mean"] >= 1
    assert report["inception_weights"] == "random.npz"
    assert report["inception_reference"].startswith("natural_patches-train-32x32x3-32-")
    cached = os.listdir(tmp_path / "cache" / "inception_reference")
    assert cached == [report["inception_reference"] + ".npz"]


def test_evaluate_without_weights_or_network_stops_in_one_line_and_writes_nothing(
        tmp_path, run_cli):
    folder = _rgb_run_with_samples(tmp_path, _patches_config(count=32))
    before = sorted(os.listdir(folder))
    result = run_cli("sagd_jax.evaluate", f"--samples={folder / 'samples.npz'}")
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert line.startswith("error: Inception weights: no pt_inception-2015-12-05-6726825d.pth "
                           "(download failed:")
    assert inception.WEIGHTS_URL in line and "--inception_weights=PATH" in line
    assert sorted(os.listdir(folder)) == before and not (tmp_path / "cache").exists()
    off = run_cli("sagd_jax.evaluate", f"--samples={folder / 'samples.npz'}",
                  "--inception=off")
    assert off.returncode == 0, off.stderr[-2000:]
    assert "inception" not in json.loads((folder / "evaluation.json").read_text())


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_grayscale_28px_data_keep_the_classifier_metrics_without_inception_weights(
        tmp_path, monkeypatch):
    from sagd_jax import console, evaluation
    from sagd_jax.metrics.classifier import Recipe

    config = default_config()  # Fashion-MNIST 28x28x1
    folder = _rgb_run_with_samples(tmp_path, config)
    said = []
    monkeypatch.setattr(console, "info", lambda msg, *a, **k: said.append(msg % a))
    results = evaluation.evaluate(str(folder / "samples.npz"), max_reference=64,
                                num_subsets=5, subset_size=20,
                                classifier="on",
                                classifier_recipe=Recipe(epochs=1, max_steps=20))
    assert "fd" in results and "kid" in results and "inception" not in results
    assert any(m.startswith("inception: skipped (Inception weights: no pt_inception")
               and "downloads are off" in m for m in said), said


@pytest.fixture
def trainer_flags(tiny_cli_overrides):
    """Flags of a tiny grf run (the trainer evaluates any data; a workdir is added)."""
    return ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.sample_every=100000",
            "--config.train.num_steps=4", *tiny_cli_overrides]


@pytest.mark.slow
def test_training_evaluates_fid_and_kid_every_eval_every_steps(tmp_path, run_cli, weights,
                                                              trainer_flags):
    from sagd_jax.workdir import Workdir

    overrides = [f"--config.{k}={v}" for k, v in {
        "train.eval_every": 2, "eval.num_samples": 8,
        "eval.batch_size": 4, "eval.steps": 2, "eval.reference_images": 16,
        "eval.inception_weights": weights}.items()]
    result = run_cli("sagd_jax.main", *trainer_flags, *overrides,
                     f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in Workdir(str(tmp_path / "run")).metrics() if "fid" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["fid"] > 0 and np.isfinite(r["kid"]) and r["kid_std"] >= 0 for r in records)
    assert "step 4: FID " in result.stderr
    last = Workdir(str(tmp_path / "run")).last_metrics()
    assert "loss" in last and "fid" in last


def test_training_without_the_inception_weights_stops_before_writing(tmp_path, run_cli,
                                                                    trainer_flags):
    result = run_cli("sagd_jax.main", *trainer_flags, "--config.train.eval_every=2",
                     f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert line.startswith("error: Inception weights: no pt_inception")
    assert not (tmp_path / "run").exists()


REFERENCE_FLAGS = ["--config=configs/quickstart.py", "--config.data.name=natural_patches",
                   "--config.data.image_size=32", "--config.data.num_examples=12",
                   "--max_images=12", "--batch_size=12"]


def test_the_reference_command_refuses_missing_weights_and_bad_flags_in_one_line(
        tmp_path, run_cli):
    missing = run_cli("sagd_jax.fid_reference", *REFERENCE_FLAGS)
    assert missing.returncode == 2 and missing.stdout == ""
    line = _error_line(missing.stderr)
    assert line.startswith("error: Inception weights: no pt_inception-2015-12-05-6726825d.pth")
    bad = run_cli("sagd_jax.fid_reference", *REFERENCE_FLAGS, "--max_images=1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: --max_images")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_the_reference_command_writes_the_cache_once(tmp_path, run_cli, weights):
    flags = REFERENCE_FLAGS
    first = run_cli("sagd_jax.fid_reference", *flags, f"--inception_weights={weights}")
    assert first.returncode == 0, first.stderr[-2000:]
    path = first.stdout.strip()
    assert os.path.dirname(path) == str(tmp_path / "cache" / "inception_reference")
    assert os.path.basename(path).startswith("natural_patches-train-32x32x1-12-")
    with np.load(path) as data:
        assert data["mu"].shape == (2048,) and data["sigma"].shape == (2048, 2048)
        assert data["features"].shape == (12, 2048) and int(data["num_images"]) == 12
    stamp = os.stat(path).st_mtime_ns
    again = run_cli("sagd_jax.fid_reference", *flags, f"--inception_weights={weights}")
    assert again.returncode == 0 and again.stdout.strip() == path
    assert os.stat(path).st_mtime_ns == stamp
