"""Gaussian random fields with a power-law spectrum (``data.name = "grf"``): the exact answer.

Example i is ``x = F^H sqrt(c) F z`` with ``z ~ N(0, I)`` drawn from a generator seeded with
(``data.seed``, i), and ``c = std^2 * (rho + rho0)^-gamma`` normalised to mean ``std^2`` over all
DFT bins, so every pixel has variance ``data.grf.std^2``. The images are float32 in model units
(no uint8 quantisation, no clipping), so ``grf_model(cfg)`` is their exact distribution.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import entry, get_channels, get_image_size
from sagd_jax.data.sources import check_indices
from sagd_jax.gaussian import GaussianData
from sagd_jax.spectral import spectral_weights

_STREAM_TAG = 0x6F7F  # separates these seeds from the other random streams of the package


def grf_spectrum(cfg: Any) -> np.ndarray:
    """float64 ``c`` on the rfft half-plane ``(size, size // 2 + 1)`` for ``data.grf.*``."""
    size = get_image_size(cfg)
    gamma = validate.number(*entry(cfg, "grf.gamma"), -10.0, 10.0)
    rho0 = validate.number(*entry(cfg, "grf.rho0"), 0.0, 10.0)
    std = validate.number(*entry(cfg, "grf.std"), 1e-6, 1e3)
    if gamma > 0 and rho0 == 0:
        raise validate.fail("data.grf.rho0", rho0, "must be > 0 when data.grf.gamma > 0")
    return std**2 * spectral_weights(size, size, gamma=gamma, rho0=rho0)


def grf_model(cfg: Any) -> GaussianData:
    """The exact distribution of the ``grf`` images, per channel."""
    size = get_image_size(cfg)
    return GaussianData(spectrum=jnp.asarray(grf_spectrum(cfg), jnp.float32), height=size,
                        width=size)


class GRFSource:
    """Virtual dataset of ``data.num_examples`` float32 Gaussian random fields."""

    def __init__(self, cfg: Any):
        size, channels = get_image_size(cfg), get_channels(cfg)
        self.name = "grf"
        self.image_shape = (size, size, channels)
        self.num_examples = validate.integer(*entry(cfg, "num_examples"), 1)
        self.seed = validate.integer(*entry(cfg, "seed"), 0)
        self.root_spectrum = np.sqrt(grf_spectrum(cfg))[:, :, None]

    def __len__(self) -> int:
        return self.num_examples

    def get(self, indices: np.ndarray) -> np.ndarray:
        """float32 ``(len(indices), H, W, C)``."""
        idx = check_indices(indices, self.num_examples)
        height, width, _ = self.image_shape
        white = np.stack(
            [np.random.default_rng([self.seed, _STREAM_TAG, int(i)]).standard_normal(
                self.image_shape) for i in idx]
        ) if idx.size else np.zeros((0, *self.image_shape))
        spectrum = np.fft.rfft2(white, axes=(1, 2)) * self.root_spectrum
        return np.fft.irfft2(spectrum, s=(height, width), axes=(1, 2)).astype(np.float32)


def make_grf(cfg: Any) -> GRFSource:
    return GRFSource(cfg)
