"""Power spectra of image batches (per rfft bin, radially averaged) and their log-ratio error."""

from __future__ import annotations

import numpy as np

from sagd_jax.spectral import RHO_MAX, half_plane_multiplicity, radial_frequency


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
    _, height, width, _ = images.shape
    power = power_spectrum(images)
    weight = np.broadcast_to(half_plane_multiplicity(height, width), power.shape)
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
