"""Guidance (``sagd_jax.guidance``, docs/math.md section 12) against the exact class mixture
(``gaussian.GaussianMixture``).

The oracle: K classes, each a Gaussian diagonal in frequency with a mean image of its own, under
an SAGD process (``gamma = 1``, VP). Its conditional prediction is exact per bin and its
unconditional one is the posterior-weighted sum; a float64 dense reference (explicit covariance
matrices) confirms both. Monte-Carlo tolerances: see ``check_class_law``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax import samplers
from sagd_jax.frequency_schedule import FrequencySchedule
from sagd_jax.gaussian import GaussianData, GaussianMixture, sampler_output_spectrum
from sagd_jax.guidance import (
    Guidance,
    balanced_labels,
    band_weight,
    guided_eps_fn,
    make_guidance,
    parse_interval,
    parse_labels,
    random_labels,
)
from sagd_jax.process import DiffusionProcess
from sagd_jax.schedules import VPSDE, time_grid
from sagd_jax.spectral import (
    SpectralCovariance,
    radial_frequency,
    spectral_weights,
)
from sagd_jax.time_grids import make_grid

H = W = 8
C = 2
K = 3
NULL = K


@jax.jit
def call(fn, *args):
    """``fn(*args)`` compiled (``fn`` a pytree: a ``Partial``): one program instead of many
    small eager ones."""
    return fn(*args)


@jax.jit
def oracle(mixture, process, x_t, t, labels):
    """The mixture's exact ``(eps_c, eps_u, p(k | x_t))`` in one compiled program."""
    return (mixture.eps(process, x_t, t, labels), mixture.eps_unconditional(process, x_t, t),
            mixture.posterior(process, x_t, t))


def noisy_images(mixture, process, seed, labels, t):
    """``x_t ~ q(x_t | x_0)`` for ``x_0`` of class ``labels[i]``, float32, drawn per bin with
    numpy (``A_t``, ``S_t^2`` from the process): no program to compile."""
    rng = np.random.default_rng(seed)
    labels, t = np.asarray(labels), np.asarray(t, np.float32)
    shape = (len(labels), *mixture.means.shape[1:])
    a, s2 = (np.asarray(v, np.float64)[..., None] for v in coefficients(process, jnp.asarray(t)))
    c = np.asarray(mixture.spectra, np.float64)[labels][..., None]
    x0 = rfft(mixture.means[labels]) + np.sqrt(c) * rfft(rng.normal(size=shape))
    spec = a * x0 + np.sqrt(s2) * rfft(rng.normal(size=shape))
    return jnp.asarray(np.fft.irfft2(spec, s=shape[1:3], axes=(1, 2), norm="ortho"), jnp.float32)


@jax.jit
def coefficients(process, t):
    """``(A_t, S_t^2)``, ``(B, H, W // 2 + 1)``."""
    a, s2 = process.spectral_coefficients(t)
    shape = (t.shape[0], *process.cov.weights.shape)
    return jnp.broadcast_to(a, shape), jnp.broadcast_to(s2, shape)


def make_process(height=H, width=W, shaped=False):
    cov = SpectralCovariance.create(height, width, gamma=1.0)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    if shaped:  # white noise near the data, blurred signal: a per-frequency schedule
        process = process.replace(shaping=FrequencySchedule.create(
            cov, noise_exponent_start=0.0, blur_sigma_max=1.0))
    return process


def make_mixture(height=H, width=W, channels=C, seed=0):
    """Three classes with distinct means (smooth blobs of either sign, a stripe) and spectra
    (flat, falling, falling faster with frequency; different scales)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    blob = np.exp(-((yy - height / 3) ** 2 + (xx - width / 3) ** 2) / (0.1 * height * width))
    stripe = np.cos(2 * np.pi * xx / max(width // 2, 1))
    means = np.stack([1.2 * blob, -0.8 * blob + 0.3 * stripe, 0.6 * stripe])[..., None]
    means = means + 0.2 * rng.normal(size=(K, height, width, channels))
    spectra = np.stack([spectral_weights(height, width, gamma=g, rho0=0.2) * s
                        for g, s in ((0.0, 0.3), (1.0, 0.15), (2.0, 0.5))])
    return GaussianMixture.create(means, spectra, prior=[0.5, 0.3, 0.2])


def rfft(x) -> np.ndarray:
    return np.fft.rfft2(np.asarray(x, np.float64), axes=(1, 2), norm="ortho")


def real_bins(height=H, width=W) -> np.ndarray:
    """Self-conjugate rfft bins (real DFT coefficient): ky, kx in {0, Nyquist}."""
    ky = np.isin(np.arange(height), [0, height // 2] if height % 2 == 0 else [0])[:, None]
    kx = np.isin(np.arange(width // 2 + 1), [0, width // 2] if width % 2 == 0 else [0])[None]
    return ky & kx


# --- the oracle ------------------------------------------------------------------------------
def full_grid(half: np.ndarray, height: int, width: int) -> np.ndarray:
    """An even function on the rfft half-plane ``(..., H, W // 2 + 1)`` on the full grid."""
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    inside = cols <= width // 2
    return half[..., np.where(inside, rows, (-rows) % height), np.where(inside, cols, width - cols)]


@pytest.mark.parametrize("shaped, height, width", [(False, 4, 4), (True, 3, 5)],
                         ids=["constant-4x4", "per-frequency-3x5"])
def test_mixture_predictions_match_a_dense_float64_reference(shaped, height, width,
                                                             dense_multiplier):
    """Explicit covariances on a tiny image: ``x_t | k ~ N(A mu_k, A C_k A^T + S S^T)``,
    ``E[eps | x_t, k] = S (A C_k A^T + S S^T)^{-1} (x_t - A mu_k)``, the posterior from the dense
    log-densities (slogdet), the unconditional prediction their posterior-weighted sum."""
    process = make_process(height, width, shaped)
    mixture = make_mixture(height, width, channels=2)
    batch = 6
    t = np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    x_t = noisy_images(mixture, process, 1, labels, t)
    got_c, got_u, got_p = (np.asarray(v, np.float64) for v in oracle(
        mixture, process, x_t, jnp.asarray(t), jnp.asarray(labels)))
    a, s2 = (np.broadcast_to(np.asarray(v, np.float64), (batch, height, width // 2 + 1))
             for v in coefficients(process, jnp.asarray(t)))
    means = np.asarray(mixture.means, np.float64).reshape(K, height * width, 2)
    spectra = np.asarray(mixture.spectra, np.float64)
    prior = np.exp(np.asarray(mixture.log_prior, np.float64))
    x = np.asarray(x_t, np.float64).reshape(batch, height * width, 2)
    for b in range(batch):
        amp = dense_multiplier(full_grid(a[b], height, width))
        noise = dense_multiplier(full_grid(np.sqrt(s2[b]), height, width))
        log_p, eps = np.log(prior), np.zeros((K, height * width, 2))
        for k in range(K):
            cov = (amp @ dense_multiplier(full_grid(spectra[k], height, width)) @ amp.T
                   + noise @ noise.T)
            resid = x[b] - amp @ means[k]
            solved = np.linalg.solve(cov, resid)
            eps[k] = noise @ solved
            log_p[k] -= 0.5 * (np.sum(resid * solved) + 2 * np.linalg.slogdet(2 * np.pi * cov)[1])
        p = np.exp(log_p - log_p.max())
        p /= p.sum()
        np.testing.assert_allclose(got_p[b], p, atol=2e-5)
        np.testing.assert_allclose(got_c[b].reshape(-1, 2), eps[labels[b]], rtol=1e-5,
                                   atol=1e-5 * np.abs(eps[labels[b]]).max())
        want_u = np.einsum("k,knc->nc", p, eps)
        np.testing.assert_allclose(got_u[b].reshape(-1, 2), want_u, rtol=1e-5,
                                   atol=1e-5 * np.abs(want_u).max())
    # The posteriors are neither flat nor saturated everywhere: the mixture part is exercised.
    assert ((got_p > 0.05) & (got_p < 0.95)).sum() >= 6


def test_mixture_cond_fn_gives_the_unconditional_prediction_for_the_null_label():
    process, mixture = make_process(), make_mixture()
    x = jax.random.normal(jax.random.key(3), (4, H, W, C))
    t = jnp.full((4,), 0.5)
    labels = jnp.asarray([0, NULL, 2, NULL], jnp.int32)
    out = np.asarray(call(mixture.cond_fn(process), x, t, labels))
    eps_c, eps_u, _ = (np.asarray(v) for v in oracle(mixture, process, x, t,
                                                       jnp.asarray([0, 0, 2, 0])))
    scale = np.abs(eps_u).max()
    np.testing.assert_allclose(out[[0, 2]], eps_c[[0, 2]], atol=1e-5 * scale)
    np.testing.assert_allclose(out[[1, 3]], eps_u[[1, 3]], atol=1e-5 * scale)
    assert np.abs(eps_u[1] - eps_c[1]).max() > 1e-2  # not the same prediction


# --- 1. weight 1 samples each class's law ------------------------------------------------------
def predicted_class_mean(process, mixture, k, sampler, times) -> np.ndarray:
    """The exact mean of a sampler's output for class ``k``, per rfft bin and channel,
    complex128 ``(H, W // 2 + 1, C)``. With the exact conditional model each sampler is affine
    in every bin with zero-mean noise, so its mean follows the same recursion with the noise
    left out (from the prior's mean 0), in float64: DDPM's posterior-mean step and Heun's two
    velocity evaluations, then the final Tweedie step (samplers.py's formulas, per bin)."""
    steps = len(times)
    grid = jnp.asarray(times, jnp.float32)
    shape = (steps, H, W // 2 + 1, 1)
    a, s2, f, g2 = (np.broadcast_to(np.asarray(v, np.float64)[..., None], shape)
                    for v in (*process.spectral_coefficients(grid), *process.spectral_sde(grid)))
    c = np.asarray(mixture.spectra[k], np.float64)[..., None]
    mu = rfft(mixture.means[k][None])[0]
    var = a**2 * c + s2

    def x0_hat(i, m):  # Tweedie with eps = S (x - A mu) / V
        return (a[i] * c * m + s2[i] * mu) / var[i]

    def velocity(i, m):
        return f[i] * m + g2[i] * (m - a[i] * mu) / (2 * var[i])

    m = np.zeros_like(mu)
    for i in range(steps - 1):
        h = float(grid[i + 1] - grid[i])
        if sampler == "ddpm":
            a_ts = a[i] / a[i + 1]
            s2_ts = np.maximum(s2[i] - a_ts**2 * s2[i + 1], 0.0)
            m = (a_ts * s2[i + 1] * m + a[i + 1] * s2_ts * x0_hat(i, m)) / s2[i]
        else:
            v = velocity(i, m)
            m = m + 0.5 * h * (v + velocity(i + 1, m + h * v))
    return x0_hat(steps - 1, m)


def check_class_law(x, mean_pred, var_pred, mu, c, max_bias):
    """Per rfft bin: the sample mean (per channel, real and imaginary parts) and variance
    (pooled over channels) of one class's ``n`` images against the exact law of this sampler
    and step count, then against the class's true ``(mu_k, c_k)``.

    Monte Carlo: the mean's real and imaginary parts each have standard error
    ``sqrt(V / (2 n))`` on complex bins (real bins: ``sqrt(V / n)``, no imaginary part); the
    variance estimated from ``n C`` draws has relative standard error ``sqrt(1 / (n C))`` (real
    bins ``sqrt(2 / (n C))``). Against the sampler's exact law every z-score stays below 5 and
    their mean square near 1. Bias: the exact law's distance to ``(mu_k, c_k)`` (the steps,
    the stop at t_min, the prior's mean 0 where ``x_1`` has mean ``alpha_1 mu_k``), at most
    ``max_bias`` of the variance (and of the standard deviation, for the mean). Against the
    truth the tolerance is that bias plus 5 standard errors."""
    n, channels = x.shape[0], x.shape[-1]
    real = real_bins()
    spec = rfft(x)
    mean = spec.mean(axis=0)
    half = np.where(real, 1.0, 0.5)[..., None]
    se_mean = np.sqrt(var_pred[..., None] * half / n)
    z_mean = np.concatenate([((mean - mean_pred).real / se_mean).ravel(),
                             ((mean - mean_pred).imag / se_mean)[~real].ravel()])
    var = np.mean(np.abs(spec - mean) ** 2, axis=(0, 3)) * n / (n - 1)
    se_var = np.where(real, np.sqrt(2 / (n * channels)), np.sqrt(1 / (n * channels)))
    z_var = (var / var_pred - 1) / se_var
    for name, z in (("mean", z_mean), ("variance", z_var)):
        assert np.abs(z).max() < 5, f"{name}: max |z| = {np.abs(z).max():.2f}"
        assert np.mean(z**2) < 2.0, f"{name}: mean z^2 = {np.mean(z**2):.2f}"
    bias_mean = np.abs(mean_pred - mu)
    bias_var = np.abs(var_pred / c - 1)
    assert bias_var.max() < max_bias, bias_var.max()
    assert (bias_mean / np.sqrt(c[..., None])).max() < max_bias
    assert np.all(np.abs(mean - mu) <= bias_mean + 5 * np.sqrt(2) * se_mean)
    assert np.all(np.abs(var / c - 1) <= bias_var + 5 * se_var)


@pytest.mark.slow
@pytest.mark.parametrize("name, steps, max_bias", [("ddpm", 200, 0.06), ("ode_heun", 50, 0.02)])
def test_weight_one_samples_each_class_law(name, steps, max_bias):
    """No guidance (weight 1): DDPM and Heun on the log-SNR grid, driven by the exact
    conditional model, draw each class's Gaussian (``check_class_law``). DDPM is first order:
    about 5 % variance bias in the worst bin at 200 steps, predicted exactly and allowed
    for; Heun's variance bias is below 0.2 %, its mean's about 1 % of a standard deviation
    (the prior's mean 0 in place of alpha_1 mu_k, carried to t = 0)."""
    process, mixture = make_process(), make_mixture()
    n_per_class = 1024
    labels = balanced_labels(K * n_per_class, K)
    times = make_grid(process, steps, "logsnr")
    eps_fn = guided_eps_fn(mixture.cond_fn(process), labels, Guidance.create(1.0), process, NULL)
    x = samplers.get_sampler(name)(process, eps_fn, jax.random.key(5),
                                   (len(labels), H, W, C), steps, times=times)
    x = np.asarray(x, np.float64)
    for k in range(K):
        c = np.asarray(mixture.spectra[k], np.float64)
        data = GaussianData(spectrum=mixture.spectra[k], height=H, width=W)
        var_pred = sampler_output_spectrum(process, data, name, steps, times=times)
        mean_pred = predicted_class_mean(process, mixture, k, name, times)
        check_class_law(x[labels == k], mean_pred, var_pred, rfft(mixture.means[k][None])[0], c,
                        max_bias)


# --- 2. guidance in white space is guidance on the pixel-space score -------------------------
@jax.jit
def guided_and_pixel_scores(mixture, process, eps_fn, x_t, t, labels):
    """The guided eps turned into a score, and the two scores from the mixture's densities."""
    batch = x_t.shape[0]

    def log_conditional(x):
        return jnp.sum(mixture.log_likelihoods(process, x, t)[jnp.arange(batch), labels])

    def log_marginal(x):
        return jnp.sum(jax.nn.logsumexp(
            mixture.log_likelihoods(process, x, t) + mixture.log_prior, axis=-1))

    return (process.score(x_t, t, eps_fn(x_t, t)), jax.grad(log_conditional)(x_t),
            jax.grad(log_marginal)(x_t))


@pytest.mark.parametrize("shaped, per_bin", [(False, False), (False, True), (True, True)],
                         ids=["constant-scalar", "constant-per-bin", "per-frequency-per-bin"])
def test_white_space_guidance_is_score_guidance_in_pixel_space(shaped, per_bin,
                                                               dense_multiplier):
    """``s = -Sigma^{-1/2} eps / sigma`` (per bin ``-S^+ eps``) is linear in eps and
    frequency-diagonal, so it commutes with a per-bin weight: the guided eps, turned into a
    score, is ``s_u + W (s_c - s_u)`` with the two scores computed independently in pixel
    space: gradients (autodiff) of the mixture's log-densities ``log p(x_t | k)`` and
    ``log sum_k pi_k p(x_t | k)``; a per-bin ``W`` applied as the dense float64 matrix
    ``F^H diag(W) F`` on the full grid. Tolerance: float32 round-off, 2e-5 of each example's
    largest score component."""
    process, mixture = make_process(shaped=shaped), make_mixture()
    weight = (band_weight("bandpass:0.2:0.9", 4.0, H, W) if per_bin else 2.5)
    guidance = Guidance.create(weight)
    assert guidance.per_bin == per_bin
    batch = 6
    labels = jnp.asarray([0, 1, 2, 2, 1, 0], jnp.int32)
    t = jnp.asarray([0.1, 0.25, 0.4, 0.55, 0.7, 0.9], jnp.float32)
    x_t = noisy_images(mixture, process, 7, labels, t)
    eps_fn = guided_eps_fn(mixture.cond_fn(process), labels, guidance, process, NULL)
    got, s_c, s_u = (np.asarray(v, np.float64) for v in guided_and_pixel_scores(
        mixture, process, eps_fn, x_t, t, labels))
    diff = s_c - s_u
    if per_bin:
        op = dense_multiplier(full_grid(np.asarray(weight, np.float64), H, W))
        guided_diff = np.einsum("ij,bjc->bic", op, diff.reshape(batch, H * W, C))
        want = s_u + guided_diff.reshape(diff.shape)
    else:
        want = s_u + weight * diff
    scale = np.abs(want).reshape(batch, -1).max(axis=1)[:, None, None, None]
    np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)
    assert np.abs(diff / scale).max() > 1e-2  # the guidance term is far above the tolerance


# --- 3. a uniform per-bin weight is plain guidance bit for bit -------------------------------
# Every sampler-level test below samples this one batch shape and step count with DDPM, so the
# weight-1 program they compare against compiles once per session.
SHAPE = (12, H, W, C)
STEPS = 20
LABELS = balanced_labels(SHAPE[0], K)


def sample(process, mixture, guidance, *, guide_fn=None, name="ddpm", steps=STEPS,
           shape=SHAPE, key=4):
    labels = balanced_labels(shape[0], K)
    eps_fn = guided_eps_fn(mixture.cond_fn(process), labels, guidance, process, NULL,
                           guide_fn=guide_fn)
    return np.asarray(samplers.get_sampler(name)(process, eps_fn, jax.random.key(key), shape,
                                                 steps))


def simple_cond_fn(x, t, labels):
    """A cheap stand-in for a conditional network (compiles in no time): each label scales
    ``x`` differently, the null label by 1."""
    scale = 1.0 + 0.25 * labels.astype(jnp.float32) + 0.1 * t
    return x * scale[:, None, None, None]


def test_uniform_per_bin_weight_is_stored_as_the_plain_weight():
    """``Guidance.create`` stores a per-bin weight equal in every bin as that float: the guided
    eps_fn is then the same pytree as plain guidance's (same program, same leaves), so it gives
    the same numbers bit for bit."""
    uniform = Guidance.create(np.full((H, W // 2 + 1), 2.5, np.float32))
    assert isinstance(uniform.weight, float) and uniform.weight == 2.5 and not uniform.per_bin
    assert make_guidance(2.5, H, W, band="").weight == 2.5  # "" = every bin
    np.testing.assert_array_equal(band_weight("", 2.5, H, W), np.full((H, W // 2 + 1), 2.5))
    a = guided_eps_fn(simple_cond_fn, LABELS, uniform, make_process(), NULL)
    b = guided_eps_fn(simple_cond_fn, LABELS, 2.5, make_process(), NULL)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for leaf_a, leaf_b in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b),
                              strict=True):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    x, t = jax.random.normal(jax.random.key(0), SHAPE), jnp.full((SHAPE[0],), 0.3)
    np.testing.assert_array_equal(call(a, x, t), call(b, x, t))
    assert Guidance.create(band_weight("lowpass::0.5", 2.5, H, W)).per_bin


@pytest.mark.slow
def test_uniform_per_bin_weight_is_plain_guidance_bit_for_bit():
    """The whole sampler output, on the exact mixture."""
    process, mixture = make_process(), make_mixture()
    uniform = sample(process, mixture, Guidance.create(np.full((H, W // 2 + 1), 2.5)))
    np.testing.assert_array_equal(uniform, sample(process, mixture, 2.5))
    np.testing.assert_array_equal(uniform, sample(process, mixture, make_guidance(
        2.5, H, W, band="")))
    assert np.abs(uniform - sample(process, mixture, 1.0)).max() > 1e-2  # guidance acted


# --- 4. guidance in a band leaves the other bins' law alone -----------------------------------
def test_band_guidance_changes_the_prediction_only_in_the_band():
    """Per bin the guided eps is eps_u + W_k (eps_c - eps_u): where W_k = 1 it is eps_c (up to
    round-off). The premise of the sampler-level test below: each class being one Gaussian
    diagonal in frequency, eps_c in a bin depends on x_t in that bin only (changing x_t inside
    the band leaves eps_c outside it unchanged), while eps_u couples the bins through the
    posterior p(k | x_t)."""
    process, mixture = make_process(), make_mixture()
    weight = band_weight("lowpass::0.5", 3.0, H, W)
    band = weight != 1.0
    labels = jnp.asarray(LABELS)
    t = jnp.linspace(0.1, 0.9, SHAPE[0])
    x_t = noisy_images(mixture, process, 3, labels, t)
    eps_c, eps_u, _ = oracle(mixture, process, x_t, t, labels)
    guided = call(guided_eps_fn(mixture.cond_fn(process), labels, Guidance.create(weight),
                                process, NULL), x_t, t)
    scale = np.abs(rfft(eps_c)).max()
    diff = np.abs(rfft(guided) - rfft(eps_c))
    assert diff[:, ~band].max() < 1e-5 * scale
    np.testing.assert_allclose(rfft(guided)[:, band], rfft(eps_u + 3.0 * (eps_c - eps_u))[
        :, band], atol=1e-5 * scale)
    assert diff[:, band].max() > 1e-2 * scale

    # Move x_t inside the band only: eps_c outside it stays, eps_u's does not.
    bump = np.fft.irfft2(np.where(band[..., None], rfft(jax.random.normal(
        jax.random.key(4), x_t.shape)), 0.0), s=(H, W), axes=(1, 2), norm="ortho")
    moved = x_t + jnp.asarray(bump, jnp.float32)
    eps_c2, eps_u2, _ = oracle(mixture, process, moved, t, labels)
    assert np.abs(rfft(eps_c2) - rfft(eps_c))[:, ~band].max() < 1e-5 * scale
    assert np.abs(rfft(eps_u2) - rfft(eps_u))[:, ~band].max() > 1e-3 * scale


@pytest.mark.slow
@pytest.mark.parametrize("name, steps", [("ddpm", STEPS), ("ode_heun", STEPS)])
def test_band_guidance_leaves_the_bins_outside_the_band_unchanged(name, steps):
    """With W_k = 1 outside the band, the guided eps there is eps_u + (eps_c - eps_u) = eps_c up
    to round-off; each class is one Gaussian diagonal in frequency, so eps_c in a bin depends
    only on x_t in that bin; every sampler updates each bin from that bin alone (per-bin
    multipliers) with the same fresh noise for the same key. So the bins outside the band
    follow exactly the weight-1 trajectory (float32 round-off apart), whatever the guidance
    does inside the band: their law is that of weight 1."""
    process, mixture = make_process(), make_mixture()
    weight = band_weight("lowpass::0.5", 3.0, H, W)
    band = weight != 1.0
    assert band.any() and (~band).any() and set(np.unique(weight)) == {1.0, 3.0}
    guided = sample(process, mixture, Guidance.create(weight), name=name, steps=steps)
    plain = sample(process, mixture, 1.0, name=name, steps=steps)
    spec_g, spec_p = rfft(guided), rfft(plain)
    outside = np.abs(spec_g - spec_p)[:, ~band]
    inside = np.abs(spec_g - spec_p)[:, band]
    scale = np.abs(spec_p).max()
    assert outside.max() < 1e-5 * scale, outside.max() / scale
    assert inside.mean() > 2e-3 * scale and inside.max() > 1e-2 * scale  # guided there


# --- 5. one doubled call, autoguidance, the interval -------------------------------------------
def test_classifier_free_guidance_makes_one_call_on_the_doubled_batch():
    """The models are Python functions that record the batch they see (once, as the eps_fn is
    traced); the results show which labels each half of the batch had."""
    process = make_process()
    seen, guides = [], []

    def counting(x, t, labels):
        seen.append(x.shape[0])
        return simple_cond_fn(x, t, labels)

    def guide(x, t, labels):
        guides.append(x.shape[0])
        return 0.5 * simple_cond_fn(x, t, labels)

    labels = np.array([0, 2, 1], np.int32)
    x = jax.random.normal(jax.random.key(1), (3, H, W, C))
    t = jnp.full((3,), 0.4)
    eps_c = np.asarray(simple_cond_fn(x, t, jnp.asarray(labels)))
    eps_u = np.asarray(simple_cond_fn(x, t, jnp.full((3,), NULL)))

    eps = call(guided_eps_fn(counting, labels, 3.0, process, NULL), x, t)
    assert seen == [6]  # one call, on [x, x] with [labels, null]
    np.testing.assert_allclose(eps, eps_u + 3.0 * (eps_c - eps_u), rtol=1e-6, atol=1e-6)

    seen.clear()  # weight exactly 1: one conditional call on the batch itself, no guide
    eps = call(guided_eps_fn(counting, labels, 1.0, process, NULL, guide_fn=guide), x, t)
    assert seen == [3] and guides == []
    np.testing.assert_array_equal(eps, eps_c)

    seen.clear()  # autoguidance: the main model and the guide, each once on the batch
    eps = call(guided_eps_fn(counting, labels, 3.0, process, NULL, guide_fn=guide), x, t)
    assert seen == [3] and guides == [3]
    np.testing.assert_allclose(eps, 0.5 * eps_c + 3.0 * (0.5 * eps_c), rtol=1e-6, atol=1e-6)


def self_guide(mixture, process, x, t, labels):
    """The conditional branch of ``mixture.cond_fn``: autoguidance by the model itself."""
    return mixture.eps(process, x, t, labels)


def test_autoguidance_by_the_model_itself_is_the_conditional_prediction():
    """guide = cond_fn's conditional branch: eps = eps_c + W (eps_c - eps_c) = eps_c."""
    process, mixture = make_process(), make_mixture()
    guide = jax.tree_util.Partial(self_guide, mixture, process)
    t = jnp.linspace(0.1, 0.9, SHAPE[0])
    x_t = noisy_images(mixture, process, 6, jnp.asarray(LABELS), t)
    plain = call(guided_eps_fn(mixture.cond_fn(process), LABELS, 1.0, process, NULL), x_t, t)
    for weight in (2.0, 5.0):
        guided = call(guided_eps_fn(mixture.cond_fn(process), LABELS, weight, process, NULL,
                                    guide_fn=guide), x_t, t)
        np.testing.assert_array_equal(guided, plain)


@pytest.mark.slow
def test_autoguidance_by_the_model_itself_samples_the_conditional_model():
    """The same, for the whole sampler output, bit for bit, whatever the weight."""
    process, mixture = make_process(), make_mixture()
    guide = jax.tree_util.Partial(self_guide, mixture, process)
    plain = sample(process, mixture, 1.0)
    for weight in (2.0, 5.0):
        np.testing.assert_array_equal(sample(process, mixture, weight, guide_fn=guide), plain)


def interval_case():
    """A batch at 12 times, the process, the mixture, the noise levels sigma_t / alpha_t and an
    interval holding examples 3 .. 8 (its bounds halfway between two examples' levels)."""
    process, mixture = make_process(), make_mixture()
    t = jnp.linspace(0.05, 0.95, SHAPE[0])
    levels = np.asarray(noise_levels(process, t), np.float64)
    x_t = noisy_images(mixture, process, 5, jnp.asarray(LABELS), t)
    return (process, mixture, t, x_t, levels,
            (0.5 * (levels[2] + levels[3]), 0.5 * (levels[8] + levels[9])))


@jax.jit
def noise_levels(process, t):
    alpha, sigma = process.coefficients(t)
    return sigma / alpha


def test_guidance_interval_selects_by_noise_level():
    """Per example: guided where sigma_t / alpha_t lies in [lo, hi], the conditional prediction
    elsewhere."""
    process, mixture, t, x_t, levels, (lo, hi) = interval_case()
    within = np.asarray(call(guided_eps_fn(mixture.cond_fn(process), LABELS, Guidance.create(
        3.0, (lo, hi)), process, NULL), x_t, t))
    eps_c, eps_u, _ = (np.asarray(v) for v in oracle(mixture, process, x_t, t,
                                                       jnp.asarray(LABELS)))
    everywhere = eps_u + 3.0 * (eps_c - eps_u)
    inside = (levels >= lo) & (levels <= hi)
    np.testing.assert_array_equal(np.flatnonzero(inside), np.arange(3, 9))
    scale = np.abs(everywhere).max()
    np.testing.assert_allclose(within[inside], everywhere[inside], atol=1e-5 * scale)
    np.testing.assert_allclose(within[~inside], eps_c[~inside], atol=1e-5 * scale)
    assert np.abs(everywhere - eps_c)[inside].max() > 1e-2 * scale


def test_guidance_interval_excluding_the_batch_is_the_plain_call_bit_for_bit():
    """A batch wholly outside the interval makes the plain conditional call (``lax.cond``):
    the prediction of weight 1, bit for bit."""
    process, mixture, t, x_t, levels, _ = interval_case()
    cond = mixture.cond_fn(process)
    plain = np.asarray(call(guided_eps_fn(cond, LABELS, 1.0, process, NULL), x_t, t))
    for interval in ((1e4, np.inf), (0.0, 0.5 * levels.min())):
        outside = call(guided_eps_fn(cond, LABELS, Guidance.create(3.0, interval), process,
                                     NULL), x_t, t)
        np.testing.assert_array_equal(outside, plain)


@pytest.mark.slow
def test_guidance_interval_in_the_sampler():
    """An interval that excludes every grid time is weight 1 bit for bit (a scalar and a
    per-bin weight); one that holds them all is guidance everywhere; one in between differs
    from both."""
    process, mixture = make_process(), make_mixture()
    times = jnp.asarray(time_grid(process.schedule, STEPS), jnp.float32)
    alpha, sigma = process.coefficients(times)
    levels = np.asarray(sigma / alpha)
    assert levels.max() < 1e3 and levels.min() > 1e-3
    plain, everywhere = sample(process, mixture, 1.0), sample(process, mixture, 3.0)
    np.testing.assert_array_equal(sample(process, mixture, Guidance.create(3.0, "1e3:inf")),
                                  plain)
    np.testing.assert_array_equal(sample(process, mixture, Guidance.create(3.0, "0:1e-3")),
                                  plain)
    band = band_weight("lowpass::0.5", 3.0, H, W)
    np.testing.assert_array_equal(sample(process, mixture, Guidance.create(band, "1e3:inf")),
                                  plain)
    np.testing.assert_allclose(sample(process, mixture, Guidance.create(3.0, "0:inf")),
                               everywhere, rtol=1e-5, atol=1e-5)
    middle = sample(process, mixture, Guidance.create(3.0, "0.5:5"))
    assert np.abs(middle - plain).max() > 1e-2 and np.abs(middle - everywhere).max() > 1e-2


def test_traced_labels_weights_and_intervals_do_not_recompile():
    """The guided eps_fn is a pytree whose models, labels, weight and interval bounds are
    leaves: new labels, another weight of the same kind or another interval reuse the
    compiled program; a per-bin weight is another program."""
    process = make_process()
    x, t = jax.random.normal(jax.random.key(0), (4, H, W, C)), jnp.full((4,), 0.5)
    compiled = jax.jit(lambda fn, x, t: fn(x, t))
    a = compiled(guided_eps_fn(simple_cond_fn, [0, 1, 2, 0], 2.0, process, NULL), x, t)
    b = compiled(guided_eps_fn(simple_cond_fn, [2, 2, 1, 0], 4.0, process, NULL), x, t)
    assert compiled._cache_size() == 1 and np.abs(np.asarray(a) - np.asarray(b)).max() > 0
    compiled(guided_eps_fn(simple_cond_fn, [0, 1, 2, 0], band_weight("lowpass::0.5", 4.0, H, W),
                           process, NULL), x, t)
    assert compiled._cache_size() == 2
    for interval in ((0.1, 1.0), (2.0, np.inf)):
        compiled(guided_eps_fn(simple_cond_fn, [0, 1, 2, 0], Guidance.create(2.0, interval),
                               process, NULL), x, t)
    assert compiled._cache_size() == 3


# --- 6. parsers and their one-line errors --------------------------------------------------
def test_band_weight_values():
    rho = radial_frequency(H, W)
    lowpass = band_weight("lowpass::0.5", 3.0, H, W)
    assert lowpass.dtype == np.float32 and lowpass.shape == (H, W // 2 + 1)
    np.testing.assert_array_equal(lowpass, np.where(rho <= 0.5, 3.0, 1.0))
    soft = band_weight("highpass:0.5::0.2", 0.0, H, W)
    assert soft.min() == 0.0 and soft.max() == 1.0 and ((soft > 0) & (soft < 1)).any()
    power = band_weight("powerlaw:1.5", 4.0, H, W)
    np.testing.assert_allclose(power, 1 + 3.0 * ((rho + 0.1) / 0.1) ** -1.5, rtol=1e-6)
    assert power[0, 0] == 4.0 and np.all(power > 1)
    custom = band_weight("powerlaw:2:0.5", 2.0, H, W)
    np.testing.assert_allclose(custom, 1 + ((rho + 0.5) / 0.5) ** -2.0, rtol=1e-6)
    assert make_guidance(3.0, H, W, band="powerlaw:1", interval="0.3:2").interval == (0.3, 2.0)


def test_band_weight_errors(one_line_error):
    for spec, needle in [("lowpass:0.2:0.5", "lowpass band uses only hi"),
                         ("wiggle::0.5", "must be one of"),
                         ("lowpass::abc", "bands[0]"),
                         ("bandpass:0.6:0.61", "remove every frequency"),
                         ("powerlaw", "powerlaw:GAMMA[:RHO0]"),
                         ("powerlaw:x", "must be numbers"),
                         ("powerlaw:-1", "GAMMA=-1"),
                         ("powerlaw:1:0", "RHO0=0"),
                         ("powerlaw:1:2:3", "powerlaw:GAMMA[:RHO0]")]:
        one_line_error(lambda spec=spec: band_weight(spec, 2.0, H, W), "--guidance_band", needle)
    one_line_error(lambda: band_weight("lowpass::0.5", float("nan"), H, W), "--guidance=nan")


def test_parse_interval(one_line_error):
    assert parse_interval(None) is None and parse_interval("") is None
    assert parse_interval("0.28:2.9") == (0.28, 2.9)
    assert parse_interval("0:inf") == (0.0, np.inf)
    for spec, needle in [("1", "expected LO:HI"), ("1:2:3", "expected LO:HI"),
                         ("a:2", "must be numbers"), ("-1:2", "LO=-1"), ("2:1", "HI=1"),
                         ("1:1", "HI=1"), ("nan:2", "LO=nan"), ("0:nan", "HI=nan"),
                         ("inf:inf", "LO=inf")]:
        one_line_error(lambda spec=spec: parse_interval(spec), "--guidance_interval", needle)
    one_line_error(lambda: Guidance.create(2.0, (3.0, 1.0)), "--guidance_interval", "HI=1")


def test_labels(one_line_error):
    np.testing.assert_array_equal(balanced_labels(7, 3), [0, 1, 2, 0, 1, 2, 0])
    assert balanced_labels(7, 3).dtype == np.int32
    drawn = random_labels(0, 500, 4)
    assert drawn.dtype == np.int32 and set(drawn.tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(drawn, random_labels(jax.random.key(0), 500, 4))
    np.testing.assert_array_equal(parse_labels("random", 500, 4, key_or_seed=0), drawn)
    np.testing.assert_array_equal(parse_labels("balanced", 5, 2), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(parse_labels("3", 4, 10), [3, 3, 3, 3])
    np.testing.assert_array_equal(parse_labels("1, 4,0", 7, 5), [1, 4, 0, 1, 4, 0, 1])
    for spec, needle in [("12", "label 12 is out of range 0 .. 9"),
                         ("-1", "label -1 is out of range"),
                         ("1,x", "expected balanced, random or a list"),
                         ("", "expected balanced, random or a list"),
                         ("1.5", "expected balanced, random or a list")]:
        one_line_error(lambda spec=spec: parse_labels(spec, 4, 10), "--labels", needle)


def test_guidance_and_guided_eps_fn_errors(one_line_error):
    process, mixture = make_process(), make_mixture()
    cond = mixture.cond_fn(process)
    one_line_error(lambda: Guidance.create(float("inf")), "--guidance=inf")
    one_line_error(lambda: Guidance.create("2"), "--guidance='2'")
    one_line_error(lambda: Guidance.create(np.ones((2, 2, 2))), "--guidance", "per-bin")
    bad = np.ones((H, W // 2 + 1), np.float32)
    bad[1, 0] = 2.0  # its mirror (H - 1, 0) is not
    one_line_error(lambda: guided_eps_fn(cond, [0], bad, process, NULL), "not even")
    one_line_error(lambda: guided_eps_fn(cond, [0], np.arange(6.0).reshape(2, 3), process,
                                         NULL), "shape (2, 3)")
    one_line_error(lambda: guided_eps_fn(cond, [0, 4], 2.0, process, NULL), "label 4")
    one_line_error(lambda: guided_eps_fn(cond, None, 2.0, process, NULL),
                   "needs class labels")
    eps_fn = guided_eps_fn(cond, [0, 1], 2.0, process, NULL)
    x = jnp.zeros((3, H, W, C))
    one_line_error(lambda: eps_fn(x, jnp.full((3,), 0.5)), "labels", "(3,)")
    # An unconditional model: weight 1 or autoguidance, labels None passed through.
    seen = []

    def uncond(x, t, labels):
        seen.append(labels)
        return mixture.eps_unconditional(process, x, t)

    call(guided_eps_fn(uncond, None, 2.0, process, NULL, guide_fn=uncond), x,
         jnp.full((3,), 0.5))
    assert seen == [None, None]


def test_mixture_create_errors(one_line_error):
    means = np.zeros((2, 4, 4, 1))
    one_line_error(lambda: GaussianMixture.create(means[0], np.ones((2, 4, 3))), "means")
    one_line_error(lambda: GaussianMixture.create(means, np.ones((2, 4, 4))), "spectra")
    one_line_error(lambda: GaussianMixture.create(means, -np.ones((2, 4, 3))), "spectra")
    one_line_error(lambda: GaussianMixture.create(means, np.ones((2, 4, 3)), [1.0, 0.0]),
                   "prior")
    mixture = GaussianMixture.create(means, np.ones((2, 4, 3)), [3.0, 1.0])
    np.testing.assert_allclose(np.exp(mixture.log_prior), [0.75, 0.25], rtol=1e-6)
