"""Noise weights fitted to the training data (``noise.fit``): pure float64 numpy functions.

Before training, the mean power ``P(k) = mean |F x|^2`` (unitary DFT, per rfft bin, averaged
over ``noise.fit_images`` training images and their channels) is measured once, and ``w`` is
set from it:

- ``powerlaw``: ``P(k) ~ A (rho_k + rho0)^-gamma``, fitted by least squares in log space on
  every DFT bin but DC (``fit_power_law``); the run then uses ``noise.gamma``/``noise.rho0``.
- ``spectrum``: the smoothed log power on a radial grid, times ``noise.fit_exponent``
  (1 = noise shaped like the data, 0 = white), normalised (``fit_profile``); the run then uses
  ``noise.profile`` on the knots ``noise.profile_rho`` (``spectral.profile_weights``).

The fitted keys (``FITTED_KEYS``) go into the run's ``config.json``, so a resume, sampling and
evaluation use exactly them (``saved_fit``). Statistics: for a Gaussian field each complex DFT
coefficient's ``|F x|^2`` is exponential (relative s.d. 1 per image and channel), so the mean
of ``M = images x channels`` of them has ``var(log P_hat) ~ 1 / M``, the same at every bin
up to a constant bias ``E log P_hat - log P = digamma(M) - log M`` that the amplitude (and the
normalisation of ``w``) absorbs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.spectral import (
    full_grid_mean,
    half_plane_multiplicity,
    profile_weights,
    radial_frequency,
)

FIT_KINDS = ("", "powerlaw", "spectrum")
# The keys a fit sets (the rest of the noise section is the user's); a resume reads them back.
FITTED_KEYS = ("gamma", "rho0", "profile", "profile_rho", "fit_result")
RHO0_RANGE = (1e-4, 10.0)  # the bounds of the fitted rho0 (axis Nyquist = 1)
RHO0_GRID = 161  # log-spaced rho0 values searched before the golden-section refinement
EXPONENT_RANGE = (-4.0, 4.0)  # noise.fit_exponent: beyond it w can overflow float32


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """``log P(k) ~ log_amplitude - gamma log(rho_k + rho0)`` (DC left out).

    rms_log_residual: the weighted root-mean-square residual in log space (about
    ``1 / sqrt(M)`` for an exact power law, ``M`` images x channels); num_bins: the DFT bins
    of the full grid that entered the fit.
    """

    gamma: float
    rho0: float
    log_amplitude: float
    rms_log_residual: float
    num_bins: int


@dataclasses.dataclass(frozen=True)
class ProfileFit:
    """``w`` on radial knots: ``rho`` (increasing, > 0, axis Nyquist = 1) and ``values``
    (> 0, normalised so that ``w`` interpolated onto the fitted grid has mean 1)."""

    rho: tuple[float, ...]
    values: tuple[float, ...]


def check_options(noise: Any) -> tuple[str, int, float]:
    """``(fit, fit_images, fit_exponent)`` of a noise section, checked (one-line
    ``ValueError`` naming the key)."""
    fit = validate.lookup(noise, "fit", "noise")
    if fit not in FIT_KINDS:
        raise validate.fail("noise.fit", fit, 'must be "" (off), powerlaw or spectrum')
    images = validate.integer(*validate.entry(noise, "fit_images", "noise"), 1)
    exponent = validate.number(*validate.entry(noise, "fit_exponent", "noise"), *EXPONENT_RANGE)
    validate.text(*validate.entry(noise, "fit_result", "noise"), empty=True)
    profile = validate.lookup(noise, "profile", "noise")
    if fit == "powerlaw" and len(profile):
        raise ValueError(f"noise.profile: must be () with noise.fit=powerlaw (a profile "
                         f"replaces the power law; {len(profile)} values given)")
    return fit, images, exponent


def mean_power(batches: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
    """Mean ``|F x|^2`` (unitary DFT) per rfft bin over every image and channel of
    ``batches`` (each ``(B, H, W, C)``), accumulated in float64.

    Returns ``(power (H, W // 2 + 1), number of images)``.
    """
    total, images, channels = None, 0, 1
    for batch in batches:
        x = np.asarray(batch, np.float64)
        if x.ndim != 4:
            raise ValueError(f"expected image batches (B, H, W, C), got shape {x.shape}")
        spec = np.fft.rfft2(x, axes=(1, 2), norm="ortho")
        part = np.sum(spec.real**2 + spec.imag**2, axis=(0, 3))
        total = part if total is None else total + part
        images, channels = images + x.shape[0], x.shape[3]
    if total is None or images == 0:
        raise ValueError("no images to measure the power spectrum on")
    return total / (images * channels), images


def _fit_points(power: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rho, log P, weight)`` of the bins that enter a fit: every rfft bin but DC with a
    finite ``P > 0``, weighted by the full-grid bins it stands for (1 or 2)."""
    power = np.asarray(power, np.float64)
    height = power.shape[0]
    if power.ndim != 2 or power.shape[1] != width // 2 + 1:
        raise ValueError(f"power: expected shape (H, {width // 2 + 1}), got {power.shape}")
    rho = radial_frequency(height, width)
    weight = np.broadcast_to(half_plane_multiplicity(height, width), power.shape)
    ok = (rho > 0) & np.isfinite(power) & (power > 0)
    if np.count_nonzero(ok) < 3:
        raise ValueError("power: fewer than 3 bins with positive power besides DC")
    return rho[ok], np.log(power[ok]), weight[ok]


def _linear_fit(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[float, float, float]:
    """Weighted least squares ``y ~ a + b x``: ``(a, b, sum of weighted squared residuals)``."""
    total = weight.sum()
    mx, my = (weight * x).sum() / total, (weight * y).sum() / total
    dx, dy = x - mx, y - my
    sxx, sxy, syy = (weight * dx * dx).sum(), (weight * dx * dy).sum(), (weight * dy * dy).sum()
    slope = sxy / sxx if sxx > 0 else 0.0
    return my - slope * mx, slope, max(syy - slope * sxy, 0.0)


def fit_power_law(power: np.ndarray, width: int) -> PowerLawFit:
    """Least-squares fit of ``log P(k) = log A - gamma log(rho_k + rho0)`` over the full DFT
    grid without DC (each full-grid bin weighs the same: the inverse variance of the log
    periodogram, as a real bin's ``|F x|^2`` has twice the relative variance of a complex one
    and stands for one bin, a complex one for two).

    power: the mean power per rfft bin, ``(H, width // 2 + 1)`` (``mean_power``). For each
    ``rho0`` the fit is linear in ``(log A, gamma)`` (closed form); ``rho0`` is searched on
    ``RHO0_GRID`` log-spaced values in ``RHO0_RANGE`` and refined by golden section in
    ``log rho0`` between the best value's neighbours.
    """
    rho, y, weight = _fit_points(power, width)

    def sse(log_rho0: float) -> float:
        return _linear_fit(np.log(rho + math.exp(log_rho0)), y, weight)[2]

    grid = np.linspace(math.log(RHO0_RANGE[0]), math.log(RHO0_RANGE[1]), RHO0_GRID)
    best = int(np.argmin([sse(u) for u in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = sse(c), sse(d)
    for _ in range(80):  # the bracket shrinks by 0.618 each time: far below float64 spacing
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = sse(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = sse(d)
    candidates = [(sse(u), u) for u in (grid[best], c, d)]
    _, log_rho0 = min(candidates)
    rho0 = math.exp(log_rho0)
    intercept, slope, residual = _linear_fit(np.log(rho + rho0), y, weight)
    return PowerLawFit(gamma=float(-slope), rho0=float(rho0), log_amplitude=float(intercept),
                       rms_log_residual=float(math.sqrt(residual / weight.sum())),
                       num_bins=int(round(weight.sum())))


def profile_knots(height: int, width: int) -> np.ndarray:
    """The radial knots of a fitted profile, float64 ``(J,)``: ``j * d`` for ``j = 1, 2, ...``
    (``d = 2 / max(H, W)``, the spacing of the DFT's radial frequencies: one ring per knot)
    below the largest ``rho`` of the grid, and that ``rho`` itself (the corner ``sqrt(2)``
    for even sizes). DC, below the first knot, takes its value."""
    step = 2.0 / max(height, width)
    top = float(radial_frequency(height, width).max())
    knots = step * np.arange(1, int(math.floor(top / step + 1e-9)) + 1, dtype=np.float64)
    if not len(knots) or knots[-1] < top - 1e-9 * step:
        knots = np.append(knots, top)
    if len(knots) < 2:
        raise ValueError(f"a {height}x{width} grid is too small for a radial profile")
    return knots


def smooth_log_power(power: np.ndarray, width: int, knots: np.ndarray,
                     bandwidth: float = 1.0) -> np.ndarray:
    """The log power at each knot, float64 ``(J,)``: a local linear fit of ``log P`` against
    ``log rho`` over the bins near the knot (DC left out), Gaussian weights in ``rho`` of
    s.d. ``bandwidth`` ring spacings (``2 / max(H, W)``) cut at 3 s.d., times the full-grid
    bins each rfft bin stands for. Local linear in ``log rho`` is exact for a pure power law
    and carries no slope bias at the lowest knots, where all neighbours lie above.
    """
    rho, y, weight = _fit_points(power, width)
    height = np.asarray(power).shape[0]
    scale = bandwidth * 2.0 / max(height, width)
    out = np.empty(len(knots))
    for j, knot in enumerate(np.asarray(knots, np.float64)):
        near = np.abs(rho - knot) <= 3.0 * scale
        kernel = weight[near] * np.exp(-0.5 * ((rho[near] - knot) / scale) ** 2)
        if np.count_nonzero(kernel > 0) < 2 or np.ptp(rho[near]) == 0:
            raise ValueError(f"knot rho={knot:.4g}: fewer than 2 radial frequencies near it")
        intercept, _, _ = _linear_fit(np.log(rho[near] / knot), y[near], kernel)
        out[j] = intercept
    return out


def fit_profile(power: np.ndarray, width: int, exponent: float,
                bandwidth: float = 1.0) -> ProfileFit:
    """``w`` shaped like the measured spectrum to the power ``exponent``, on the knots of
    ``profile_knots``: ``exp(exponent * smooth_log_power)``, scaled so that
    ``profile_weights`` on this ``(H, width)`` grid has mean 1 over all bins.
    ``exponent = 0`` gives exactly 1 at every knot (white noise).
    """
    height = np.asarray(power).shape[0]
    knots = profile_knots(height, width)
    if exponent == 0:
        values = np.ones(len(knots))
    else:
        log_power = smooth_log_power(power, width, knots, bandwidth)
        log_values = exponent * (log_power - log_power.max())  # no overflow before scaling
        values = np.exp(log_values)
        grid = profile_weights(radial_frequency(height, width), knots, values)
        values = values / full_grid_mean(grid, width)
    return ProfileFit(rho=tuple(float(r) for r in knots),
                      values=tuple(float(v) for v in values))


def fit_noise(noise: Any, power: np.ndarray, width: int, images: int
              ) -> tuple[dict[str, Any], str]:
    """The fit ``noise.fit`` asks for on the measured ``power`` (``(H, width // 2 + 1)``, from
    ``images`` images): ``(values of FITTED_KEYS to set, one-line summary)``."""
    fit, _, exponent = check_options(noise)
    if fit == "powerlaw":
        result = fit_power_law(power, width)
        summary = (f"powerlaw gamma={result.gamma:.4g} rho0={result.rho0:.4g} on {images} "
                   f"images (rms log residual {result.rms_log_residual:.3g})")
        return {"gamma": result.gamma, "rho0": result.rho0, "fit_result": summary}, summary
    if fit == "spectrum":
        profile = fit_profile(power, width, exponent)
        summary = (f"spectrum^{exponent:g} on {images} images ({len(profile.rho)} knots, w "
                   f"from {min(profile.values):.3g} to {max(profile.values):.3g})")
        return {"profile": profile.values, "profile_rho": profile.rho,
                "fit_result": summary}, summary
    raise ValueError(f"noise.fit={fit!r}: nothing to fit")


def saved_fit(noise: Mapping[str, Any] | Any, saved_noise: Mapping[str, Any] | Any
              ) -> dict[str, Any]:
    """The fitted values a run saved, for a config asking for the same fit: ``FITTED_KEYS``
    of ``saved_noise`` when both sections have the same non-empty ``fit``, else ``{}`` (no
    fit, or another run: the workdir's compatibility check refuses it)."""
    fit = noise.get("fit", "")
    if not fit or saved_noise.get("fit", "") != fit:
        return {}
    return {key: saved_noise[key] for key in FITTED_KEYS if key in saved_noise}
