"""Per-frequency schedules (``x_t = A_t x0 + S_t eps``, ``A_t``, ``S_t`` diagonal in frequency).

References: float64 numpy forms of ``w_k(t)`` and ``d_k(t)``; finite differences of the
marginal coefficients for the SDE; the exact Gaussian model (docs/math.md sec. 5, per bin) for
every sampler, within the bias the extended ``sampler_output_spectrum`` predicts plus Monte
Carlo error (as tests/test_samplers.py does for the constant process); the constant process
through the general per-bin code for the reduction.
"""

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
from sagd_jax.schedules import VPSDE, Cosine
from sagd_jax.spectral import SpectralCovariance, full_grid_mean, radial_frequency

H = W = 8
N, C = 2048, 2
MASK = "bandstop:0.3:0.6"
# (name, shaping keywords): white near the data / shaped near the prior, blurring, both.
SHAPINGS = {
    "white-to-shaped": dict(noise_exponent_start=0.0),
    "white-to-shaped-p2": dict(noise_exponent_start=0.0, noise_exponent_power=2.0),
    "blur": dict(blur_sigma_max=1.5),
    "blur+exponent": dict(noise_exponent_start=0.5, blur_sigma_max=1.0),
}
CASES = [("ddpm", 200, {}), ("ddim", 100, {}), ("ddim", 100, {"eta": 0.5}),
         ("ode_euler", 100, {}), ("ode_heun", 50, {}), ("sde", 200, {}), ("dpmpp_2m", 50, {})]


def shaped_process(shaping: dict, gamma: float = 2.0, bands: str = "",
                   schedule=None) -> DiffusionProcess:
    cov = SpectralCovariance.create(H, W, gamma=gamma, bands=bands)
    return DiffusionProcess(cov=cov, schedule=schedule or VPSDE(),
                            shaping=FrequencySchedule.create(cov, **shaping))


def reference_factors(cov: SpectralCovariance, shaping: dict, t: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(d_k(t), w_k(t))`` in float64 from the definitions (module docstring)."""
    w = np.asarray(cov.weights, np.float64)
    s0 = shaping.get("noise_exponent_start", 1.0)
    s = s0 + (1 - s0) * t ** shaping.get("noise_exponent_power", 1.0)
    wt = np.where(w > 0, np.where(w > 0, w, 1.0) ** s, 0.0)
    wt = wt / full_grid_mean(wt, W)
    sigma_b = shaping.get("blur_sigma_max", 0.0) * np.sin(np.pi * t / 2)
    d_min = shaping.get("blur_min", 0.001)
    rho = radial_frequency(H, W)
    d = (1 - d_min) * np.exp(-0.5 * np.pi**2 * rho**2 * sigma_b**2) + d_min
    return d, wt


@pytest.mark.slow
@pytest.mark.parametrize("name", SHAPINGS)
def test_factors_match_their_definition(name):
    process = shaped_process(SHAPINGS[name], bands=MASK)
    for t in (1e-3, 0.3, 0.7, 1.0):
        d, wt = reference_factors(process.cov, SHAPINGS[name], t)
        a, s2 = (np.asarray(v, np.float64) for v in process.spectral_coefficients(jnp.float32(t)))
        alpha, sigma = (float(v) for v in process.coefficients(jnp.float32(t)))
        np.testing.assert_allclose(a, alpha * d, rtol=2e-5)
        np.testing.assert_allclose(s2, sigma**2 * wt, rtol=2e-4, atol=1e-12)
        assert full_grid_mean(wt, W) == pytest.approx(1.0)
    # At t = 1 the noise has the base shape: the prior is N(0, sigma_1^2 Sigma).
    _, w1 = process.spectral_coefficients(jnp.float32(1.0))
    _, sigma1 = process.coefficients(jnp.float32(1.0))
    np.testing.assert_allclose(w1, sigma1**2 * process.cov.weights, rtol=2e-5, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [VPSDE(), Cosine()], ids=lambda s: s.name)
@pytest.mark.parametrize("name", SHAPINGS)
def test_sde_matches_the_marginals(name, schedule):
    """``dA/dt = f_k A`` and ``dS^2/dt = 2 f_k S^2 + g2_k`` (central differences of the
    float64 reference factors), and ``g2_k >= 0``: each bin's SNR falls with t."""
    process = shaped_process(SHAPINGS[name], schedule=schedule)
    h = 1e-4
    for t in (0.05, 0.3, 0.6, 0.9):
        def marginal(u):
            d, wt = reference_factors(process.cov, SHAPINGS[name], u)
            a2 = np.exp(np.float64(schedule.log_alpha2(jnp.float32(u))))
            return np.sqrt(a2) * d, (1 - a2) * wt

        (a_lo, s2_lo), (a_hi, s2_hi), (a, s2) = marginal(t - h), marginal(t + h), marginal(t)
        f, g2 = (np.asarray(v, np.float64) for v in process.spectral_sde(jnp.float32(t)))
        scale = np.abs(g2).max()
        np.testing.assert_allclose(f, (a_hi - a_lo) / (2 * h) / a, rtol=2e-2, atol=2e-2)
        np.testing.assert_allclose(g2, (s2_hi - s2_lo) / (2 * h) - 2 * f * s2,
                                   rtol=2e-2, atol=2e-3 * scale)
        assert g2.min() >= 0


@pytest.mark.slow
def test_general_form_reduces_to_the_constant_process():
    """A per-bin schedule with ``s_0 = 1`` and no blur is the constant process: every
    operation and sampler of the general per-bin code equals the constant code."""
    cov = SpectralCovariance.create(H, W, gamma=1.0, bands=MASK)
    key = jax.random.key(0)
    x0 = cov.project(jax.random.normal(jax.random.fold_in(key, 1), (4, H, W, 1)))
    eps = cov.project(jax.random.normal(jax.random.fold_in(key, 2), (4, H, W, 1)))
    t = jnp.array([0.01, 0.2, 0.6, 1.0])
    for prediction in ("eps", "x0", "v"):
        plain = DiffusionProcess(cov=cov, schedule=VPSDE(), prediction=prediction)
        general = plain.replace(shaping=FrequencySchedule.create(cov))
        x_t = plain.perturb(x0, eps, t)
        np.testing.assert_allclose(general.perturb(x0, eps, t), x_t, atol=2e-6)
        out = plain.target(x0, eps, t)
        for method in ("eps_from_output", "score"):
            args = (out, x_t, t) if method == "eps_from_output" else (x_t, t, eps)
            np.testing.assert_allclose(getattr(general, method)(*args),
                                       getattr(plain, method)(*args), rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(general.denoise(x_t, t, eps), plain.denoise(x_t, t, eps),
                                   rtol=1e-4, atol=1e-4)
    data = demo_data(H)
    for name, _, options in CASES:
        steps = 20
        outputs = [get_sampler(name)(p, data.eps_fn(p), jax.random.key(3), (8, H, W, 1), steps,
                                     **options) for p in (plain, general)]
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-3, atol=1e-3, err_msg=name)
        pred = [sampler_output_spectrum(p, data, name, steps, options.get("eta", 0.0))
                for p in (plain, general)]
        np.testing.assert_allclose(pred[1], pred[0], rtol=1e-4, err_msg=name)


def test_constant_config_builds_the_constant_process():
    """The default config (and any with ``s_0 = 1``, no blur) has no per-bin schedule: the
    process and its jitted programs are exactly today's."""
    config = default_config()
    assert DiffusionProcess.from_config(config, H, W).shaping is None
    config.diffusion.blur_sigma_max = 1.0
    assert DiffusionProcess.from_config(config, H, W).shaping is not None


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_predictions_round_trip(prediction):
    """The network's target for (x0, eps) converts back to eps under a per-bin schedule."""
    process = shaped_process(SHAPINGS["blur+exponent"], bands=MASK).replace(
        prediction=prediction)
    key = jax.random.key(1)
    x0 = process.cov.project(jax.random.normal(jax.random.fold_in(key, 1), (4, H, W, 1)))
    eps = process.cov.project(jax.random.normal(jax.random.fold_in(key, 2), (4, H, W, 1)))
    t = jnp.array([0.02, 0.3, 0.7, 1.0])
    x_t = process.perturb(x0, eps, t)
    back = process.eps_from_output(process.target(x0, eps, t), x_t, t)
    np.testing.assert_allclose(back, eps, atol=2e-3)
    np.testing.assert_allclose(process.denoise(x_t, t, eps), x0, atol=2e-2)
    assert process.loss(process.target(x0, eps, t), x0, eps, t).max() == 0


def test_exact_model_is_the_posterior():
    """The exact model's eps, score and Tweedie denoiser per bin against float64 forms:
    ``E[x0 | x_t] = A c / V x_t``, score ``-x_t / V``, ``E[eps | x_t] = S / V x_t``."""
    process = shaped_process(SHAPINGS["blur+exponent"])
    data = demo_data(H)
    c = np.asarray(data.spectrum, np.float64)
    x_t = jax.random.normal(jax.random.key(5), (3, H, W, 1))
    t = jnp.array([0.05, 0.4, 0.9])
    a, s2 = (np.asarray(v, np.float64) for v in process.spectral_coefficients(t))
    v = a**2 * c + s2
    spec = np.fft.rfft2(np.asarray(x_t, np.float64), axes=(1, 2))

    def back(m):
        return np.fft.irfft2(spec * m[..., None], s=(H, W), axes=(1, 2))

    eps = data.eps(process, x_t, t)
    np.testing.assert_allclose(eps, back(np.sqrt(s2) / v), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data.score(process, x_t, t), back(-1 / v), rtol=1e-4, atol=1e-5)
    # Tweedie divides by A_t (down to alpha_t d_min at t = 0.9): float32 round-off of
    # x_t - S eps grows by 1 / min(A_t), so each time gets that bound.
    denoised, expected = process.denoise(x_t, t, eps), back(a * c / v)
    for i in range(3):
        bound = 1e-6 * float(np.abs(x_t[i]).max()) / a[i].min()
        np.testing.assert_allclose(denoised[i], expected[i], rtol=1e-4, atol=bound)


def real_bins() -> np.ndarray:
    ky = np.isin(np.arange(H), [0, H // 2])[:, None]
    kx = np.isin(np.arange(W // 2 + 1), [0, W // 2])[None, :]
    return ky & kx


# Each sampler on one of the three schedules (in turn), so every schedule meets several samplers.
SAMPLER_SCHEDULES = [(*case, ("white-to-shaped", "blur", "blur+exponent")[i % 3])
                     for i, case in enumerate(CASES)]


@pytest.mark.slow
@pytest.mark.parametrize("name, steps, options, shaping", SAMPLER_SCHEDULES)
def test_samplers_reproduce_the_data_spectrum(name, steps, options, shaping):
    """Every sampler on the exact model: per bin within 5 Monte-Carlo standard errors of the
    extended prediction, and within that prediction's bias + 5 standard errors of ``c``."""
    bands = MASK if shaping == "blur+exponent" else ""
    process = shaped_process(SHAPINGS[shaping], bands=bands)
    data = demo_data(H)
    x = get_sampler(name)(process, data.eps_fn(process), jax.random.key(17), (N, H, W, C),
                          steps, **options)
    c = np.asarray(data.spectrum, np.float64)
    support = np.asarray(process.cov.support)
    predicted = sampler_output_spectrum(process, data, name, steps, options.get("eta", 0.0))
    n = N * C
    stderr = np.where(real_bins(), np.sqrt(2 / n), np.sqrt(1 / n))[support]
    var = power_spectrum(x)
    z = (var[support] / predicted[support] - 1) / stderr
    assert np.abs(z).max() < 5, f"max |z| = {np.abs(z).max():.2f}"
    assert np.mean(z**2) < 2.0, f"mean z^2 = {np.mean(z**2):.2f}"
    bias = np.abs(predicted[support] / c[support] - 1)
    assert np.all(np.abs(var[support] / c[support] - 1) <= bias + 5 * stderr)
    if bands:
        assert var[~support].max() < 1e-12 * c.mean()


@pytest.mark.slow
@pytest.mark.parametrize("name, steps, order", [("ddpm", 200, 1), ("ode_heun", 50, 2)])
def test_prediction_converges_at_the_sampler_order(name, steps, order):
    """The extended prediction's discretisation error halves (Euler-like) or quarters (Heun)
    per doubling of the steps, toward the t_min floor ``A^2 c^2 / V`` at ``t_min``."""
    process = shaped_process(SHAPINGS["blur+exponent"])
    data = demo_data(H)
    c = np.asarray(data.spectrum, np.float64)
    a, s2 = (np.asarray(v, np.float64) for v in
             process.spectral_coefficients(jnp.float32(process.schedule.t_min)))
    floor = a**2 * c / (a**2 * c + s2)
    assert np.abs(floor - 1).max() < 5e-3
    errors = [np.abs(sampler_output_spectrum(process, data, name, k * steps) / c - floor).max()
              for k in (1, 2, 4)]
    for coarse, fine in zip(errors[:-1], errors[1:], strict=True):
        assert 0.6 * 2**order < coarse / fine < 1.5 * 2**order, errors


def test_rising_snr_is_refused_in_one_line():
    config = default_config()
    config.noise.gamma = 2.0
    config.diffusion.noise_exponent_start = 12.0  # w^12 at t = 0 relaxing to w: SNR rises
    with pytest.raises(ValueError, match=r"^diffusion\.noise_exponent_start=12: .*g2_k < 0") as err:
        DiffusionProcess.from_config(config, H, W)
    assert "\n" not in str(err.value)
    config.diffusion.noise_exponent_start = 1.0
    config.diffusion.blur_sigma_max = -1.0
    with pytest.raises(ValueError, match=r"^diffusion\.blur_sigma_max=-1\.0: "):
        DiffusionProcess.from_config(config, H, W)


@pytest.mark.slow
def test_a_run_trains_and_samples_with_a_per_frequency_schedule(
        tmp_path, run_cli, tiny_cli_overrides):
    """The trainer and ``sagd_jax.sample`` on the saved config: the run's process has the
    schedule, another schedule is refused for the workdir, the exact model samples."""
    workdir = tmp_path / "run"
    args = ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.sample_every=100000",
            *tiny_cli_overrides, f"--workdir={workdir}",
            "--config.diffusion.noise_exponent_start=0.0", "--config.diffusion.blur_sigma_max=2.0"]
    first = run_cli("sagd_jax.main", *args, "--config.train.num_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    from sagd_jax.run import Run

    run = Run.from_workdir(str(workdir), load_data=False)
    shaping = run.process.shaping
    assert shaping.exponent_start == 0.0 and shaping.blur_sigma_max == 2.0
    other = run_cli("sagd_jax.main", *args[:-1], "--config.diffusion.blur_sigma_max=1.0",
                    "--config.train.num_steps=6")
    assert other.returncode == 2 and "holds a run with" in other.stderr
    out = tmp_path / "exact"
    sampled = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--model=exact",
                      "--num_samples=16", "--sampler=ddim", "--steps=20", f"--out={out}",
                      "--float32")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    with np.load(out / "samples.npz") as f:
        images = f["float32"]
    assert images.shape == (16, 16, 16, 1) and np.isfinite(images).all()
