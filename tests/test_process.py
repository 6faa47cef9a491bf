"""Schedules and the SAGD forward process: closed forms, the whitening identity, targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sagd_jax.config import default_config
from sagd_jax.metrics.spectra import power_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.schedules import VE, VPSDE, Cosine, DDPMLinear, get_schedule, time_grid
from sagd_jax.spectral import Band, SpectralCovariance, radial_frequency

SCHEDULES = [VPSDE(), DDPMLinear(), Cosine(), VE()]
MASKED = dict(gamma=1.0, bands="bandstop:0.3:0.6")


def test_ddpm_linear_matches_the_discrete_chain():
    sched = DDPMLinear()
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    t = np.arange(1, 1001) / 1000
    alpha, sigma = sched.alpha_sigma(t)
    np.testing.assert_allclose(np.asarray(alpha) ** 2, alpha_bar, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(sigma) ** 2, 1 - alpha_bar, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(sched.betas(), betas, rtol=1e-9)


def test_cosine_matches_its_closed_form_before_clipping():
    sched = Cosine()
    t = np.arange(0, 991) / 1000
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    alpha, _ = sched.alpha_sigma(t)
    np.testing.assert_allclose(np.asarray(alpha) ** 2, f / f[0], rtol=1e-4)
    assert sched.betas().max() <= 0.999


def test_vp_sde_and_ve_closed_forms():
    t = np.linspace(0, 1, 11)
    alpha, sigma = VPSDE().alpha_sigma(t)
    expected = np.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2))
    np.testing.assert_allclose(alpha, expected, rtol=1e-6)
    _, ve_sigma = VE(sigma_min=0.01, sigma_max=50.0).alpha_sigma(t)
    np.testing.assert_allclose(ve_sigma, 0.01 * 5000**t, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s.name)
def test_sde_coefficients_are_consistent_with_marginals(sched):
    """f = d log alpha / dt and g2 = d sigma^2/dt - 2 f sigma^2 (checked by autodiff)."""
    # Off the grid of discrete schedules (their beta is piecewise constant).
    t = jnp.asarray([0.0123, 0.2555, 0.5005, 0.7777, 0.9495])
    log_alpha = jax.vmap(jax.grad(lambda u: jnp.log(sched.alpha_sigma(u)[0])))(t)
    dsigma2 = jax.vmap(jax.grad(lambda u: sched.alpha_sigma(u)[1] ** 2))(t)
    f, g2 = sched.sde(t)
    _, sigma = sched.alpha_sigma(t)
    np.testing.assert_allclose(f, log_alpha, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(g2, dsigma2 - 2 * f * sigma**2, rtol=2e-3, atol=1e-5)
    if not isinstance(sched, VE):
        alpha, sigma = sched.alpha_sigma(np.linspace(0, 1, 101))
        np.testing.assert_allclose(np.asarray(alpha) ** 2 + np.asarray(sigma) ** 2, 1, atol=1e-6)


def test_time_grid():
    grid = time_grid(DDPMLinear(), 10)
    assert grid[0] == 1.0 and grid[-1] == 1e-3 and len(np.unique(grid)) == 10
    np.testing.assert_allclose(grid * 1000, np.round(grid * 1000))
    np.testing.assert_allclose(time_grid(VPSDE(), 3), [1.0, 0.5005, 1e-3])
    with pytest.raises(ValueError, match="steps=0"):
        time_grid(VPSDE(), 0)
    with pytest.raises(ValueError, match="steps=1001"):
        time_grid(DDPMLinear(), 1001)
    with pytest.raises(ValueError, match="schedule='nope'"):
        get_schedule("nope")


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s.name)
def test_whitening_identity(sched):
    """SAGD x_t = Sigma^{1/2}(isotropic x_t of y0 = Sigma^{-1/2} x0) on the support, and
    alpha_t x0 off it (docs/math.md section 2)."""
    cov = SpectralCovariance.create(8, 8, **MASKED)
    sagd = DiffusionProcess(cov=cov, schedule=sched)
    iso = DiffusionProcess(cov=SpectralCovariance.isotropic(8, 8), schedule=sched)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (16, 8, 8, 3))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.linspace(0.05, 0.95, 16)
    x_t = sagd.perturb(x0, eps, t)
    via_white = cov.sqrt(iso.perturb(cov.inv_sqrt(x0), eps, t))
    np.testing.assert_allclose(cov.project(x_t), via_white, rtol=1e-4, atol=1e-4)
    alpha, _ = sched.alpha_sigma(t)
    off = x_t - cov.project(x_t)
    np.testing.assert_allclose(
        off, alpha[:, None, None, None] * (x0 - cov.project(x0)), rtol=1e-4, atol=1e-5
    )


def test_marginal_covariance_is_alpha2_C_plus_sigma2_Sigma():
    """Monte-Carlo per-frequency variance of x_t for white data (C = I)."""
    cov = SpectralCovariance.create(8, 8, gamma=2.0)
    proc = DiffusionProcess(cov=cov, schedule=VPSDE())
    n, t = 20000, 0.3
    k1, k2 = jax.random.split(jax.random.key(3))
    x0 = jax.random.normal(k1, (n, 8, 8, 1))
    x_t, _ = proc.marginal_sample(k2, x0, jnp.full((n,), t))
    var = power_spectrum(x_t)
    alpha, sigma = proc.coefficients(t)
    expected = float(alpha) ** 2 + float(sigma) ** 2 * np.asarray(cov.weights, np.float64)
    # Relative standard error of a variance estimate: 1/sqrt(n) (complex bins),
    # sqrt(2/n) (real bins); 5 sigma.
    assert np.abs(var / expected - 1).max() < 5 * np.sqrt(2 / n)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_targets_round_trip_and_loss(prediction):
    cov = SpectralCovariance.create(8, 8, **MASKED)
    proc = DiffusionProcess(cov=cov, schedule=VPSDE(), prediction=prediction)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.normal(k1, (8, 8, 8, 2))
    eps = jax.random.normal(k2, x0.shape)
    t = jax.random.uniform(k3, (8,), minval=0.01, maxval=1.0)
    x_t = proc.perturb(x0, eps, t)
    target = proc.target(x0, eps, t)
    # The target converts back to the true noise on the support.
    np.testing.assert_allclose(
        cov.project(proc.eps_from_output(target, x_t, t)), cov.project(eps), rtol=2e-3, atol=2e-3
    )
    loss = proc.loss(target, x0, eps, t)
    assert loss.shape == (8,) and float(jnp.max(loss)) < 1e-8
    # Components off the support of Sigma never reach x_t: the loss ignores them.
    off_support = x0 - cov.project(x0) if prediction == "x0" else eps - cov.project(eps)
    shifted = proc.loss(target + 3.0 * off_support, x0, eps, t)
    np.testing.assert_allclose(shifted, loss, atol=1e-6)
    grad = jax.grad(lambda out: proc.loss(out, x0, eps, t).mean())(target + 0.1)
    assert np.all(np.isfinite(grad))


def test_eps_loss_of_a_zero_prediction_is_one_whatever_the_mask():
    """Normalisation by trace(P): E ||P eps||^2 / (C trace(P)) = 1."""
    for setting in (dict(), MASKED, dict(bands="lowpass::0.5")):
        cov = SpectralCovariance.create(8, 8, **setting)
        proc = DiffusionProcess(cov=cov, schedule=VPSDE())
        eps = jax.random.normal(jax.random.key(5), (4096, 8, 8, 1))
        loss = proc.loss(jnp.zeros_like(eps), eps, eps, jnp.full((4096,), 0.5))
        assert abs(float(loss.mean()) - 1) < 5 * np.sqrt(2 / (4096 * 64))


def test_score_and_denoiser_closed_forms():
    cov = SpectralCovariance.create(7, 5, **MASKED)
    proc = DiffusionProcess(cov=cov, schedule=Cosine())
    k1, k2 = jax.random.split(jax.random.key(2))
    x0 = jax.random.normal(k1, (4, 7, 5, 3))
    eps = cov.project(jax.random.normal(k2, x0.shape))
    t = jnp.asarray([0.1, 0.4, 0.7, 0.9])
    x_t = proc.perturb(x0, eps, t)
    alpha, sigma = (c[:, None, None, None] for c in proc.coefficients(t))
    # grad log q(x_t | x0) = -Sigma^{-1} (x_t - alpha x0) / sigma^2 = -Sigma^{-1/2} eps / sigma
    np.testing.assert_allclose(
        proc.score(x_t, t, eps), -cov.inv(x_t - alpha * x0) / sigma**2, rtol=1e-3, atol=1e-3
    )
    # Tweedie with the true noise gives x0 back, masked bands included.
    np.testing.assert_allclose(proc.denoise(x_t, t, eps), x0, rtol=1e-4, atol=1e-4)


def test_process_from_config_and_errors():
    config = default_config()
    config.diffusion.schedule, config.diffusion.prediction = "cosine", "v"
    proc = DiffusionProcess.from_config(config, 8, 8)
    assert proc.schedule == Cosine() and proc.prediction == "v"
    config.diffusion.schedule_kwargs = ml_collections.ConfigDict(dict(s=0.01))
    assert DiffusionProcess.from_config(config, 8, 8).schedule == Cosine(s=0.01)
    config.diffusion.schedule_kwargs = ml_collections.ConfigDict(dict(beta_max=10.0))
    with pytest.raises(ValueError, match=r"^diffusion\.schedule_kwargs=.*cosine schedule has no "
                                         r"parameter\(s\) beta_max$"):
        DiffusionProcess.from_config(config, 8, 8)
    config.diffusion.schedule_kwargs = ml_collections.ConfigDict(dict(s="small"))
    with pytest.raises(ValueError, match=r"^diffusion\.schedule_kwargs\.s='small': must be a "
                                         r"finite number$"):
        DiffusionProcess.from_config(config, 8, 8)
    config.diffusion.schedule_kwargs = ml_collections.ConfigDict()
    config.diffusion.prediction = "score"
    with pytest.raises(ValueError, match=r"^diffusion\.prediction='score'"):
        DiffusionProcess.from_config(config, 8, 8)
    config.diffusion.prediction, config.diffusion.schedule = "eps", "linear"
    with pytest.raises(ValueError, match=r"^diffusion\.schedule='linear'"):
        DiffusionProcess.from_config(config, 8, 8)
    config.diffusion.schedule, config.noise.rho0 = "vp_sde", -2.0
    with pytest.raises(ValueError, match=r"^noise\.rho0=-2.0"):
        DiffusionProcess.from_config(config, 8, 8)


@pytest.mark.parametrize("key", ["noise.project_data", "diffusion.schedule",
                                 "diffusion.schedule_kwargs", "diffusion.prediction"])
def test_process_from_config_names_a_missing_key_instead_of_defaulting(key):
    config = default_config().to_dict()
    section, leaf = key.split(".")
    del config[section][leaf]
    with pytest.raises(ValueError, match=rf"^{key}: missing from the config$"):
        DiffusionProcess.from_config(ml_collections.ConfigDict(config), 8, 8)


def test_process_from_the_default_config_is_the_default_process():
    config = default_config()
    proc = DiffusionProcess.from_config(config, 16, 12)
    assert proc.schedule == VPSDE() and proc.prediction == "eps" and proc.project_data is False
    np.testing.assert_array_equal(
        proc.cov.weights, SpectralCovariance.create(16, 12, gamma=1.0, rho0=0.1).weights)


def test_training_data_is_projected_onto_the_support_only_when_asked():
    band = Band("bandstop", 0.4, 0.6)
    cov = SpectralCovariance.create(16, 12, gamma=1.0, bands=[band])
    x0 = jax.random.normal(jax.random.key(0), (3, 16, 12, 2))
    plain = DiffusionProcess(cov=cov, schedule=VPSDE())
    assert plain.training_data(x0) is x0
    projected = plain.replace(project_data=True).training_data(x0)
    # float64 reference: zero the band's bins of the full DFT
    keep = band.mask(radial_frequency(16, 12, half=False)) > 0
    spec = np.fft.fft2(np.asarray(x0, np.float64), axes=(1, 2)) * keep[None, :, :, None]
    np.testing.assert_allclose(projected, np.fft.ifft2(spec, axes=(1, 2)).real, atol=2e-6)
    assert 0.05 < float(jnp.sum((projected - x0) ** 2) / jnp.sum(x0**2)) < 0.5
    full = DiffusionProcess(cov=SpectralCovariance.create(16, 12, gamma=1.0), schedule=VPSDE(),
                            project_data=True)
    np.testing.assert_allclose(full.training_data(x0), x0, atol=2e-6)
    config = default_config()
    config.noise.update(dict(gamma=0.0, bands="bandstop:0.4:0.6", project_data=True))
    assert DiffusionProcess.from_config(config, 16, 12).project_data is True
    with config.ignore_type():
        config.noise.project_data = 1
    with pytest.raises(ValueError, match=r"^noise\.project_data=1: must be True or False"):
        DiffusionProcess.from_config(config, 16, 12)


def test_process_is_a_pytree_for_jit_and_vmap():
    proc = DiffusionProcess(cov=SpectralCovariance.create(8, 8, gamma=1.0), schedule=VE())
    x0 = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    eps = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.asarray([0.2, 0.5, 0.8])
    jitted = jax.jit(lambda p, a, b, c: p.perturb(a, b, c))(proc, x0, eps, t)
    mapped = jax.vmap(lambda a, b, c: proc.perturb(a[None], b[None], c[None])[0])(x0, eps, t)
    np.testing.assert_allclose(jitted, proc.perturb(x0, eps, t), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mapped, proc.perturb(x0, eps, t), rtol=1e-5, atol=1e-5)


def test_sample_time_ranges():
    cov = SpectralCovariance.isotropic(4, 4)
    t = DiffusionProcess(cov=cov, schedule=VPSDE()).sample_time(jax.random.key(0), 10000)
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0 and abs(float(t.mean()) - 0.5) < 0.02
    t = DiffusionProcess(cov=cov, schedule=DDPMLinear()).sample_time(jax.random.key(0), 10000)
    np.testing.assert_allclose(t * 1000, np.round(t * 1000), atol=1e-3)  # on the grid i/T
    assert float(t.min()) >= 1e-3 and float(t.max()) == 1.0
