"""Additive corruption whose energy lies exactly inside a radial frequency band.

Used by the selective-omission experiment: the training images carry a pattern confined to the
band lo <= rho <= hi, and the question is whether a shaped-noise model reproduces or omits it.

Radial frequency (project convention, for an H x W image):
    fy = np.fft.fftfreq(H), fx = np.fft.fftfreq(W)   (cycles / pixel)
    rho = sqrt(fy**2 + fx**2) / 0.5                   (axis Nyquist = 1, corner = sqrt(2))
A DFT bin belongs to the band when lo - 1e-12 <= rho <= hi + 1e-12.

Kinds (``data.corruption.kind``):
    "none"        no corruption.
    "stripes"     amplitude * cos(2 pi (ky y / H + kx x / W) + phi): one DFT bin (ky, kx) of the
                  band drawn uniformly (hence a random orientation) and a uniform phase phi.
                  ``amplitude`` is the peak value.
    "band_noise"  Gaussian noise keeping exactly the band's DFT bins, scaled to an RMS of
                  ``amplitude`` over the image.
Patterns are float64 (H, W), in the [-1, 1] image units, drawn from a generator seeded with
(``data.corruption.seed``, example index), and added to every channel of the float image
without clipping (clipping would move energy out of the band).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import CORRUPTION_KINDS, entry
from sagd_jax.spectral import RHO_MAX, radial_frequency

BAND_TOLERANCE = 1e-12
_STREAM_TAG = 0xC0AA  # separates these seeds from the other random streams of the package


def band_mask(height: int, width: int, lo: float, hi: float) -> np.ndarray:
    """bool (H, W): the DFT bins with lo <= rho <= hi (up to ``BAND_TOLERANCE``)."""
    rho = radial_frequency(height, width, half=False)
    return (rho >= lo - BAND_TOLERANCE) & (rho <= hi + BAND_TOLERANCE)


@functools.lru_cache(maxsize=32)
def _band_bins(height: int, width: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed integer frequencies (ky, kx) of the band's bins, each int64 (K,)."""
    rows, cols = np.nonzero(band_mask(height, width, lo, hi))
    ky = np.rint(np.fft.fftfreq(height)[rows] * height).astype(np.int64)
    kx = np.rint(np.fft.fftfreq(width)[cols] * width).astype(np.int64)
    ky.setflags(write=False)
    kx.setflags(write=False)
    return ky, kx


def stripes_pattern(
    height: int, width: int, lo: float, hi: float, amplitude: float, rng: np.random.Generator
) -> np.ndarray:
    """float64 (H, W) cosine grating on one random DFT bin of the band, random phase."""
    ky, kx = _band_bins(height, width, lo, hi)
    if ky.size == 0:
        raise ValueError(f"band [{lo}, {hi}] holds no DFT bin of a {height}x{width} image")
    k = int(rng.integers(ky.size))
    phase = rng.uniform(0.0, 2.0 * math.pi)
    y = np.arange(height, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :]
    return amplitude * np.cos(2.0 * math.pi * (ky[k] * y / height + kx[k] * x / width) + phase)


def band_noise_pattern(
    height: int, width: int, lo: float, hi: float, amplitude: float, rng: np.random.Generator
) -> np.ndarray:
    """float64 (H, W) Gaussian noise on exactly the band's DFT bins, RMS = ``amplitude``.

    The band is symmetric under k -> -k, so the filtered white noise stays real.
    """
    mask = band_mask(height, width, lo, hi)
    if not mask.any():
        raise ValueError(f"band [{lo}, {hi}] holds no DFT bin of a {height}x{width} image")
    spectrum = np.fft.fft2(rng.standard_normal((height, width))) * mask
    pattern = np.fft.ifft2(spectrum).real
    rms = math.sqrt(float(np.mean(pattern**2)))
    return pattern * (amplitude / rms) if rms > 0 else pattern


_PATTERNS = {"stripes": stripes_pattern, "band_noise": band_noise_pattern}


@dataclasses.dataclass(frozen=True)
class Corruption:
    """Validated ``data.corruption`` settings; lo / hi in rho units, amplitude in image units."""

    kind: str = "none"
    lo: float = 0.5
    hi: float = 0.6
    amplitude: float = 0.1
    seed: int = 0

    def check_image_size(self, height: int, width: int) -> None:
        """Raise if the band holds no DFT bin of an H x W image (kind != "none")."""
        if self.kind != "none" and not band_mask(height, width, self.lo, self.hi).any():
            raise validate.fail(
                "data.corruption.lo",
                self.lo,
                f"band [{self.lo:g}, {self.hi:g}] (data.corruption.hi) holds no DFT bin "
                f"of a {height}x{width} image",
            )

    def patterns(self, indices: np.ndarray, height: int, width: int) -> np.ndarray:
        """float64 (N, H, W) patterns of the examples ``indices`` (zeros for kind "none")."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.zeros((idx.size, height, width), dtype=np.float64)
        if self.kind == "none":
            return out
        self.check_image_size(height, width)
        make = _PATTERNS[self.kind]
        for j, i in enumerate(idx):
            rng = np.random.default_rng([self.seed, _STREAM_TAG, int(i)])
            out[j] = make(height, width, self.lo, self.hi, self.amplitude, rng)
        return out

    def apply(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """float32 (N, H, W, C) ``images`` plus each example's pattern on every channel."""
        images = np.asarray(images, dtype=np.float32)
        if self.kind == "none":
            return images
        n, h, w, _ = images.shape
        if np.size(indices) != n:
            raise ValueError(f"{np.size(indices)} indices for {n} images")
        return (images + self.patterns(indices, h, w)[..., None]).astype(np.float32)


def corruption_from_config(data_config: Any) -> Corruption:
    """Read and check ``data.corruption.{kind, lo, hi, amplitude, seed}``."""
    kind = validate.one_of(*entry(data_config, "corruption.kind"), CORRUPTION_KINDS)
    lo = validate.number(*entry(data_config, "corruption.lo"), 0.0, RHO_MAX)
    hi = validate.number(*entry(data_config, "corruption.hi"), 0.0, RHO_MAX)
    if lo > hi:
        raise validate.fail("data.corruption.lo", lo, f"must be <= data.corruption.hi={hi}")
    amplitude = validate.number(*entry(data_config, "corruption.amplitude"), 0.0)
    seed = validate.integer(*entry(data_config, "corruption.seed"), 0)
    return Corruption(kind=kind, lo=lo, hi=hi, amplitude=amplitude, seed=seed)
