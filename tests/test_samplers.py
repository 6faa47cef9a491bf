"""Every sampler, driven by the exact Gaussian model, reproduces the data spectrum c(k).

Tolerance, per rfft bin k (docs/math.md section 5):
* discretisation: the sampler's exact output variance for the step count used is computed by
  ``sagd_jax.gaussian.sampler_output_spectrum`` (a float64 scalar recursion per frequency: with
  the exact model each sampler is linear per frequency). ``|pred_k / c_k - 1|`` is the bias; it
  shrinks with the step count at the sampler's order (checked below).
* Monte Carlo: the variance estimated from ``n = N * C`` draws has relative standard error
  ``sqrt(1/n)`` on complex bins and ``sqrt(2/n)`` on the real (self-conjugate) bins.
The jitted samplers must match the prediction within 5 standard errors per bin (and the mean
squared z-score must be near 1), hence match ``c`` within bias + 5 standard errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.demo import demo_data
from sagd_jax.gaussian import GaussianData
from sagd_jax.gaussian import sampler_output_spectrum as predicted_spectrum
from sagd_jax.metrics.spectra import power_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import SAMPLERS, ddim, ddpm, get_sampler
from sagd_jax.schedules import VE, VPSDE, Cosine, DDPMLinear
from sagd_jax.spectral import SpectralCovariance

H = W = 8
N, C = 2048, 2
MASK = "bandstop:0.3:0.6"
# (sampler, steps, options): steps chosen so a case runs in about a second on 2 CPU cores.
CASES = [
    ("ddpm", 200, {}),
    ("ddim", 100, {}),
    ("ddim", 100, {"eta": 0.5}),
    ("ode_euler", 100, {}),
    ("ode_heun", 50, {}),
    ("sde", 200, {}),
    ("dpmpp_2m", 50, {}),
]


def data_unlike_noise() -> GaussianData:
    """The demo's data spectrum: rising with frequency, a bump at rho = 0.7 (no power law)."""
    return demo_data(H)


def real_bins() -> np.ndarray:
    """Self-conjugate rfft bins (their DFT coefficient is real): ky, kx in {0, Nyquist}."""
    ky = np.isin(np.arange(H), [0, H // 2] if H % 2 == 0 else [0])[:, None]
    kx = np.isin(np.arange(W // 2 + 1), [0, W // 2] if W % 2 == 0 else [0])[None, :]
    return ky & kx


def check_against_prediction(x, predicted, c, support):
    n = x.shape[0] * x.shape[-1]
    stderr = np.where(real_bins(), np.sqrt(2 / n), np.sqrt(1 / n))
    var = power_spectrum(x)
    z = (var[support] / predicted[support] - 1) / stderr[support]
    assert np.abs(z).max() < 5, f"max |z| = {np.abs(z).max():.2f}"
    assert np.mean(z**2) < 2.0, f"mean z^2 = {np.mean(z**2):.2f}"
    bias = np.abs(predicted[support] / c[support] - 1)
    assert np.all(np.abs(var[support] / c[support] - 1) <= bias + 5 * stderr[support])
    return var


@pytest.mark.slow
@pytest.mark.parametrize("gamma, bands", [(-1, ""), (0, ""), (1, ""), (2, ""), (1, MASK)])
@pytest.mark.parametrize("name, steps, options", CASES)
def test_sampler_reproduces_data_spectrum(name, steps, options, gamma, bands):
    cov = SpectralCovariance.create(H, W, gamma=float(gamma), bands=bands)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    data = data_unlike_noise()
    x = get_sampler(name)(process, data.eps_fn(process), jax.random.key(gamma + 7), (N, H, W, C),
                          steps, **options)
    assert x.shape == (N, H, W, C) and x.dtype == jnp.float32
    c = np.asarray(data.spectrum, np.float64)
    support = np.asarray(cov.support)
    predicted = predicted_spectrum(process, data, name, steps, options.get("eta", 0.0))
    var = check_against_prediction(x, predicted, c, support)
    if bands:
        # Selective omission: the masked band carries no energy (float32 round-off only).
        assert (~support).any()
        assert var[~support].max() < 1e-12 * c.mean()


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [DDPMLinear(), Cosine(), VE(sigma_max=100.0)],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("name, steps", [("ddim", 100), ("ode_heun", 50), ("sde", 200)])
def test_other_schedules(schedule, name, steps):
    cov = SpectralCovariance.create(H, W, gamma=1.0, bands=MASK)
    process = DiffusionProcess(cov=cov, schedule=schedule)
    data = data_unlike_noise()
    x = get_sampler(name)(process, data.eps_fn(process), jax.random.key(11), (N, H, W, C), steps)
    predicted = predicted_spectrum(process, data, name, steps)
    check_against_prediction(x, predicted, np.asarray(data.spectrum, np.float64),
                             np.asarray(cov.support))


@pytest.mark.parametrize(
    "name, steps, order", [("ddpm", 200, 1), ("ddim", 200, 1), ("ode_euler", 200, 1),
                           ("ode_heun", 50, 2), ("sde", 200, 1)]
)
def test_discretisation_bias_shrinks_at_the_sampler_order(name, steps, order):
    """The bias splits into the stop at t_min (the exact posterior mean at t_min has variance
    ``alpha^2 c^2 / (alpha^2 c + sigma^2 w)``: a floor independent of the steps) and the
    discretisation error. Doubling the steps divides the latter by about 2^order, and its
    Richardson extrapolation to infinitely many steps is ~0: the samplers converge."""
    cov = SpectralCovariance.create(H, W, gamma=1.0)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    data = data_unlike_noise()
    c = np.asarray(data.spectrum, np.float64)
    alpha, sigma = (float(v) for v in process.coefficients(process.schedule.t_min))
    w = np.asarray(cov.weights, np.float64)
    floor = alpha**2 * c / (alpha**2 * c + sigma**2 * w)
    assert np.abs(floor - 1).max() < 5e-3
    errors = [np.abs(predicted_spectrum(process, data, name, k * steps) / c - floor).max()
              for k in (1, 2, 4)]
    for coarse, fine in zip(errors[:-1], errors[1:], strict=True):
        assert 0.7 * 2**order < coarse / fine < 1.4 * 2**order, errors
    extrapolated = errors[-1] - (errors[-2] - errors[-1]) / (2**order - 1)
    assert abs(extrapolated) < 0.3 * errors[-1], errors


@pytest.mark.slow
def test_ddim_with_eta_one_is_ddpm():
    """DDIM(eta=1) and DDPM are the same chain: same key, same samples."""
    cov = SpectralCovariance.create(H, W, gamma=2.0, bands=MASK)
    process = DiffusionProcess(cov=cov, schedule=Cosine())
    eps_fn = data_unlike_noise().eps_fn(process)
    a = ddpm(process, eps_fn, jax.random.key(0), (64, H, W, 1), 20)
    b = ddim(process, eps_fn, jax.random.key(0), (64, H, W, 1), 20, eta=1.0)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    c = ddim(process, eps_fn, jax.random.key(0), (64, H, W, 1), 20)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("bands", ["", MASK])
@pytest.mark.parametrize("name, options", [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 0.5})])
def test_clip_x0(name, options, bands):
    """Clipping x0_hat: a no-op when the range is never reached (the re-derived eps_hat is the
    network's), and it holds a model whose eps_hat has a small bias (here a constant 0.05, whose
    error sigma/alpha amplifies at high noise) inside the range, on the support of Sigma."""
    cov = SpectralCovariance.create(H, W, gamma=1.0, bands=bands)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    exact = data_unlike_noise().eps_fn(process)
    sampler, key, shape = get_sampler(name), jax.random.key(5), (256, H, W, 1)
    plain = sampler(process, exact, key, shape, 50, **options)
    wide = sampler(process, exact, key, shape, 50, clip_x0=1e4, **options)
    np.testing.assert_allclose(wide, plain, rtol=1e-3, atol=2e-3)

    def biased(x, t):
        return exact(x, t) + 0.05

    drifted = np.asarray(sampler(process, biased, key, shape, 50, **options))
    clipped = np.asarray(sampler(process, biased, key, shape, 50, clip_x0=1.0, **options))
    assert np.abs(drifted).max() > 3.0  # the failure clipping is for
    off_support = ~np.asarray(cov.support)
    assert power_spectrum(clipped)[off_support].max(initial=0.0) < 1e-10
    if not bands:  # projection onto a band-limited support may overshoot the range a little
        assert np.abs(clipped).max() <= 1.0 + 1e-6
    else:
        assert np.abs(clipped).max() < 1.5


@pytest.mark.slow
def test_samplers_under_jit_vmap_and_grad():
    cov = SpectralCovariance.create(H, W, gamma=1.0)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    data = data_unlike_noise()

    def scaled_eps(scale, x, t):
        return scale * data.eps(process, x, t)

    def sample_mean_sq(scale, key):
        eps_fn = jax.tree_util.Partial(scaled_eps, scale)
        return jnp.mean(ddim(process, eps_fn, key, (16, H, W, 1), 10) ** 2)

    key = jax.random.key(3)
    value = sample_mean_sq(1.0, key)
    np.testing.assert_allclose(jax.jit(sample_mean_sq)(1.0, key), value, rtol=1e-5)
    keys = jax.random.split(key, 3)
    batched = jax.vmap(lambda k: sample_mean_sq(1.0, k))(keys)
    np.testing.assert_allclose(batched[0], sample_mean_sq(1.0, keys[0]), rtol=1e-5)
    # Gradient through the whole sampling loop, against a central finite difference.
    grad = jax.grad(sample_mean_sq)(1.0, key)
    h = 1e-2
    fd = (sample_mean_sq(1.0 + h, key) - sample_mean_sq(1.0 - h, key)) / (2 * h)
    assert np.isfinite(grad) and abs(grad - fd) < 0.02 * abs(fd) + 1e-4


def test_sampler_input_errors():
    process = DiffusionProcess(cov=SpectralCovariance.create(H, W), schedule=VPSDE())
    eps_fn = data_unlike_noise().eps_fn(process)
    with pytest.raises(ValueError, match="steps=0"):
        ddim(process, eps_fn, jax.random.key(0), (4, H, W, 1), 0)
    with pytest.raises(ValueError, match=r"shape=\(4, 7, 8, 1\)"):
        ddim(process, eps_fn, jax.random.key(0), (4, 7, 8, 1), 5)
    with pytest.raises(ValueError, match="takes no option"):
        ddpm(process, eps_fn, jax.random.key(0), (4, H, W, 1), 5, eta=1.0)
    with pytest.raises(ValueError, match="clip_x0=0"):
        ddpm(process, eps_fn, jax.random.key(0), (4, H, W, 1), 5, clip_x0=0.0)
    with pytest.raises(ValueError, match="takes no option"):
        get_sampler("ode_heun")(process, eps_fn, jax.random.key(0), (4, H, W, 1), 5, clip_x0=1)
    with pytest.raises(ValueError, match="sampler='euler'"):
        get_sampler("euler")
    assert set(SAMPLERS) == {"ddpm", "ddim", "ode_euler", "ode_heun", "sde", "dpmpp_2m"}


@pytest.mark.slow
@pytest.mark.parametrize("name, steps, options", [CASES[0], CASES[2], CASES[4], CASES[6]])
def test_recorded_trajectory_power_matches_the_exact_recursion(name, steps, options):
    """``record_power``: the samples are unchanged, and every iterate's mean power per bin is
    within 5 Monte-Carlo standard errors of ``sampler_output_spectrum(trajectory=True)``; a
    wrong model (eps scaled by 1.1) is told apart."""
    cov = SpectralCovariance.create(H, W, gamma=1.0, bands=MASK)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    data = data_unlike_noise()
    sampler, key = get_sampler(name), jax.random.key(3)
    x, power = sampler(process, data.eps_fn(process), key, (N, H, W, C), steps,
                       record_power=True, **options)
    plain = sampler(process, data.eps_fn(process), key, (N, H, W, C), steps, **options)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(plain))
    assert power.shape == (steps - 1, H, W // 2 + 1) and power.dtype == jnp.float32
    final, path = predicted_spectrum(process, data, name, steps, options.get("eta", 0.0),
                                     trajectory=True)
    np.testing.assert_array_equal(final, predicted_spectrum(process, data, name, steps,
                                                            options.get("eta", 0.0)))
    support = np.asarray(cov.support)
    stderr = np.where(real_bins(), np.sqrt(2 / (N * C)), np.sqrt(1 / (N * C)))[support]
    z = (np.asarray(power, np.float64)[:, support] / path[:, support] - 1) / stderr
    assert np.abs(z).max() < 5, f"max |z| = {np.abs(z).max():.2f}"
    # the masked band: float32 round-off only (the iterates are not projected; samples are)
    assert np.asarray(power)[:, ~support].max() < 1e-8 * float(data.spectrum.mean())
    exact = data.eps_fn(process)
    _, wrong = sampler(process, lambda x, t: 1.1 * exact(x, t), key, (N, H, W, C), steps,
                       record_power=True, **options)
    z_wrong = (np.asarray(wrong, np.float64)[:, support] / path[:, support] - 1) / stderr
    assert np.abs(z_wrong).max() > 10
