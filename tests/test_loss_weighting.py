"""Loss weightings on the per-frequency SNR (``diffusion.loss_weighting``,
``diffusion.frequency_loss_weights``; docs/math.md section 13).

References: section 3's loss written out again here (the default must be it, bit for bit); the
published isotropic weightings in float64 NumPy at gamma 0 (Hang et al.'s min-SNR-gamma in its
eps, x0 and v forms, Kingma & Gao's sigmoid, EDM's lambda(sigma)); a dense float64 per-bin
reference with NumPy's unitary FFT under SAGD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax import loss_weighting
from sagd_jax.config import default_config
from sagd_jax.frequency_schedule import FrequencySchedule
from sagd_jax.process import DiffusionProcess
from sagd_jax.schedules import VPSDE
from sagd_jax.spectral import SpectralCovariance

H, W = 8, 6
TIMES = (0.02, 0.3, 0.6, 0.95)


def make_process(gamma: float = 0.0, bands: str = "", height: int = H, width: int = W,
                 **kwargs) -> DiffusionProcess:
    cov = SpectralCovariance.create(height, width, gamma=gamma, bands=bands)
    return DiffusionProcess(cov=cov, schedule=VPSDE(), **kwargs)


def batch(height: int = H, width: int = W, channels: int = 2, seed: int = 0):
    """``(x0, eps, output, t)``: x0 of std 0.5, white eps, a random network output (errors of
    order 1), one time per example."""
    keys = jax.random.split(jax.random.key(seed), 3)
    shape = (len(TIMES), height, width, channels)
    x0 = 0.5 * jax.random.normal(keys[0], shape)
    eps = jax.random.normal(keys[1], shape)
    output = jax.random.normal(keys[2], shape)
    return x0, eps, output, jnp.asarray(TIMES, jnp.float32)


def expand(c: jax.Array) -> jax.Array:
    return c.reshape(c.shape + (1, 1, 1))


def todays_loss(process: DiffusionProcess, output, x0, eps, t) -> jax.Array:
    """Section 3's loss as the code computed it before the weightings existed."""
    cov = process.cov
    alpha, sigma = process.schedule.alpha_sigma(t)
    white = cov.inv_sqrt if process.prediction == "x0" else (lambda v: v)
    if process.parameterization == "edm":
        r2, d2 = (sigma / alpha) ** 2, process.sigma_data**2
        inv_alpha, c_skip = 1.0 / alpha, d2 / (r2 + d2)
        c_out = jnp.sqrt(r2) * process.sigma_data * jax.lax.rsqrt(r2 + d2)
        x_t = (expand(alpha) * x0 + expand(sigma) * cov.sqrt(eps)).astype(x0.dtype)
        target = (x0 - expand(c_skip * inv_alpha) * x_t.astype(jnp.float32)) / expand(c_out)
    elif process.prediction == "eps":
        target = eps
    elif process.prediction == "x0":
        target = x0
    else:
        target = expand(alpha) * eps - expand(sigma) * cov.inv_sqrt(x0)
    diff = white(target.astype(jnp.float32)) - white(output.astype(jnp.float32))
    proj = cov.project(diff)
    dims = cov.support_fraction * diff.shape[-3] * diff.shape[-2] * diff.shape[-1]
    return jnp.sum(proj**2, axis=(-3, -2, -1)) / dims


def published(kind: str, snr: np.ndarray, gamma: float = 5.0, bias: float = 0.0,
              sigma_data: float = 0.5) -> np.ndarray:
    """The weight on the eps error, float64."""
    if kind == "snr":
        return np.ones_like(snr)
    if kind == "min_snr":
        return np.minimum(snr, gamma) / snr
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(np.log(snr) - bias))
    sigma2 = 1.0 / snr  # edm: lambda(sigma) on the x0 error, x0 error = sigma * eps error
    return (sigma2 + sigma_data**2) / (sigma2 * sigma_data**2) * sigma2


def f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


# --- (a) the default is today's loss, bit for bit -------------------------------------------
@pytest.mark.parametrize("prediction,parameterization",
                         [("eps", "none"), ("x0", "none"), ("v", "none"), ("x0", "edm")])
@pytest.mark.parametrize("gamma,bands", [(0.0, ""), (1.0, "bandstop:0.4:0.6")])
def test_none_is_todays_loss_bit_for_bit(prediction, parameterization, gamma, bands):
    config = default_config()
    config.noise.gamma, config.noise.bands = gamma, bands
    config.diffusion.prediction, config.diffusion.parameterization = prediction, parameterization
    process = DiffusionProcess.from_config(config, H, W)
    assert process.loss_weighting == "none" and process.frequency_loss_weights is None
    # No new leaf: the default process is the same pytree as before.
    assert len(jax.tree.leaves(process)) == 1
    x0, eps, output, t = batch()
    got, want = process.loss(output, x0, eps, t), todays_loss(process, output, x0, eps, t)
    assert got.dtype == jnp.float32 and got.shape == (len(TIMES),)
    np.testing.assert_array_equal(got, want)
    todays = jax.jit(lambda *args: todays_loss(process, *args))
    np.testing.assert_array_equal(jax.jit(process.loss)(output, x0, eps, t),
                                  todays(output, x0, eps, t))


# --- (b) gamma 0: the published isotropic weightings ------------------------------------------
@pytest.mark.parametrize("kind", ["snr", "min_snr", "sigmoid", "edm"])
def test_isotropic_eps_prediction_is_the_published_weighting(kind):
    gamma, bias = 3.0, -1.5
    process = make_process(loss_weighting=kind, min_snr_gamma=gamma, sigmoid_bias=bias)
    x0, eps, output, t = batch()
    alpha, sigma = (f64(v) for v in process.coefficients(t))
    snr = alpha**2 / sigma**2
    mse = np.mean((f64(eps) - f64(output)) ** 2, axis=(1, 2, 3))
    want = published(kind, snr, gamma, bias) * mse
    np.testing.assert_allclose(process.loss(output, x0, eps, t), want, rtol=2e-5)


def test_isotropic_min_snr_in_its_x0_and_v_forms():
    """Hang et al.: min(SNR, gamma) on the x0 error; min(SNR, gamma) / (SNR + 1) on the v error
    of a variance-preserving schedule."""
    x0, eps, output, t = batch()
    x0_process = make_process(prediction="x0", loss_weighting="min_snr")
    alpha, sigma = (f64(v) for v in x0_process.coefficients(t))
    snr = alpha**2 / sigma**2
    x0_mse = np.mean((f64(x0) - f64(output)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(x0_process.loss(output, x0, eps, t),
                               np.minimum(snr, 5.0) * x0_mse, rtol=2e-5)
    snr_process = x0_process.replace(loss_weighting="snr")
    np.testing.assert_allclose(snr_process.loss(output, x0, eps, t), snr * x0_mse, rtol=2e-5)
    v_process = make_process(prediction="v", loss_weighting="min_snr")
    a, s = alpha[:, None, None, None], sigma[:, None, None, None]
    v = a * f64(eps) - s * f64(x0)
    v_mse = np.mean((v - f64(output)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(v_process.loss(output, x0, eps, t),
                               np.minimum(snr, 5.0) / (snr + 1) * v_mse, rtol=2e-5)


# --- (c) SAGD: per-bin SNR against a dense float64 reference ----------------------------------
def full_grid(half: np.ndarray, width: int) -> np.ndarray:
    """An even half-plane array ``(..., H, W // 2 + 1)`` on the full ``(..., H, W)`` grid."""
    height = half.shape[-2]
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    in_half = cols <= width // 2
    return half[..., np.where(in_half, rows, (-rows) % height),
                np.where(in_half, cols, width - cols)]


def reference_loss(process: DiffusionProcess, output, x0, eps, t, kind: str,
                   f: np.ndarray | None = None) -> np.ndarray:
    """``sum_k f_k lambda(SNR_k) |FFT(eps - eps_hat)_k|^2 / (C count(w > 0))`` in float64, per
    bin on the full grid, eps_hat solved per bin from the prediction."""
    height, width = x0.shape[1:3]
    a, s2 = (f64(v) for v in process.spectral_coefficients(t))
    shape = (len(t), height, width // 2 + 1)
    a, s2 = (full_grid(np.broadcast_to(v, shape), width)[..., None] for v in (a, s2))
    support = s2 > 0
    s = np.sqrt(s2)
    fft = lambda v: np.fft.fft2(f64(v), axes=(1, 2), norm="ortho")  # noqa: E731
    x0_k, eps_k, out_k = fft(x0), fft(eps), fft(output)
    x_t = a * x0_k + s * eps_k
    if process.prediction == "eps":
        eps_hat = out_k
    elif process.prediction == "x0":
        eps_hat = (x_t - a * out_k) / np.where(support, s, 1.0)
    else:  # v = alpha eps - sigma Sigma^{-1/2} x0, constant Sigma
        alpha, sigma = (f64(v)[:, None, None, None] for v in process.coefficients(t))
        root_w = np.sqrt(full_grid(f64(process.cov.weights), width))[..., None]
        inv_root_w = np.where(root_w > 0, 1.0 / np.where(root_w > 0, root_w, 1.0), 0.0)
        eps_hat = (sigma * inv_root_w * x_t + alpha * out_k) / (alpha**2 + sigma**2)
    snr = np.where(support, a**2 / np.where(support, s2, 1.0), 1.0)
    weight = np.where(support, published(kind, snr, 3.0, 0.7), 0.0)
    if f is not None:
        weight = weight * f[..., None]
    total = np.sum(weight * np.abs(eps_k - eps_hat) ** 2, axis=(1, 2, 3))
    return total / (x0.shape[-1] * np.count_nonzero(support[0, ..., 0]))


def full_rho(height: int, width: int) -> np.ndarray:
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    return np.sqrt(fy**2 + fx**2) / 0.5


@pytest.mark.parametrize("height,width", [(8, 6), (7, 5)])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind", ["snr", "min_snr", "sigmoid", "edm"])
def test_sagd_per_bin_weighting_matches_dense_reference(height, width, prediction, kind):
    """gamma 1 with a masked band: each bin weighted by its own SNR, the masked bins out; with
    a powerlaw frequency weight on top."""
    process = make_process(gamma=1.0, bands="bandstop:0.45:0.7", height=height, width=width,
                           prediction=prediction, loss_weighting=kind, min_snr_gamma=3.0,
                           sigmoid_bias=0.7)
    assert not process.cov.full_support
    x0, eps, output, t = batch(height, width)
    np.testing.assert_allclose(process.loss(output, x0, eps, t),
                               reference_loss(process, output, x0, eps, t, kind), rtol=1e-4)
    f = ((full_rho(height, width) + 0.2) / 0.2) ** -1.5
    config = default_config()
    config.noise.gamma, config.noise.bands = 1.0, "bandstop:0.45:0.7"
    config.diffusion.update(prediction=prediction, loss_weighting=kind, min_snr_gamma=3.0,
                            sigmoid_bias=0.7, frequency_loss_weights="powerlaw:1.5:0.2")
    weighted = DiffusionProcess.from_config(config, height, width)
    np.testing.assert_allclose(weighted.loss(output, x0, eps, t),
                               reference_loss(process, output, x0, eps, t, kind, f), rtol=1e-4)


def test_sagd_weights_differ_between_bins_of_one_time():
    """Under SAGD the min-SNR weight is per bin: at one t, the noisier (low-frequency) bins
    keep weight 1 while the cleaner ones are capped, unlike the scalar weight of gamma 0."""
    process = make_process(gamma=2.0, loss_weighting="min_snr", min_snr_gamma=5.0)
    weights = np.asarray(process.loss_weights(jnp.asarray([0.05])))[0]
    alpha, sigma = (f64(v) for v in process.coefficients(jnp.asarray([0.05])))
    snr = alpha**2 / (sigma**2 * f64(process.cov.weights))
    np.testing.assert_allclose(weights, np.minimum(snr, 5.0) / snr, rtol=1e-5)
    assert weights.max() == 1.0 and weights.min() < 0.1


def test_shaped_process_uses_its_per_bin_coefficients():
    """A per-frequency schedule (section 7): SNR_k from its A_t and S_t^2."""
    process = make_process(gamma=1.0, prediction="x0", loss_weighting="sigmoid",
                           sigmoid_bias=0.7, min_snr_gamma=3.0)
    process = process.replace(shaping=FrequencySchedule.create(
        process.cov, noise_exponent_start=0.3, blur_sigma_max=1.0))
    x0, eps, output, t = batch()
    np.testing.assert_allclose(process.loss(output, x0, eps, t),
                               reference_loss(process, output, x0, eps, t, "sigmoid"), rtol=1e-4)


# --- (d) the edm weighting is EDM's native loss at gamma 0 ------------------------------------
def test_edm_weighting_equals_native_edm_loss_at_gamma_0():
    native = make_process(prediction="x0", parameterization="edm")
    weighted = native.replace(loss_weighting="edm")
    x0, eps, output, t = batch()
    np.testing.assert_allclose(weighted.loss(output, x0, eps, t),
                               native.loss(output, x0, eps, t), rtol=1e-5)
    # Under SAGD the native loss weighs every bin by the scalar sigma, the weighting per bin.
    sagd = make_process(gamma=1.0, prediction="x0", parameterization="edm")
    assert not np.allclose(sagd.replace(loss_weighting="edm").loss(output, x0, eps, t),
                           sagd.loss(output, x0, eps, t), rtol=1e-3)


# --- (e) frequency weights ------------------------------------------------------------------
def with_frequency_weights(spec: str, **diffusion) -> DiffusionProcess:
    config = default_config()
    config.noise.gamma = 1.0
    config.diffusion.update(frequency_loss_weights=spec, **diffusion)
    return DiffusionProcess.from_config(config, H, W)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_uniform_frequency_weights_are_the_unweighted_loss(prediction):
    plain = with_frequency_weights("", prediction=prediction)
    x0, eps, output, t = batch()
    want = plain.loss(output, x0, eps, t)
    for spec in ("powerlaw:0", "highpass:0"):  # 1 in every bin: stored as off
        process = with_frequency_weights(spec, prediction=prediction)
        assert process.frequency_loss_weights is None
        np.testing.assert_array_equal(process.loss(output, x0, eps, t), want)
    # An explicit weight of ones takes the weighted path (one rfft, Parseval): the same loss.
    ones = plain.replace(frequency_loss_weights=jnp.ones((H, W // 2 + 1)))
    np.testing.assert_allclose(ones.loss(output, x0, eps, t), want, rtol=1e-5)
    # So does the snr weighting of an eps prediction (weight 1 on the eps error).
    if prediction == "eps":
        np.testing.assert_allclose(plain.replace(loss_weighting="snr").loss(output, x0, eps, t),
                                   want, rtol=1e-5)


@pytest.mark.parametrize("kind", ["none", "min_snr"])
def test_band_weight_changes_only_its_bins(kind):
    """``lowpass::0.5``: an error confined to rho > 0.5 costs nothing; one confined to
    rho <= 0.5 costs what it costs without the weight."""
    plain = with_frequency_weights("", loss_weighting=kind)
    banded = with_frequency_weights("lowpass::0.5", loss_weighting=kind)
    rho = full_rho(H, W)
    x0, eps, _, t = batch()
    noise = np.fft.fft2(np.asarray(jax.random.normal(jax.random.key(3), eps.shape)), axes=(1, 2))
    for inside in (True, False):
        keep = (rho <= 0.5) if inside else (rho > 0.5)
        error = np.fft.ifft2(noise * keep[None, :, :, None], axes=(1, 2)).real
        output = eps - jnp.asarray(error, jnp.float32)
        got, full = banded.loss(output, x0, eps, t), plain.loss(output, x0, eps, t)
        assert np.all(np.asarray(full) > 1e-4)
        if inside:
            np.testing.assert_allclose(got, full, rtol=1e-5)
        else:
            np.testing.assert_allclose(got, 0.0, atol=1e-6 * float(np.max(full)))


# --- (f) one-line errors naming the key -------------------------------------------------------
@pytest.mark.parametrize("key,value,needles", [
    ("loss_weighting", "foo", ("diffusion.loss_weighting='foo': must be one of none, snr, "
                               "min_snr, sigmoid, edm",)),
    ("min_snr_gamma", 0.0, ("diffusion.min_snr_gamma=0.0", "(0, inf)")),
    ("min_snr_gamma", float("nan"), ("diffusion.min_snr_gamma=nan",)),
    ("min_snr_gamma", "5", ("diffusion.min_snr_gamma='5'",)),
    ("sigmoid_bias", float("inf"), ("diffusion.sigmoid_bias=inf", "finite")),
    ("frequency_loss_weights", 3, ("diffusion.frequency_loss_weights=3", "string")),
    ("frequency_loss_weights", "wiggle::0.5",
     ("diffusion.frequency_loss_weights='wiggle::0.5'", "must be one of")),
    ("frequency_loss_weights", "powerlaw:-1", ("diffusion.frequency_loss_weights", "GAMMA=-1")),
    ("frequency_loss_weights", "powerlaw", ("diffusion.frequency_loss_weights",
                                            "powerlaw:GAMMA[:RHO0]")),
    ("frequency_loss_weights", "bandpass:0.45:0.7",
     ("diffusion.frequency_loss_weights='bandpass:0.45:0.7'", "nothing would be trained")),
])
def test_bad_values_are_one_line_errors_naming_the_key(one_line_error, key, value, needles):
    config = default_config()
    config.noise.bands = "bandstop:0.4:0.75"
    with config.diffusion.ignore_type():
        config.diffusion[key] = value
    one_line_error(lambda: DiffusionProcess.from_config(config, H, W), *needles)


def test_direct_construction_checks_its_fields(one_line_error):
    one_line_error(lambda: make_process(loss_weighting="foo"), "loss_weighting='foo'")
    one_line_error(lambda: make_process(min_snr_gamma=-1.0), "min_snr_gamma=-1.0")
    one_line_error(lambda: loss_weighting.weight("foo", jnp.zeros(3)), "loss_weighting='foo'")


# --- the train step -------------------------------------------------------------------------
@pytest.mark.slow
def test_train_step_with_a_weighted_loss(tiny_config):
    """The trainer's step calls ``process.loss(out, x0, eps, t)``: with a weighted loss (x0
    prediction, min-SNR, a band weight) it runs, its loss finite, and the parameters move."""
    from sagd_jax.run import Run
    from sagd_jax.sharding import make_mesh

    config = tiny_config(**{"diffusion.prediction": "x0", "diffusion.loss_weighting": "min_snr",
                            "diffusion.frequency_loss_weights": "lowpass::1"})
    run = Run.from_config(config)
    assert run.process.loss_weighting == "min_snr"
    assert run.process.frequency_loss_weights is not None
    mesh = make_mesh()
    state, step = run.init_state(mesh), run.train_step(mesh)
    before = jax.device_get(jax.tree.leaves(state.params))
    losses = []
    for s in range(2):
        state, metrics = step(state, run.global_batch(s, mesh))
        losses.append(float(metrics["loss"]))
        assert not int(metrics["nonfinite"])
    assert all(np.isfinite(losses))
    after = jax.device_get(jax.tree.leaves(state.params))
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
