"""The exact Gaussian model (docs/math.md section 5) and the t -> 0 claim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.gaussian import GaussianData
from sagd_jax.process import DiffusionProcess
from sagd_jax.schedules import VPSDE, Cosine
from sagd_jax.spectral import SpectralCovariance, apply_multiplier

H, W = 8, 6


def setup(gamma=1.0, bands="", data_gamma=-0.5):
    cov = SpectralCovariance.create(H, W, gamma=gamma, bands=bands)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    data = GaussianData.power_law(H, W, gamma=data_gamma, rho0=0.2)
    return process, data


def test_exact_eps_matches_the_per_frequency_formula_in_float64():
    process, data = setup(gamma=2.0, bands="bandstop:0.3:0.5")
    x = jax.random.normal(jax.random.key(0), (3, H, W, 2))
    t = jnp.asarray([0.05, 0.4, 0.9])
    got = np.asarray(data.eps(process, x, t), np.float64)
    alpha, sigma = (np.asarray(v, np.float64)[:, None, None, None] for v in
                    process.coefficients(t))
    w = np.asarray(process.cov.weights, np.float64)[None, :, :, None]
    c = np.asarray(data.spectrum, np.float64)[None, :, :, None]
    spec = np.fft.rfft2(np.asarray(x, np.float64), axes=(1, 2))
    want = np.fft.irfft2(sigma * np.sqrt(w) * spec / (alpha**2 * c + sigma**2 * w),
                         s=(H, W), axes=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_exact_eps_is_the_posterior_mean():
    """Orthogonality principle: the residual eps - eps_hat(x_t) is uncorrelated with x_t,
    per frequency, and eps_hat has variance sigma^2 w / (alpha^2 c + sigma^2 w)."""
    process, data = setup(gamma=1.0)
    n, t = 20000, 0.3
    k1, k2 = jax.random.split(jax.random.key(1))
    x0 = data.sample(k1, (n, H, W, 1))
    x_t, eps = process.marginal_sample(k2, x0, jnp.full((n,), t))
    eps_hat = data.eps(process, x_t, jnp.full((n,), t))

    def spec(v):
        return np.fft.rfft2(np.asarray(v, np.float64)[..., 0], axes=(1, 2), norm="ortho")

    resid, xs = spec(eps - eps_hat), spec(x_t)
    corr = np.abs(np.mean(resid * np.conj(xs), axis=0)) / np.sqrt(
        np.mean(np.abs(resid) ** 2, axis=0) * np.mean(np.abs(xs) ** 2, axis=0))
    assert corr.max() < 5 / np.sqrt(n)
    alpha, sigma = (float(v) for v in process.coefficients(t))
    w, c = np.asarray(process.cov.weights), np.asarray(data.spectrum)
    var_hat = np.mean(np.abs(spec(eps_hat)) ** 2, axis=0)
    np.testing.assert_allclose(var_hat, sigma**2 * w / (alpha**2 * c + sigma**2 * w),
                               rtol=5 * np.sqrt(2 / n))


def test_score_from_exact_eps_is_the_exact_score():
    process, data = setup(gamma=2.0)
    process = DiffusionProcess(cov=process.cov, schedule=Cosine())
    x = jax.random.normal(jax.random.key(2), (4, H, W, 3))
    t = jnp.asarray([0.01, 0.2, 0.6, 0.95])
    via_eps = process.score(x, t, data.eps(process, x, t))
    np.testing.assert_allclose(via_eps, data.score(process, x, t), rtol=2e-3, atol=2e-3)


def score_error_vs_data_score(process, data, eps_fn, t, support_only):
    """Relative mean-square distance of the model's score at t from the data score
    -C^{-1} x, over x_t ~ p_t (optionally measured on the support of Sigma only)."""
    n = 512
    k1, k2 = jax.random.split(jax.random.key(4))
    x_t, _ = process.marginal_sample(k2, data.sample(k1, (n, H, W, 1)), jnp.full((n,), t))
    tt = jnp.full((n,), t)
    model_score = process.score(x_t, tt, eps_fn(x_t, tt))
    data_score = -apply_multiplier(x_t, 1.0 / data.spectrum)
    diff = model_score - data_score
    if support_only:
        diff, data_score = process.cov.project(diff), process.cov.project(data_score)
    return float(jnp.sum(diff**2) / jnp.sum(data_score**2))


@pytest.mark.parametrize("gamma", [-1.0, 0.0, 1.0, 2.0])
def test_score_converges_to_the_data_score_as_t_goes_to_0_with_full_support(gamma):
    """docs/math.md section 5: with full support, the score obtained through the SAGD relation
    s = -Sigma^{-1/2} eps / sigma converges to the data score as t -> 0, whatever the
    anisotropy. Exact model: relative error sigma^2 w / (alpha^2 c + sigma^2 w) per frequency,
    so the squared error falls like sigma_t^4. A perturbed model whose eps error is
    delta * sigma_t^2 (delta = 2, times a fixed smoothing of x) adds a score error of order
    delta * sigma_t: still converging, at the slower rate (squared error ~ sigma_t^2)."""
    process, data = setup(gamma=gamma)
    delta = 2.0

    def perturbed(x, t):
        _, sigma = process.coefficients(t)
        smooth = process.cov.sqrt(x) if gamma else x
        return data.eps(process, x, t) + delta * (sigma**2)[:, None, None, None] * smooth

    times = np.array([0.2, 0.05, 0.0125, 0.003125])
    sigmas = np.array([float(process.coefficients(t)[1]) for t in times])
    exact = [score_error_vs_data_score(process, data, data.eps_fn(process), t, False)
             for t in times]
    pert = [score_error_vs_data_score(process, data, perturbed, t, False) for t in times]
    assert np.all(np.diff(exact) < 0) and np.all(np.diff(pert) < 0)
    assert exact[-1] < 1e-4 and pert[-1] < 1e-2
    slope_exact = np.polyfit(np.log(sigmas[-3:]), np.log(exact[-3:]), 1)[0]
    slope_pert = np.polyfit(np.log(sigmas[-3:]), np.log(pert[-3:]), 1)[0]
    assert 3.5 < slope_exact < 4.5, slope_exact
    assert 1.7 < slope_pert < 2.5, slope_pert


def test_without_full_support_the_masked_score_never_converges():
    """A masked band is invisible to the model: its score there is 0, so the error against
    the data score stays at the masked share of the score energy while the error on the
    support still vanishes."""
    process, data = setup(gamma=1.0, bands="bandstop:0.3:0.6")
    eps_fn = data.eps_fn(process)
    whole = [score_error_vs_data_score(process, data, eps_fn, t, False) for t in (0.05, 0.003)]
    on_support = [score_error_vs_data_score(process, data, eps_fn, t, True)
                  for t in (0.05, 0.003)]
    assert on_support[1] < 1e-4 < on_support[0]
    assert whole[1] > 0.05 and abs(whole[1] - whole[0]) < 0.2 * whole[1]
