"""The FID experiments (experiments/configs/fid.py through experiments/run.py) end to end on
tiny settings: TFDS cifar10 and celeb_a prepared on disk from random examples (so the
trainer subprocesses read them too), random Inception weights."""

from __future__ import annotations

import json
import math
import os
import types
import warnings

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from sagd_jax.metrics.inception import InceptionFeatures

tfds = pytest.importorskip("tensorflow_datasets")

DRIVER = "experiments.run"
ARMS = ["isotropic", "gamma0.5", "gamma1", "gamma2", "gamma1-lowpass1"]


def prepare_fake_tfds(name: str, root: str, num_examples: int) -> None:
    """Prepare TFDS ``name`` in ``root`` (array_record) from random examples of its own
    features, as ``tfds build`` would from the real files; train and test splits."""
    from tensorflow_datasets.testing.mocking import RandomFakeGenerator

    builder = tfds.builder(name, data_dir=root, file_format="array_record")

    def split_generators(dl_manager):
        return {split: enumerate(RandomFakeGenerator(builder.info.features, num_examples,
                                                     seed=seed))
                for seed, split in enumerate(("train", "test"))}

    builder._split_generators = split_generators
    # Nothing to download (this tfds's download manager needs importlib_resources).
    builder._make_download_manager = lambda *a, **k: types.SimpleNamespace(downloaded_size=0)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


@pytest.fixture(scope="module")
def fake_inputs(tmp_path_factory):
    """A TFDS data folder with 24 random examples per split of cifar10 and celeb_a, and
    random Inception weights: ``(data_dir, weights)``."""
    from sagd_jax.metrics.inception import random_state_dict

    root = tmp_path_factory.mktemp("fid_inputs")
    for name in ("cifar10", "celeb_a"):
        prepare_fake_tfds(name, str(root / "tfds"), 24)
    weights = root / "inception_random.npz"
    np.savez(weights, **random_state_dict(0))
    return str(root / "tfds"), str(weights)


@pytest.fixture
def fid_env(fake_inputs, tmp_path, monkeypatch):
    """The fake TFDS folder as the default data dir (here and in the trainer subprocesses),
    the random Inception weights in ``$SAGD_JAX_INCEPTION`` and a fresh cache."""
    data_dir, weights = fake_inputs
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", data_dir)  # tfds read it on import
    monkeypatch.setenv("SAGD_JAX_INCEPTION", weights)
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_arms_are_the_configs_data(repo):
    """The driver's FID arms are the config file's ARMS, and each changes only noise keys."""
    from experiments.catalog import EXPERIMENTS, _config_module, load_arm_config
    from sagd_jax.config import load_config_file

    fid = _config_module("experiments/configs/fid.py")
    for name, variant, base in (("fid_cifar10", "cifar10", "configs/cifar10_ddpmpp.py:full"),
                                ("fid_celeba64", "celeba64", "configs/celeba64.py:full")):
        exp = EXPERIMENTS[name]
        assert [a.name for a in exp.arms] == ARMS == list(fid.ARMS)
        assert exp.inception and exp.num_samples == 50_000
        literature = load_config_file(os.path.join(repo, base)).to_dict()
        for arm in exp.arms:
            assert arm.variant == variant and dict(arm.overrides) == fid.ARMS[arm.name]
            assert all(key.startswith("noise.") for key in fid.ARMS[arm.name])
            config = load_arm_config(arm, []).to_dict()
            assert config["model"] == literature["model"]
            assert config["optim"] == literature["optim"]
            assert config["diffusion"] == literature["diffusion"]
            assert config["data"] == literature["data"]
            for key in ("num_steps", "batch_size"):
                assert config["train"][key] == literature["train"][key]
            assert config["train"]["eval_every"] > 0 and config["eval"]["num_samples"] >= 10_000
        gammas = [load_arm_config(a, []).noise.gamma for a in exp.arms]
        assert gammas == [0.0, 0.5, 1.0, 2.0, 1.0]
        band = load_arm_config(exp.arms[-1], []).noise
        assert band.bands == fid.BAND and band.project_data


@pytest.mark.slow
def test_check_opens_the_data_or_names_the_build_command(fid_env, run_cli, monkeypatch):
    for name in ("fid_cifar10", "fid_celeba64"):
        result = run_cli(DRIVER, "--check", f"--experiment={name}")
        assert (result.returncode, result.stdout) == (0, f"{name}: ok\n"), result.stderr[-2000:]
    empty = fid_env / "no_tfds"
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(empty))
    result = run_cli(DRIVER, "--check", "--experiment=fid_celeba64")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: arm isotropic: data.name='tfds:celeb_a': not prepared (nothing at "
        f"{empty}/celeb_a/2.1.0); run `tfds build celeb_a --file_format=array_record` or set "
        "data.download=True"]


@pytest.mark.heavy
@pytest.mark.parametrize("name,max_arms", [
    # The first arm of CIFAR-10's (an arm costs 40-90 s here); all five arms' configs of both
    # are checked by test_arms_are_the_configs_data, the driver's handling of several arms by
    # tests/test_experiments.py, and CelebA's own data path (218x178, crop, resize) by
    # tests/test_data_tfds.py, which trains configs/celeba64.py on its mock data.
    ("fid_cifar10", 1),
])
def test_fid_experiment_end_to_end(name, max_arms, fid_env, run_cli):
    tmp_path = fid_env
    arms = ARMS[:max_arms]
    result = run_cli(DRIVER, f"--experiment={name}", "--tiny", f"--root={tmp_path / 'runs'}",
                     f"--out={tmp_path / 'docs'}", f"--max_arms={max_arms}")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    results = json.loads((tmp_path / "docs" / name / "results.json").read_text())
    rows = {row["arm"]: row for row in results["rows"]}
    assert list(rows)[:-1] == arms and list(rows)[-1].startswith("data: ")
    assert sorted(os.listdir(tmp_path / "runs" / name)) == sorted(arms)
    for arm in arms:
        workdir = tmp_path / "runs" / name / arm
        assert f"training {arm}" in result.stderr
        assert os.listdir(workdir / "checkpoints") == ["2"]
        records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        evals = [r for r in records if "fid" in r]
        assert [r["step"] for r in evals] == [2]  # train.eval_every=2 of 2 steps
        assert math.isfinite(evals[0]["fid"]) and math.isfinite(evals[0]["kid"])
        row = rows[arm]
        assert row["steps"] == 2
        assert row["fid_in_training"] == evals[0]["fid"]
        assert row["kid_in_training"] == evals[0]["kid"]
        # The driver's own samples (16, against the same 16 reference images) in the
        # Inception features.
        evaluation = json.loads(
            (workdir / "generated" / "ddpm-2steps-seed0-step2" / "evaluation.json").read_text())
        assert evaluation["inception"]["fid"] == row["inception_fid"] > 0
        assert row["inception_kid_mean"] == evaluation["inception"]["kid"]["mean"]
        assert row["inception_is"] >= 1.0
    assert Image.open(tmp_path / "docs" / name / "samples.png").mode == "RGB"
    table = (tmp_path / "docs" / name / "table.md").read_text()
    header = table.splitlines()[0]
    for column in ("fid_in_training", "kid_in_training", "inception_fid", "inception_kid",
                   "inception_is"):
        assert f"| {column} |" in header
    for arm in arms:
        assert f"| {arm} | 2 |" in table
    # One Inception reference, computed once for every arm and the driver's judging.
    references = os.listdir(tmp_path / "cache" / "inception_reference")
    assert len(references) == 1 and "-train-" in references[0] and "-16-" in references[0]
    # The last arm's FID again from its saved samples and that reference, by pytorch-fid's
    # formula in float64 (scipy's sqrtm of the covariance product).
    samples = tmp_path / "runs" / name / arms[-1] / "generated" / "ddpm-2steps-seed0-step2"
    with np.load(samples / "samples.npz") as f:
        pixels = f["arr_0"]
    features = InceptionFeatures.from_file(os.environ["SAGD_JAX_INCEPTION"], batch_size=8)(
        pixels).astype(np.float64)
    with np.load(tmp_path / "cache" / "inception_reference" / references[0]) as ref:
        mu, sigma = ref["mu"], ref["sigma"]
    cov = np.cov(features, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # 16 samples: singular
        covmean = scipy.linalg.sqrtm(cov @ sigma)
    fid = (np.sum((features.mean(0) - mu) ** 2) + np.trace(cov) + np.trace(sigma)
           - 2 * np.trace(covmean).real)
    np.testing.assert_allclose(rows[arms[-1]]["inception_fid"], fid, rtol=1e-6)
