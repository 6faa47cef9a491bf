"""EDM preconditioning (``diffusion.parameterization=edm``) against Karras et al.'s formulas,
its round trip and loss weighting, and the exact Gaussian model sampled through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.config import default_config
from sagd_jax.demo import demo_data
from sagd_jax.frequency_schedule import FrequencySchedule
from sagd_jax.gaussian import sampler_output_spectrum
from sagd_jax.metrics.spectra import power_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import get_sampler
from sagd_jax.schedules import VPSDE
from sagd_jax.spectral import SpectralCovariance

H = W = 8


def edm_process(gamma=0.0, bands="", shaped=False) -> DiffusionProcess:
    cov = SpectralCovariance.create(H, W, gamma=gamma, bands=bands)
    process = DiffusionProcess(cov=cov, schedule=VPSDE(), prediction="x0",
                               parameterization="edm", sigma_data=0.5)
    if shaped:
        process = process.replace(shaping=FrequencySchedule.create(cov, blur_sigma_max=1.0))
    return process


def pair(process, seed=0, n=4):
    key = jax.random.key(seed)
    x0 = process.cov.project(jax.random.normal(jax.random.fold_in(key, 1), (n, H, W, 1)) * 0.5)
    eps = process.cov.project(jax.random.normal(jax.random.fold_in(key, 2), (n, H, W, 1)))
    return x0, eps, jnp.linspace(0.02, 1.0, n)


def test_isotropic_edm_is_karras_preconditioning():
    """Sigma = I: with ``r = sigma/alpha`` and ``x~ = x_t/alpha = x0 + r n`` the network sees
    ``x~ / sqrt(r^2 + s_d^2)``, its target is ``(x0 - c_skip x~)/c_out`` and the loss is EDM's
    ``lambda(r) |D - x0|^2`` per dimension with ``lambda = (r^2 + s_d^2) / (r s_d)^2``."""
    process = edm_process()
    x0, eps, t = pair(process)
    alpha, sigma = (np.asarray(v, np.float64) for v in process.coefficients(t))
    r, sd = sigma / alpha, 0.5
    x_t = process.perturb(x0, eps, t)
    xt = np.asarray(x_t, np.float64) / alpha[:, None, None, None]
    c_in = 1 / np.sqrt(r**2 + sd**2)
    c_skip, c_out = sd**2 / (r**2 + sd**2), r * sd / np.sqrt(r**2 + sd**2)
    image, labels = process.network_input(x_t, t)
    np.testing.assert_allclose(image, c_in[:, None, None, None] * xt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(labels, 1000 * np.asarray(t), rtol=1e-6)
    target = (np.asarray(x0, np.float64) - c_skip[:, None, None, None] * xt) / c_out[
        :, None, None, None]
    np.testing.assert_allclose(process.target(x0, eps, t), target, rtol=1e-4, atol=1e-4)
    out = jax.random.normal(jax.random.key(9), x0.shape)
    denoised = c_skip[:, None, None, None] * xt + c_out[:, None, None, None] * np.asarray(out)
    weight = (r**2 + sd**2) / (r * sd) ** 2
    edm_loss = weight * np.mean((denoised - np.asarray(x0, np.float64)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(process.loss(out, x0, eps, t), edm_loss, rtol=1e-4)


@pytest.mark.parametrize("gamma, bands, shaped", [(0.0, "", False), (1.0, "bandstop:0.3:0.6",
                                                                     False), (2.0, "", True)])
def test_round_trip_and_zero_loss(gamma, bands, shaped):
    process = edm_process(gamma, bands, shaped)
    x0, eps, t = pair(process, seed=1)
    x_t = process.perturb(x0, eps, t)
    target = process.target(x0, eps, t)
    np.testing.assert_allclose(process.eps_from_output(target, x_t, t), eps, atol=2e-3)
    assert float(process.loss(target, x0, eps, t).max()) < 1e-9


@pytest.mark.slow
def test_exact_model_through_the_parameterization_reproduces_the_spectrum():
    """The exact model as a network ``F(c_in x~, 1000 t)`` (its Tweedie mean through
    ``c_skip``, ``c_out``), converted back by the process: DDPM and Heun match the exact
    prediction within Monte-Carlo error, as for the plain exact model."""
    process = edm_process(1.0, "bandstop:0.3:0.6")
    data = demo_data(H)

    def network(image, labels):  # F from the exact x0_hat, given only the network's inputs
        t = labels / 1000.0
        inv_alpha, c_in, c_skip, c_out = process.preconditioning(t)
        x_t = image / (c_in * inv_alpha)[:, None, None, None]
        x0_hat = process.denoise(x_t, t, data.eps(process, x_t, t))
        return (x0_hat - (c_skip * inv_alpha)[:, None, None, None] * x_t) / c_out[
            :, None, None, None]

    def eps_fn(x, t):
        return process.eps_from_output(network(*process.network_input(x, t)), x, t)

    n = 2048
    for name, steps in (("ddpm", 200), ("ode_heun", 50)):
        x = get_sampler(name)(process, eps_fn, jax.random.key(2), (n, H, W, 2), steps)
        predicted = sampler_output_spectrum(process, data, name, steps)
        support = np.asarray(process.cov.support)
        z = (power_spectrum(x)[support] / predicted[support] - 1) / np.sqrt(2 / (2 * n))
        assert np.abs(z).max() < 5, name


def test_config_and_training():
    config = default_config()
    config.diffusion.parameterization = "edm"
    with pytest.raises(ValueError, match=r"^diffusion.parameterization='edm': preconditions an "
                                         r"x0 prediction; set diffusion.prediction=x0"):
        DiffusionProcess.from_config(config, H, W)
    config.diffusion.prediction = "x0"
    assert DiffusionProcess.from_config(config, H, W).parameterization == "edm"
    config.diffusion.parameterization = "karras"
    with pytest.raises(ValueError, match=r"^diffusion.parameterization='karras': must be one of"):
        DiffusionProcess.from_config(config, H, W)


@pytest.mark.slow
def test_a_run_trains_with_edm_preconditioning(tmp_path, run_cli, tiny_cli_overrides):
    result = run_cli("sagd_jax.main", "--config=configs/quickstart.py", "--config.data.name=grf",
                     "--config.data.image_size=16", *tiny_cli_overrides,
                     f"--workdir={tmp_path / 'run'}", "--config.train.num_steps=3",
                     "--config.diffusion.prediction=x0",
                     "--config.diffusion.parameterization=edm")
    assert result.returncode == 0, result.stderr[-3000:]
    from sagd_jax.workdir import Workdir

    last = Workdir(str(tmp_path / "run")).last_metrics()
    assert last["step"] == 3 and np.isfinite(last["loss"])
