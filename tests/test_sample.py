"""The sampling CLI: chunked, resumable, sharded; the exact Gaussian model through it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sagd_jax.data import grf_model
from sagd_jax.data.grf import grf_spectrum
from sagd_jax.gaussian import sampler_output_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.sample import SampleRequest, generate, to_uint8
from sagd_jax.spectral import half_plane_multiplicity
from sagd_jax.train.loop import train_and_evaluate
from sagd_jax.workdir import Workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    workdir = str(tmp_path_factory.mktemp("trained"))
    train_and_evaluate(tiny_config(**{"train.num_steps": 2, "train.checkpoint_every": 1}),
                       workdir)
    return workdir


def test_resumed_sampling_equals_uninterrupted_bit_for_bit(trained, tmp_path):
    request = SampleRequest(num_samples=10, sampler="ddim", steps=3, eta=0.5, chunk_size=4)
    straight = generate(trained, request, str(tmp_path / "a"))
    assert generate(trained, request, str(tmp_path / "b"), max_chunks=1) is None
    assert sorted(os.listdir(tmp_path / "b" / "chunks")) == ["chunk_00000.npz"]
    assert generate(trained, request, str(tmp_path / "b"), max_chunks=1) is None
    resumed = generate(trained, request, str(tmp_path / "b"))
    with np.load(straight) as a, np.load(resumed) as b:
        assert a["arr_0"].shape == (10, 16, 16, 1) and a["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["float32"], b["float32"])
        np.testing.assert_array_equal(a["arr_0"], to_uint8(a["float32"]))
        assert len(np.unique(a["float32"][:, 0, 0, 0])) == 10  # chunks differ
    assert os.path.exists(tmp_path / "a" / "grid.png")
    manifest = json.load(open(tmp_path / "a" / "manifest.json"))
    assert manifest["checkpoint_step"] == 2 and manifest["eta"] == 0.5
    # Another checkpoint (by --checkpoint_step) gives other images; other settings in the same
    # output folder are refused.
    older = generate(trained, SampleRequest(**{**request.__dict__, "checkpoint_step": 1}),
                     str(tmp_path / "c"))
    with np.load(straight) as a, np.load(older) as c:
        assert not np.array_equal(a["float32"], c["float32"])
    with pytest.raises(ValueError, match=r"holds samples made with other settings \(seed\)"):
        generate(trained, SampleRequest(**{**request.__dict__, "seed": 1}), str(tmp_path / "a"))


def test_clipped_sampling_has_its_own_folder_and_stays_in_range(trained):
    request = SampleRequest(num_samples=4, sampler="ddpm", steps=3, chunk_size=4, clip_x0=0.5)
    path = generate(trained, request)
    assert os.path.basename(os.path.dirname(path)) == "ddpm-clip0.5-3steps-seed0-step2"
    manifest = json.load(open(os.path.join(os.path.dirname(path), "manifest.json")))
    assert manifest["clip_x0"] == 0.5
    with np.load(path) as f:  # no bands in the tiny run: the projection is the identity
        assert np.abs(f["float32"]).max() <= 0.5 + 1e-6
    plain = generate(trained, SampleRequest(num_samples=4, sampler="ddpm", steps=3, chunk_size=4))
    assert "clip_x0" not in json.load(open(os.path.join(os.path.dirname(plain), "manifest.json")))


@pytest.mark.parametrize("change, message", [
    (dict(sampler="euler"), "--sampler='euler': must be one of ddpm, "),
    (dict(steps=0), "--steps=0: must be an integer >= 1"),
    (dict(num_samples=0), "--num_samples=0: must be an integer >= 1"),
    (dict(checkpoint_step=7), "no checkpoint of step 7"),
    (dict(eta=0.5), "--eta=0.5: only the ddim sampler takes eta"),
    (dict(sampler="ode_heun", clip_x0=1.0), "--clip_x0=1.0: only the ddpm and ddim samplers"),
    (dict(clip_x0=0.0), "--clip_x0=0.0: must be a finite number in (0, inf)"),
])
def test_bad_sampling_input_is_refused_before_anything_runs(trained, tmp_path, change, message):
    request = SampleRequest(**{**dict(num_samples=4, sampler="ddpm", steps=2), **change})
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(trained, request, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_sample_cli_refuses_another_config_and_a_workdir_without_checkpoints(trained, tmp_path,
                                                                             tiny_config,
                                                                             run_cli):
    def cli(*args):
        return run_cli("sagd_jax.sample", *args)

    other = cli(f"--workdir={trained}", "--num_samples=4", "--config=configs/quickstart.py")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds a run with data.name='grf'" in other.stderr.strip().splitlines()[-1]
    typo = cli(f"--workdir={trained}", "--num_samples=4", "--config=configs/quickstart.py",
               "--config.noise.gama=2")
    assert typo.returncode == 2
    lines = typo.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --config.noise.gama: no such config key; closest: noise.gamma"), lines
    empty = tmp_path / "empty"
    Workdir(str(empty)).prepare(tiny_config())
    result = cli(f"--workdir={empty}", "--num_samples=4")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --workdir={empty}: no "
                                                             "checkpoint")
    assert sorted(os.listdir(empty)) == ["config.json"]


def test_exact_model_through_the_sample_and_evaluate_clis_hits_the_grf_spectrum(tmp_path,
                                                                                tiny_config,
                                                                                run_cli):
    """No training: the exact Gaussian model of grf data, sampled by the CLI, has the known
    per-frequency variance within Monte-Carlo error of the sampler's exact prediction."""
    config = tiny_config(**{"data.grf.gamma": 2.0})
    workdir = tmp_path / "grf"
    Workdir(str(workdir)).prepare(config)
    n, steps = 4096, 50
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--model=exact",
                     f"--num_samples={n}", "--sampler=ode_heun", f"--steps={steps}",
                     "--chunk_size=1024")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = result.stdout.strip().splitlines()[-1]
    assert samples.endswith("ode_heun-50steps-seed0-exact/samples.npz")
    evaluation = run_cli("sagd_jax.evaluate", f"--samples={samples}")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    report = json.load(open(os.path.join(os.path.dirname(samples), "evaluation.json")))
    grf = report["grf_variance"]
    # The exact prediction of this sampler's output variance (its discretisation bias).
    process = DiffusionProcess.from_config(config, 16, 16)
    predicted = sampler_output_spectrum(process, grf_model(config.data), "ode_heun", steps)
    c = grf_spectrum(config.data)
    var = np.load(samples)["float32"].astype(np.float64)
    power = np.mean(np.abs(np.fft.rfft2(var, axes=(1, 2), norm="ortho")) ** 2, axis=(0, 3))
    stderr = np.where(half_plane_multiplicity(16, 16) == 1, np.sqrt(2 / n), np.sqrt(1 / n))
    z = (power / predicted - 1) / stderr
    assert np.all(np.abs(z) < 5) and np.mean(z**2) < 2
    bias = np.mean(np.abs(np.log(predicted / c)))
    assert grf["mean_abs_log_ratio"] < 1.3 * grf["monte_carlo_floor"] + bias
    assert os.path.exists(os.path.join(os.path.dirname(samples), "evaluation_grf_variance.png"))


SHARDED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from sagd_jax.gaussian import GaussianData
    from sagd_jax.process import DiffusionProcess
    from sagd_jax.samplers import get_sampler
    from sagd_jax.sharding import batch_sharding, make_mesh
    from sagd_jax.spectral import SpectralCovariance
    from sagd_jax.schedules import get_schedule
    process = DiffusionProcess(SpectralCovariance.create(8, 8, gamma=1.0),
                               get_schedule("vp_sde"))
    eps_fn = GaussianData.power_law(8, 8, gamma=2.0).eps_fn(process)
    for name in ("ddpm", "ode_heun"):
        sampler = get_sampler(name)
        key = jax.random.key(3)
        plain = sampler(process, eps_fn, key, (16, 8, 8, 1), 5)
        sharded = sampler(process, eps_fn, key, (16, 8, 8, 1), 5,
                          sharding=batch_sharding(make_mesh()))
        assert len(sharded.sharding.device_set) == 4, sharded.sharding
        assert not sharded.sharding.is_fully_replicated
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), rtol=1e-5,
                                   atol=1e-5)
    print("ok")
""")


def test_sharded_sampling_splits_the_batch_and_matches_one_device(repo):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
