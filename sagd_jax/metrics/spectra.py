"""Spectral metrics of image batches: power spectra (per rfft bin, radially averaged), their
log-ratio error, energy inside a band, per-frequency variance against a known spectrum, plots."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from sagd_jax.spectral import RHO_MAX, Band, half_plane_multiplicity, radial_frequency


def power_spectrum(images: np.ndarray) -> np.ndarray:
    """Mean power ``|F x|^2`` (unitary DFT) per rfft bin, averaged over images and channels.

    images: ``(N, H, W, C)`` float. Returns float64 ``(H, W // 2 + 1)``; for a stationary
    Gaussian field this estimates its spectrum ``c`` (the convention of ``GaussianData``).
    """
    spec = np.fft.rfft2(np.asarray(images, np.float64), axes=(1, 2), norm="ortho")
    return np.mean(np.abs(spec) ** 2, axis=(0, 3))


def radial_power_spectrum(images: np.ndarray, num_bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean power ``|F x|^2`` (unitary DFT) per radial bin of ``rho`` in ``[0, sqrt(2)]``.

    images: ``(N, H, W, C)`` float. Returns ``(centers, power)``, each ``(num_bins,)`` float64;
    a bin with no DFT bin of this image size gets NaN. Channels and images are averaged.
    """
    return radial_average(power_spectrum(images), images.shape[2], num_bins)


def radial_average(values: np.ndarray, width: int, num_bins: int = 16
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Average of per-rfft-bin ``values (H, width // 2 + 1)`` over radial bins of ``rho`` in
    ``[0, sqrt(2)]`` (full-grid weights); NaN values are left out, and a bin with nothing in
    it gets NaN. Returns ``(centers, averages)``, each ``(num_bins,)`` float64."""
    height = values.shape[0]
    power = np.nan_to_num(values, nan=0.0)
    weight = np.broadcast_to(half_plane_multiplicity(height, width), power.shape)
    weight = np.where(np.isnan(values), 0.0, weight)
    edges = np.linspace(0.0, RHO_MAX + 1e-9, num_bins + 1)
    index = np.clip(np.digitize(radial_frequency(height, width), edges) - 1, 0, num_bins - 1)
    total = np.bincount(index.ravel(), (weight * power).ravel(), num_bins)
    count = np.bincount(index.ravel(), weight.ravel(), num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (edges[1:] + edges[:-1]), total / count


def spectrum_log_error(power: np.ndarray, reference: np.ndarray) -> float:
    """Mean over radial bins of ``|log(power / reference)|`` (bins where both are > 0)."""
    ok = np.isfinite(power) & np.isfinite(reference) & (power > 0) & (reference > 0)
    return float(np.mean(np.abs(np.log(power[ok] / reference[ok]))))


def radial_spectrum_error_off_band(images: np.ndarray, reference: np.ndarray, band: Band
                                   ) -> dict[str, Any]:
    """Radial power spectra of ``images`` and ``reference`` (``(N, H, W, C)``) over the
    frequencies outside ``band`` only (bins where the band's mask is > 0 are left out of every
    radial average), and their mean ``|log ratio|`` over the radial bins that keep any."""
    height, width = images.shape[1:3]
    inside = band.mask(radial_frequency(height, width)) > 0
    spectra = []
    for x in (images, reference):
        centers, power = radial_average(np.where(inside, np.nan, power_spectrum(x)), width)
        spectra.append(power)
    return {"rho": centers.tolist(), "samples": spectra[0].tolist(),
            "reference": spectra[1].tolist(),
            "mean_abs_log_ratio": spectrum_log_error(spectra[0], spectra[1])}


def band_energy(images: np.ndarray, band: Band) -> float:
    """Mean energy per image inside ``band``: ``sum_k m(rho_k) |F x|^2_k`` over the full DFT
    grid (unitary, channels summed), float. A band-stopped image has 0 in that band."""
    _, height, width, channels = images.shape
    weight = half_plane_multiplicity(height, width) * band.mask(radial_frequency(height, width))
    return float(np.sum(weight * power_spectrum(images)) * channels)


def band_energy_ratio(samples: np.ndarray, data: np.ndarray, band: Band) -> float:
    """Energy of ``samples`` inside ``band`` relative to that of ``data`` (1 = same)."""
    return band_energy(samples, band) / band_energy(data, band)


def variance_error(images: np.ndarray, spectrum: np.ndarray) -> dict[str, Any]:
    """Per-frequency variance of ``images`` against a known spectrum ``c`` (``grf`` data).

    ``images: (N, H, W, C)``; ``spectrum``: ``c`` on the rfft half-plane. Returns
    ``mean_abs_log_ratio`` (over bins with ``c > 0``, the headline number), ``ratio`` (the
    per-bin ``var / c``, NaN where ``c = 0``) and ``monte_carlo_floor``: the value
    ``mean_abs_log_ratio`` takes in expectation for exact samples of this count (the
    estimator's own noise: ``E|log ratio| ~ sqrt(2 / pi) * sd`` with ``sd = 1 / sqrt(N C)``
    for complex bins, ``sqrt(2 / (N C))`` for real ones).
    """
    n, height, width, channels = images.shape
    c = np.asarray(spectrum, np.float64)
    var = power_spectrum(images)
    ok = c > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(ok, var / np.where(ok, c, 1.0), np.nan)
    real = half_plane_multiplicity(height, width) == 1
    sd = np.where(np.broadcast_to(real, c.shape), np.sqrt(2.0 / (n * channels)),
                  np.sqrt(1.0 / (n * channels)))
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 or inf power: an inf error
        error = float(np.mean(np.abs(np.log(ratio[ok]))))
    return {"mean_abs_log_ratio": error,
            "monte_carlo_floor": float(np.mean(np.sqrt(2.0 / np.pi) * sd[ok])),
            "ratio": ratio}


def _radial_figure(centers: np.ndarray, curves: dict[str, np.ndarray], ylabel: str,
                   title: str, logy: bool) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, values in curves.items():
        ok = np.isfinite(values)
        ax.plot(centers[ok], values[ok], marker="o", markersize=3, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("radial frequency rho (units of Nyquist)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_radial(path: str, centers: np.ndarray, curves: dict[str, np.ndarray], *,
                ylabel: str, title: str = "", logy: bool = True) -> None:
    """A line plot of radially binned values (one curve per label) against ``rho``, as a PNG
    file at ``path`` (any path of ``sagd_jax.files``, written atomically)."""
    import matplotlib.pyplot as plt

    from sagd_jax import files

    fig = _radial_figure(centers, curves, ylabel, title, logy)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    files.write_bytes(path, buffer.getvalue())


def radial_plot_image(centers: np.ndarray, curves: dict[str, np.ndarray], *, ylabel: str,
                      title: str = "", logy: bool = True) -> np.ndarray:
    """The plot of ``plot_radial`` as a uint8 ``(H, W, 3)`` RGB array (for TensorBoard)."""
    import matplotlib.pyplot as plt

    fig = _radial_figure(centers, curves, ylabel, title, logy)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
