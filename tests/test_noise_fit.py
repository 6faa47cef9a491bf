"""Noise weights fitted to the data (``noise.fit``): the power-law and spectrum fits on
Gaussian random fields of known spectrum, with tolerances derived from the periodogram's
statistics, and the fit end to end: config.json, resume without a refit, sampling's run.

Statistics behind every tolerance: for a stationary Gaussian field each complex DFT
coefficient's ``|F x|^2`` is exponential with mean ``P(k)`` (relative s.d. 1), a real one
(self-conjugate bin) ``P chi^2_1``. The mean of ``M = images x channels`` of them is
Gamma-distributed, so ``log P_hat(k) = log P(k) + b + e_k`` with ``var(e_k) = psi'(M)``
(complex; ``psi'(M / 2)`` real) ``~ 1 / M`` and a constant bias ``b = psi(M) - log M``;
``k`` and ``-k`` share one value, distinct pairs are independent. A least-squares fit in log
space then has the Gauss-Newton covariance ``2 psi'(M) (J^T J)^-1`` (``J``: the model's
derivatives at every full-grid bin but DC; the 2: each value counted at ``k`` and ``-k``),
so its error shrinks like ``1 / sqrt(M * bins)``; every check allows 4 of those s.d.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np
import pytest
from scipy.special import digamma, polygamma

from sagd_jax import noise_fit
from sagd_jax.config import default_config
from sagd_jax.data import default_data_config
from sagd_jax.data.grf import GRFSource
from sagd_jax.run import Run
from sagd_jax.spectral import (
    SpectralCovariance,
    full_grid_mean,
    half_plane_multiplicity,
    radial_frequency,
    spectral_weights,
)
from sagd_jax.workdir import Workdir

SIZE = 32  # 32 x 32 fields: 1023 full-grid bins besides DC
SIGMAS = 4.0  # every statistical tolerance: 4 predicted standard deviations


def grf_images(gamma: float, rho0: float, count: int, seed: int = 0,
               size: int = SIZE) -> np.ndarray:
    """``count`` float32 ``(count, size, size, 1)`` fields of spectrum ``(rho + rho0)^-gamma``
    (the project's ``grf`` source; ``data.seed = seed``)."""
    cfg = default_data_config()
    cfg.name, cfg.image_size, cfg.channels, cfg.num_examples, cfg.seed = (
        "grf", size, 1, count, seed)
    cfg.grf.gamma, cfg.grf.rho0, cfg.grf.std = gamma, rho0, 0.5
    return GRFSource(cfg).get(np.arange(count))


def predicted_sd(gamma: float, rho0: float, m: int, size: int = SIZE) -> tuple[float, float]:
    """Gauss-Newton s.d. of the fitted ``(gamma, rho0)`` from ``M = m`` images x channels:
    ``sqrt(diag(2 psi'(M) (J^T J)^-1))`` with ``J = [1, -log(rho + rho0), -gamma / (rho + rho0)]``
    over the full grid without DC (the derivatives of ``log A - gamma log(rho + rho0)``)."""
    rho = radial_frequency(size, size, half=False).ravel()
    rho = rho[rho > 0]
    jac = np.stack([np.ones_like(rho), -np.log(rho + rho0), -gamma / (rho + rho0)], axis=1)
    cov = 2.0 * float(polygamma(1, m)) * np.linalg.inv(jac.T @ jac)
    return math.sqrt(cov[1, 1]), math.sqrt(cov[2, 2])


# --- powerlaw -----------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("rho0", [0.05, 0.2])
def test_powerlaw_fit_recovers_the_grf_spectrum(gamma, rho0):
    """At N = 200 images (32 x 32) the predicted s.d. are 0.02-0.04 (gamma) and 0.004-0.026
    (rho0); both fitted values lie within 4 of them. The fit's log residual is the
    periodogram's own noise, ``sqrt(psi'(M)) ~ 1 / sqrt(M)``: the model fits exactly."""
    n = 200
    power, images = noise_fit.mean_power([grf_images(gamma, rho0, n)])
    assert images == n
    fit = noise_fit.fit_power_law(power, SIZE)
    sd_gamma, sd_rho0 = predicted_sd(gamma, rho0, n)
    assert abs(fit.gamma - gamma) <= SIGMAS * sd_gamma, (fit, sd_gamma)
    assert abs(fit.rho0 - rho0) <= SIGMAS * sd_rho0, (fit, sd_rho0)
    assert fit.num_bins == SIZE * SIZE - 1
    # residual variance ~ psi'(M) (3 fitted parameters of ~512 independent values: -0.6%),
    # estimated from ~512 values: relative s.d. sqrt(2 / 512) = 6% (3% for the rms), 4 s.d.
    assert fit.rms_log_residual == pytest.approx(math.sqrt(float(polygamma(1, n))), rel=0.13)


def test_powerlaw_error_shrinks_as_predicted_with_the_number_of_images():
    """Over 16 independent data sets the root-mean-square error of the fitted gamma and rho0
    matches the predicted s.d. (a chi with 16 degrees of freedom: within [0.5, 1.6] of it
    except with probability ~1e-3) at N = 50 and N = 800, and so falls ~4x between them."""
    gamma, rho0, seeds = 2.0, 0.1, range(16)
    rms = {}
    for n in (50, 800):
        errors = []
        for seed in seeds:
            power, _ = noise_fit.mean_power([grf_images(gamma, rho0, n, seed=100 + seed)])
            fit = noise_fit.fit_power_law(power, SIZE)
            errors.append((fit.gamma - gamma, fit.rho0 - rho0))
        rms[n] = np.sqrt(np.mean(np.square(errors), axis=0))
        sd = np.asarray(predicted_sd(gamma, rho0, n))
        assert np.all((0.5 * sd <= rms[n]) & (rms[n] <= 1.6 * sd)), (n, rms[n], sd)
    assert np.all(rms[800] < rms[50] / 2.0), rms


def test_powerlaw_fit_of_an_exact_spectrum_is_exact():
    """No noise: the true spectrum itself (any amplitude) gives gamma and rho0 back to the
    golden-section precision, whatever the grid size."""
    for size, gamma, rho0 in ((32, 1.5, 0.07), (17, -0.5, 0.3), (64, 3.0, 0.01)):
        power = 7.0 * spectral_weights(size, size, gamma=gamma, rho0=rho0)
        fit = noise_fit.fit_power_law(power, size)
        assert fit.gamma == pytest.approx(gamma, abs=1e-6)
        assert fit.rho0 == pytest.approx(rho0, rel=1e-5)
        assert fit.rms_log_residual < 1e-7


# --- spectrum -----------------------------------------------------------------------------
def smoother_matrix(size: int, knots: np.ndarray) -> np.ndarray:
    """The linear map from ``log P`` (rfft half-plane) to the smoothed log power at the knots,
    ``(J, H, W // 2 + 1)``, column by column (``smooth_log_power`` is linear in ``log P``)."""
    shape = (size, size // 2 + 1)
    matrix = np.zeros((len(knots), *shape))
    base = noise_fit.smooth_log_power(np.ones(shape), size, knots)
    for index in np.ndindex(*shape):
        if index == (0, 0):
            continue  # DC never enters
        probe = np.ones(shape)
        probe[index] = math.e
        matrix[(slice(None), *index)] = noise_fit.smooth_log_power(probe, size, knots) - base
    return matrix


def knot_sd(matrix: np.ndarray, m: int) -> np.ndarray:
    """s.d. of the smoothed log power at each knot from ``M = m`` images: the sum over the
    independent values (a pair ``k, -k`` shares one; column 0 and the Nyquist column hold
    both members) of ``(summed weight)^2 var``, ``var = psi'(M)`` (complex) or ``psi'(M/2)``
    (real bins)."""
    size = matrix.shape[1]
    var = np.zeros(matrix.shape[0])
    seen = set()
    for i, j in np.ndindex(*matrix.shape[1:]):
        mirror = ((-i) % size, j) if j in (0, size // 2) else None
        if (i, j) in seen:
            continue
        seen.add((i, j))
        weight = matrix[:, i, j]
        if mirror is not None and mirror != (i, j):
            seen.add(mirror)
            weight = weight + matrix[:, mirror[0], mirror[1]]
        real = mirror == (i, j)
        var += weight**2 * float(polygamma(1, m / 2 if real else m))
    return np.sqrt(var)


def smoothing_bias_bound(matrix: np.ndarray, knots: np.ndarray, gamma: float) -> np.ndarray:
    """Largest bias of the smoothed log power at each knot for ``log P = -gamma log(rho +
    rho0)`` (any rho0): local linear in ``u = log(rho / knot)`` is exact for linear functions,
    so the bias is ``sum_k l_k r_k`` with the Taylor remainder ``|r_k| <= 1/2 max|f''| u_k^2``
    and ``|f''(u)| = gamma rho rho0 / (rho + rho0)^2 <= gamma / 4``."""
    size = matrix.shape[1]
    rho = radial_frequency(size, size)
    with np.errstate(divide="ignore"):
        u2 = np.log(rho[None] / knots[:, None, None]) ** 2
    u2[:, 0, 0] = 0.0  # DC has zero weight
    return 0.5 * (abs(gamma) / 4.0) * np.sum(np.abs(matrix) * u2, axis=(1, 2))


def per_bin_bound(knots: np.ndarray, knot_bound: np.ndarray, gamma: float) -> np.ndarray:
    """Bound on the error of ``log w`` at each rfft bin (``(H, W // 2 + 1)``, DC: inf) from
    bounds on the log values at the knots: the larger bound of the two knots around the bin
    (log-log interpolation is a convex combination of them) plus the interpolation error of
    ``log P`` itself, ``<= (log(rho_j+1 / rho_j))^2 / 8 * max|f''|`` with ``|f''| <= gamma / 4``
    (see ``smoothing_bias_bound``)."""
    rho = radial_frequency(SIZE, SIZE)
    upper = np.clip(np.searchsorted(knots, rho), 1, len(knots) - 1)
    lower = upper - 1
    spacing = np.log(knots[upper] / knots[lower])
    bound = np.maximum(knot_bound[lower], knot_bound[upper]) + spacing**2 / 8 * abs(gamma) / 4
    bound[0, 0] = np.inf
    return bound


def proportional_within(w: np.ndarray, reference: np.ndarray, bound: np.ndarray) -> float:
    """The slack of ``|log(w / reference) - c| <= bound`` (per rfft bin) for the best constant
    ``c``: ``min(log ratio + bound) - max(log ratio - bound)``, >= 0 when such a ``c``
    exists (the scale of ``w`` is set by its normalisation, not by the fit)."""
    ratio = np.log(w / reference)
    ok = np.isfinite(bound)
    return float(np.min(ratio[ok] + bound[ok]) - np.max(ratio[ok] - bound[ok]))


@pytest.mark.parametrize("gamma, rho0", [(1.0, 0.05), (2.0, 0.2)])
def test_spectrum_fit_at_exponent_one_is_the_true_spectrum(gamma, rho0):
    """``w`` fitted with exponent 1 is proportional to the true spectrum: (1) on the exact
    spectrum within the smoothing bias (bounded per knot) plus the log-log interpolation
    error between knots; (2) on N = 200 fields each knot's log value within 4 predicted s.d.
    of the exact spectrum's (after the known bias ``psi(M) - log M``; the s.d. is 0.006 at
    mid frequencies, 0.04 at the first knot and 0.06 at the corner, where few bins are); (3)
    so the fitted ``w`` within both, bin by bin. DC takes the first knot's value by design."""
    n = 200
    c = 0.25 * spectral_weights(SIZE, SIZE, gamma=gamma, rho0=rho0)
    knots = noise_fit.profile_knots(SIZE, SIZE)
    assert knots[0] == pytest.approx(2.0 / SIZE) and knots[-1] == pytest.approx(math.sqrt(2))
    np.testing.assert_allclose(np.diff(knots[:-1]), 2.0 / SIZE)
    matrix = smoother_matrix(SIZE, knots)
    np.testing.assert_allclose(matrix.sum(axis=(1, 2)), 1.0, atol=1e-9)  # a smoother
    bias = smoothing_bias_bound(matrix, knots, gamma)

    def fitted_w(power: np.ndarray) -> np.ndarray:
        fit = noise_fit.fit_profile(power, SIZE, 1.0)
        return spectral_weights(SIZE, SIZE, profile=fit.values, profile_rho=fit.rho)

    true_w = spectral_weights(SIZE, SIZE, gamma=gamma, rho0=rho0)
    exact = fitted_w(c)
    assert proportional_within(exact, true_w, per_bin_bound(knots, bias, gamma)) >= 0
    assert exact[0, 0] == pytest.approx(exact[1, 0], rel=1e-12)  # DC: the first knot (rho=d)

    power, _ = noise_fit.mean_power([grf_images(gamma, rho0, n)])
    sd = knot_sd(matrix, n)
    noisy = noise_fit.smooth_log_power(power, SIZE, knots)
    clean = noise_fit.smooth_log_power(c, SIZE, knots)
    offset = float(digamma(n) - math.log(n))
    assert np.all(np.abs(noisy - clean - offset) <= SIGMAS * sd), (noisy - clean - offset) / sd
    data_w = fitted_w(power)
    assert full_grid_mean(data_w, SIZE) == pytest.approx(1.0, rel=1e-12)
    slack = proportional_within(data_w, true_w, per_bin_bound(knots, bias + SIGMAS * sd, gamma))
    error = np.log(data_w / true_w)
    error[0, 0] = np.nan
    print(f"\ngrf gamma={gamma} rho0={rho0}, N={n}: log(w / true) spans "
          f"{np.nanmax(error) - np.nanmin(error):.4f} off DC; slack of the per-bin bound "
          f"{slack:.4f}")
    assert slack >= 0


def test_spectrum_exponent_scales_the_log_profile_and_zero_is_white():
    power, _ = noise_fit.mean_power([grf_images(2.0, 0.1, 50)])
    one = np.log(noise_fit.fit_profile(power, SIZE, 1.0).values)
    half = np.log(noise_fit.fit_profile(power, SIZE, 0.5).values)
    np.testing.assert_allclose(half - 0.5 * one, (half - 0.5 * one)[0], atol=1e-12)
    white = noise_fit.fit_profile(power, SIZE, 0.0)
    assert white.values == (1.0,) * len(white.rho)
    w = spectral_weights(SIZE, SIZE, profile=white.values, profile_rho=white.rho)
    assert np.all(w == 1.0)
    assert SpectralCovariance.create(SIZE, SIZE, gamma=2.0, profile=white.values,
                                     profile_rho=white.rho).identity
    # the bands still multiply: exactly 1 outside a band-stop, 0 inside (unnormalised)
    banded = spectral_weights(SIZE, SIZE, profile=white.values, profile_rho=white.rho,
                              bands="bandstop:0.4:0.6", normalize=False)
    rho = radial_frequency(SIZE, SIZE)
    inside = (rho >= 0.4) & (rho <= 0.6)
    assert np.all(banded[~inside] == 1.0) and np.all(banded[inside] == 0.0)


def test_profile_weights_interpolate_in_log_log_and_hold_the_ends():
    """A profile sampled from a pure power law reproduces it exactly between its knots; below
    the first and above the last knot the end values hold."""
    knots = np.array([0.1, 0.3, 0.9])
    values = knots**-1.7
    w = spectral_weights(16, 16, profile=tuple(values), profile_rho=tuple(knots),
                         normalize=False)
    rho = radial_frequency(16, 16)
    inner = (rho >= 0.1) & (rho <= 0.9)
    np.testing.assert_allclose(w[inner], rho[inner] ** -1.7, rtol=1e-12)
    np.testing.assert_allclose(w[rho < 0.1], 0.1**-1.7, rtol=1e-12)
    np.testing.assert_allclose(w[rho > 0.9], 0.9**-1.7, rtol=1e-12)


# --- config and runs ----------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ({"noise.fit": "lsq"}, r"^noise\.fit='lsq': must be \"\" \(off\), powerlaw or spectrum$"),
    ({"noise.fit_images": 0}, r"^noise\.fit_images=0: must be an integer >= 1$"),
    ({"noise.fit_exponent": float("nan")}, r"^noise\.fit_exponent=nan: must be a finite"),
    ({"noise.fit_exponent": 5.0}, r"^noise\.fit_exponent=5\.0: must be a finite number in"),
    ({"noise.fit": "powerlaw", "noise.profile": (1.0, 2.0), "noise.profile_rho": (0.1, 0.2)},
     r"^noise\.profile: must be \(\) with noise\.fit=powerlaw"),
    ({"noise.profile": (1.0,), "noise.profile_rho": (0.5,)}, r"^noise\.profile: needs at least"),
    ({"noise.profile": (1.0, 2.0)}, r"^noise\.profile_rho: has 0 values, profile has 2"),
    ({"noise.profile": (1.0, -2.0), "noise.profile_rho": (0.1, 0.2)},
     r"^noise\.profile\[1\]=-2\.0: must be a finite number in \(0"),
    ({"noise.profile": (1.0, 2.0), "noise.profile_rho": (0.2, 0.2)},
     r"^noise\.profile_rho\[1\]=0\.2: must be > profile_rho\[0\]"),
    ({"noise.profile": (1.0, 2.0), "noise.profile_rho": (0.0, 0.2)},
     r"^noise\.profile_rho\[0\]=0\.0: must be a finite number in \(0"),
])
def test_bad_fit_keys_are_one_line_errors_naming_the_key(tiny_config, override, message):
    with pytest.raises(ValueError, match=message):
        Run.from_config(tiny_config(**override), load_data=False, device_count=1)


def test_no_fit_is_the_covariance_of_today(tiny_config):
    """``noise.fit=""`` (the default) fits nothing: the covariance is the power law's, bitwise
    (``spectral_weights`` without a profile, against its float64 formula)."""
    assert default_config().noise.fit == "" and default_config().noise.profile == ()
    run = Run.from_config(tiny_config(), load_data=False, device_count=1)
    assert run.config.noise.fit_result == "" and run.config.noise.gamma == 1.0
    rho = radial_frequency(16, 16)
    w = (rho + 0.1) ** -1.0
    w = w / (np.sum(w * half_plane_multiplicity(16, 16)) / 256)
    np.testing.assert_array_equal(run.process.cov.weights, np.asarray(w, np.float32))
    with pytest.raises(ValueError, match=r"^noise\.fit='powerlaw': needs the training data"):
        Run.from_config(tiny_config(**{"noise.fit": "powerlaw"}), load_data=False,
                        device_count=1)


def test_spectrum_fit_of_a_run_uses_its_training_images(tiny_config):
    """A run without a workdir fits on the first ``fit_images`` images of its pipeline (here
    the whole 64-image grf set, in the stream's order) and builds its covariance from the
    fitted profile."""
    config = tiny_config(**{"noise.fit": "spectrum", "noise.fit_images": 1000,
                            "data.num_examples": 64, "noise.fit_exponent": 0.5})
    run = Run.from_config(config, device_count=1)
    noise = run.config.noise
    power, images = noise_fit.mean_power([GRFSource(run.config.data).get(np.arange(64))])
    expected = noise_fit.fit_profile(power, 16, 0.5)
    np.testing.assert_allclose(noise.profile, expected.values, rtol=1e-9)
    assert noise.profile_rho == expected.rho and "on 64 images" in noise.fit_result
    direct = SpectralCovariance.create(16, 16, profile=noise.profile,
                                       profile_rho=noise.profile_rho)
    np.testing.assert_array_equal(run.process.cov.weights, direct.weights)
    again = Run.from_config(config, device_count=1)  # deterministic
    assert again.config.noise.profile == noise.profile


@pytest.fixture(scope="module")
def train_args(tiny_cli_overrides):
    """Trainer flags of a tiny grf run of 200 examples fitting a power law on all of them."""
    return ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.data.num_examples=200",
            "--config.train.sample_every=100000", *tiny_cli_overrides,
            "--config.noise.fit=powerlaw", "--config.noise.fit_images=1000"]


@pytest.mark.slow
def test_powerlaw_fit_end_to_end_saved_resumed_and_sampled(tmp_path, run_cli, train_args):
    workdir = tmp_path / "run"
    first = run_cli("sagd_jax.main", *train_args, f"--workdir={workdir}",
                    "--config.train.num_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [line for line in first.stderr.splitlines() if "noise: fitted" in line]
    assert len(lines) == 1 and "on 200 images" in lines[0], first.stderr[-3000:]
    with open(workdir / "config.json") as f:
        saved_text = f.read()
    noise = json.loads(saved_text)["noise"]
    # the fit of the same 200 fields, measured here
    run_data = Workdir(str(workdir)).saved_config().data
    power, _ = noise_fit.mean_power([GRFSource(run_data).get(np.arange(200))])
    expected = noise_fit.fit_power_law(power, 16)
    assert noise["fit"] == "powerlaw" and noise["profile"] == []
    # the same images in another order: the sums differ in the last bits, and the flat
    # minimum of the squared error locates rho0 to ~sqrt(float64 eps) = 1e-8
    assert noise["gamma"] == pytest.approx(expected.gamma, rel=1e-6)
    assert noise["rho0"] == pytest.approx(expected.rho0, rel=1e-6)
    assert noise["fit_result"].startswith("powerlaw gamma=") and noise["gamma"] != 1.0

    # the same command with more steps resumes: no refit, config.json as it was
    second = run_cli("sagd_jax.main", *train_args, f"--workdir={workdir}",
                     "--config.train.num_steps=6")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "noise: fitted" not in second.stderr
    assert "starting at step 3 of 6" in second.stderr
    with open(workdir / "config.json") as f:
        assert f.read() == saved_text
    assert "6" in os.listdir(workdir / "checkpoints")

    # sampling's run reads config.json: the fitted covariance
    run = Run.from_workdir(str(workdir), load_data=False)
    direct = SpectralCovariance.create(16, 16, gamma=noise["gamma"], rho0=noise["rho0"])
    np.testing.assert_array_equal(run.process.cov.weights, direct.weights)
    # the user's config (unfitted gamma) is this run's; another fit or fit size is not
    user = ml_collections.ConfigDict(json.loads(saved_text))
    user.noise.gamma, user.noise.rho0, user.noise.fit_result = 1.0, 0.1, ""
    Workdir(str(workdir)).check_compatible(user)
    user.noise.fit_images = 100
    with pytest.raises(ValueError, match=r"holds a run with noise=.*use a new workdir"):
        Workdir(str(workdir)).check_compatible(user)
    other = run_cli("sagd_jax.main", *train_args, f"--workdir={workdir}",
                    "--config.train.num_steps=6", "--config.noise.fit=spectrum")
    assert other.returncode == 2 and "holds a run with noise=" in other.stderr


@pytest.mark.needs_fashion_mnist
def test_fitted_values_on_fashion_mnist_and_natural_patches(tiny_config, capsys):
    """Reported, not a reference: the fits on 1000 real images, with loose sanity bounds
    (both spectra fall with frequency)."""
    rows = []
    for name, size in (("fashion_mnist", 28), ("natural_patches", 32)):
        for fit in ("powerlaw", "spectrum"):
            config = tiny_config(**{"data.name": name, "data.image_size": size,
                                    "data.num_examples": 2000, "noise.fit": fit,
                                    "noise.fit_images": 1000})
            run = Run.from_config(config, device_count=1)
            noise = run.config.noise
            rows.append(f"{name} {size}x{size}: {noise.fit_result}")
            if fit == "powerlaw":
                assert 0.5 < noise.gamma < 5.0
            else:
                assert noise.profile[0] > noise.profile[-1]
    with capsys.disabled():
        print("\n" + "\n".join(rows))
