"""Log-likelihood through the probability-flow ODE (``sagd_jax.log_density``, and its command
line ``sagd_jax.likelihood``).

References: with the exact Gaussian model the flow is linear per bin, ``x_1 = x0 sqrt(V_1 /
V_tmin)``, so the model's density is ``N(0, S_1^2 V_tmin / V_1)`` per bin in closed form
(``V_t = A_t^2 c + S_t^2``); isotropic noise against a dense float64 pixel-space VP
computation (its own ODE, score and Jacobian trace); Hutchinson's estimate unbiased within its
standard error; bits per dimension of a uniform density.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.gaussian import GaussianData
from sagd_jax.log_density import (
    BIN_WIDTH,
    bits_per_dim,
    log_likelihood,
    supported_dimensions,
)
from sagd_jax.process import DiffusionProcess
from sagd_jax.schedules import VPSDE
from sagd_jax.spectral import SpectralCovariance, half_plane_multiplicity
from sagd_jax.time_grids import make_grid

H = W = 8


def closed_form(process: DiffusionProcess, data: GaussianData, x0) -> np.ndarray:
    """``log N(x0; 0, S_1^2 V_tmin / V_1)`` per image, on the support, float64."""
    def marginal(t):
        a, s2 = (np.asarray(v, np.float64)[0] for v in
                 process.spectral_coefficients(jnp.full((1,), t, jnp.float32)))
        return a**2 * c + s2, s2

    c = np.asarray(data.spectrum, np.float64)
    (v1, s21), (v0, _) = marginal(1.0), marginal(process.schedule.t_min)
    support = np.asarray(process.cov.support)
    var = np.where(support, s21 * v0 / v1, 1.0)[..., None]
    mult = half_plane_multiplicity(process.cov.height, process.cov.width)
    weight = (support * np.broadcast_to(mult, c.shape))[..., None]
    spec = np.fft.rfft2(np.asarray(x0, np.float64), axes=(1, 2), norm="ortho")
    return -0.5 * np.sum((np.abs(spec) ** 2 / var + np.log(2 * np.pi * var)) * weight,
                         axis=(1, 2, 3))


@pytest.mark.parametrize("bands", ["", "bandstop:0.3:0.6"])
def test_exact_trace_equals_the_closed_form(bands):
    process = DiffusionProcess(cov=SpectralCovariance.create(H, W, gamma=1.0, bands=bands),
                               schedule=VPSDE())
    data = GaussianData.power_law(H, W, gamma=2.0)
    x0 = process.cov.project(data.sample(jax.random.key(0), (8, H, W, 2)))
    ll = np.asarray(log_likelihood(process, data.eps_fn(process), x0, jax.random.key(1),
                                   steps=50, trace="exact"))
    np.testing.assert_allclose(ll, closed_form(process, data, x0), rtol=1e-5, atol=1e-3)
    assert supported_dimensions(process, 2) == (48 if bands else 64) * 2


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe):
    process = DiffusionProcess(cov=SpectralCovariance.create(H, W, gamma=1.0, bands="lowpass::1"),
                               schedule=VPSDE())
    data = GaussianData.power_law(H, W, gamma=2.0)
    x0 = process.cov.project(data.sample(jax.random.key(2), (64, H, W, 1)))
    ll = np.asarray(log_likelihood(process, data.eps_fn(process), x0, jax.random.key(3),
                                   steps=40, probes=2, probe=probe))
    diff = ll - closed_form(process, data, x0)
    sem = diff.std(ddof=1) / np.sqrt(len(diff))
    assert 0 < sem and abs(diff.mean()) < 4 * sem, (diff.mean(), sem)


def test_isotropic_equals_a_dense_vp_computation():
    """gamma 0: SAGD's estimate is plain VP diffusion's, here computed in float64 on dense
    64x64 pixel-space matrices: exact score ``-(alpha^2 C + sigma^2 I)^-1 x``, velocity
    ``-beta/2 (x + sigma^2 score)``, its Jacobian's trace, the same RK4 on the same grid."""
    process = DiffusionProcess(cov=SpectralCovariance.create(H, W, gamma=0.0), schedule=VPSDE())
    data = GaussianData.power_law(H, W, gamma=1.5)
    x0 = data.sample(jax.random.key(4), (3, H, W, 1))
    steps = 30
    ours = np.asarray(log_likelihood(process, data.eps_fn(process), x0, jax.random.key(5),
                                     steps=steps, trace="exact"))
    # C as a dense matrix: apply the spectrum to each pixel basis image.
    eye = np.eye(H * W).reshape(H * W, H, W)
    spec = np.fft.rfft2(eye, axes=(1, 2), norm="ortho") * np.asarray(data.spectrum, np.float64)
    cov = np.fft.irfft2(spec, s=(H, W), axes=(1, 2), norm="ortho").reshape(H * W, H * W)
    schedule = VPSDE()
    times = make_grid(process, steps + 1, "logsnr")[::-1]

    def field(x, t):
        log_a2 = -(schedule.beta_min * t + 0.5 * (schedule.beta_max - schedule.beta_min) * t**2)
        alpha2, beta = math.exp(log_a2), schedule.beta_min + t * (schedule.beta_max
                                                                  - schedule.beta_min)
        sigma2 = -math.expm1(log_a2)
        inv = np.linalg.inv(alpha2 * cov + sigma2 * np.eye(H * W))
        jac = -0.5 * beta * (np.eye(H * W) - inv)  # v = f x - g2 / 2 score
        return jac @ x, np.trace(jac)

    for i, image in enumerate(np.asarray(x0, np.float64).reshape(3, -1)):
        x, total = image, 0.0
        for t, s in zip(times[:-1], times[1:], strict=True):
            h = s - t
            k1, d1 = field(x, t)
            k2, d2 = field(x + 0.5 * h * k1, t + 0.5 * h)
            k3, d3 = field(x + 0.5 * h * k2, t + 0.5 * h)
            k4, d4 = field(x + h * k3, s)
            x, total = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), total + h / 6 * (
                d1 + 2 * d2 + 2 * d3 + d4)
        log_a2 = -(schedule.beta_min + 0.5 * (schedule.beta_max - schedule.beta_min))
        var1 = -math.expm1(log_a2)  # the prior N(0, sigma_1^2 I)
        prior = -0.5 * (x @ x / var1 + H * W * math.log(2 * math.pi * var1))
        assert ours[i] == pytest.approx(prior + total, rel=1e-5, abs=2e-3)


def test_bits_per_dim_of_a_uniform_density_is_log2_of_the_levels():
    """A uniform density on [-1, 1]^D gives log2(255) bits: one of 255 equal bins of 2/255."""
    dims = 100
    assert bits_per_dim(np.array([-dims * math.log(2.0)]), dims)[0] == pytest.approx(
        math.log2(255))
    assert BIN_WIDTH == pytest.approx(2 / 255)


@pytest.mark.slow
def test_likelihood_cli_on_the_exact_model_and_a_trained_run(tmp_path, tiny_config, run_cli,
                                                             tiny_cli_overrides):
    from sagd_jax.data import grf_model
    from sagd_jax.evaluation import reference_images
    from sagd_jax.run import Run

    workdir = tmp_path / "grf"
    trained = run_cli("sagd_jax.main", "--config=configs/quickstart.py", "--config.data.name=grf",
                      "--config.data.image_size=16", *tiny_cli_overrides,
                      f"--workdir={workdir}", "--config.train.num_steps=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    args = [f"--workdir={workdir}", "--num_images=8"]
    exact = run_cli("sagd_jax.likelihood", *args, "--ode_steps=20", "--model=exact",
                    "--trace=exact")
    assert exact.returncode == 0, exact.stderr[-3000:]
    path = workdir / "likelihood" / "exact-20steps-exact-seed0.json"
    results = json.loads(path.read_text())
    run = Run.from_workdir(str(workdir))
    images, _ = reference_images(run.config.data, 8)
    expected = -closed_form(run.process, grf_model(run.config.data), images) / results[
        "dimensions"]
    assert results["nats_per_dim"]["mean"] == pytest.approx(expected.mean(), rel=1e-4)
    assert results["bits_per_dim"]["mean"] == pytest.approx(expected.mean() / math.log(2),
                                                            rel=1e-4)
    again = run_cli("sagd_jax.likelihood", *args, "--ode_steps=20", "--model=exact",
                    "--trace=exact")
    assert again.returncode == 2 and "never overwritten" in again.stderr
    ema = run_cli("sagd_jax.likelihood", *args, "--ode_steps=8")
    assert ema.returncode == 0, ema.stderr[-3000:]
    report = json.loads((workdir / "likelihood" / "ema-8steps-hutchinson-seed0.json")
                        .read_text())
    assert report["checkpoint_step"] == 2 and np.isfinite(report["bits_per_dim"]["mean"])
    assert report["bits_per_dim"]["sem"] > 0
    missing = run_cli("sagd_jax.likelihood")
    assert missing.returncode == 2 and "--workdir" in missing.stderr


def test_the_likelihood_command_refuses_a_missing_run_and_bad_flags_in_one_line(tmp_path,
                                                                               run_cli):
    absent = tmp_path / "absent"
    missing = run_cli("sagd_jax.likelihood", f"--workdir={absent}")
    assert missing.returncode == 2 and missing.stdout == ""
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(absent) in line
    for flag in ("--num_images=0", "--probes=0", "--ode_steps=0"):
        bad = run_cli("sagd_jax.likelihood", f"--workdir={absent}", flag)
        assert bad.returncode == 2, flag
        (line,) = bad.stderr.strip().splitlines()
        assert line.startswith(f"error: {flag.split('=')[0]}"), line
    assert not absent.exists()
