"""Loss weightings on the per-frequency signal-to-noise ratio (docs/math.md section 13).

A weighting ``lambda(SNR)`` multiplies the squared error of the white-noise prediction in each
frequency bin, ``SNR_k(t) = A_t(k)^2 / S_t(k)^2`` (``alpha_t^2 / (sigma_t^2 w_k)`` for the
constant ``Sigma``). In a bin, the pixel-space x0 error is the eps error over ``sqrt(SNR)``, so a
weight ``W`` on the x0 error is ``W / SNR`` on the eps error. Every weighting is stated as a
weight on the eps error:

* ``snr``: 1 (``SNR`` on the x0 error: DDPM's eps loss, for any prediction type);
* ``min_snr``: ``min(SNR, gamma) / SNR`` (Hang et al. 2023's min-SNR-gamma: ``min(SNR,
  gamma)`` on the x0 error, the ``snr`` weighting capped at ``gamma``);
* ``sigmoid``: ``sigmoid(b - log SNR)`` (Kingma & Gao 2023's sigmoid weighting, bias ``b``);
* ``edm``: ``1 + 1 / (sigma_data^2 SNR)``: EDM's ``(sigma^2 + sigma_data^2) /
  (sigma sigma_data)^2`` on the x0 error with ``sigma^2 = 1 / SNR``, moved onto the eps error.

Pure ``jnp`` functions of ``log SNR`` (any shape), float32 in and out; ``bin_weights`` gives
the weight of every bin from the process's ``(A_t, S_t^2)``, 0 off the support;
``frequency_weights`` the per-bin weight ``f_k`` of ``diffusion.frequency_loss_weights``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sagd_jax import validate
from sagd_jax.spectral import SpectralCovariance, frequency_mask

WEIGHTINGS = ("none", "snr", "min_snr", "sigmoid", "edm")


def snr_weight(log_snr: jax.Array) -> jax.Array:
    """1: the SNR weighting ``SNR`` of the x0 error is the plain eps error."""
    return jnp.ones_like(log_snr)


def min_snr_weight(log_snr: jax.Array, gamma: float) -> jax.Array:
    """``min(SNR, gamma) / SNR = min(1, gamma / SNR)``."""
    return jnp.minimum(1.0, gamma * jnp.exp(-log_snr))


def sigmoid_weight(log_snr: jax.Array, bias: float) -> jax.Array:
    """``sigmoid(bias - log SNR)``: about 1 at high noise (``log SNR << bias``), falling as
    ``exp(bias) / SNR`` at low noise."""
    return jax.nn.sigmoid(bias - log_snr)


def edm_weight(log_snr: jax.Array, sigma_data: float) -> jax.Array:
    """``(SNR sigma_data^2 + 1) / (sigma_data^2 SNR) = 1 + 1 / (sigma_data^2 SNR)``."""
    return 1.0 + jnp.exp(-log_snr) / sigma_data**2


def weight(kind: str, log_snr: jax.Array, *, min_snr_gamma: float = 5.0,
           sigmoid_bias: float = 0.0, sigma_data: float = 0.5) -> jax.Array:
    """The weighting ``kind`` (one of ``WEIGHTINGS``; ``none`` is 1) at ``log_snr``, same shape."""
    log_snr = jnp.asarray(log_snr, jnp.float32)
    if kind == "none":
        return jnp.ones_like(log_snr)
    if kind == "snr":
        return snr_weight(log_snr)
    if kind == "min_snr":
        return min_snr_weight(log_snr, min_snr_gamma)
    if kind == "sigmoid":
        return sigmoid_weight(log_snr, sigmoid_bias)
    if kind == "edm":
        return edm_weight(log_snr, sigma_data)
    raise ValueError(f"loss_weighting={kind!r}: must be one of {', '.join(WEIGHTINGS)}")


def bin_weights(kind: str, a: jax.Array, s2: jax.Array, **params: float) -> jax.Array:
    """``lambda(SNR_k)`` per bin from ``A_t`` and ``S_t^2`` (broadcastable, e.g.
    ``(B, 1, 1)`` and ``(B, H, W // 2 + 1)``), float32: 0 where ``S_t^2 = 0`` (off the
    support, where no noise enters). ``params``: the keywords of ``weight``."""
    a = jnp.asarray(a, jnp.float32)
    s2 = jnp.asarray(s2, jnp.float32)
    support = s2 > 0
    log_snr = jnp.log(a**2) - jnp.log(jnp.where(support, s2, 1.0))
    return jnp.where(support, weight(kind, log_snr, **params), 0.0)


def frequency_weights(key: str, spec: Any, cov: SpectralCovariance) -> jax.Array | None:
    """The per-bin loss weight ``f_k`` of ``spec`` (``spectral.frequency_mask``: bands in the
    ``noise.bands`` syntax or ``powerlaw:GAMMA[:RHO0]``), float32 ``(H, W // 2 + 1)``, for a
    process with covariance ``cov``; ``None`` for "" or a weight of 1 in every bin (the
    unweighted loss, on its own code path). One-line ``ValueError``s naming ``key``; a weight
    that is 0 on the whole support of ``cov`` is refused."""
    validate.text(key, spec, empty=True)
    if not spec.strip():
        return None
    mask = np.asarray(frequency_mask(spec, cov.height, cov.width, key), np.float32)
    if np.all(mask == 1.0):
        return None
    if not np.any(mask * np.asarray(cov.support) > 0):
        raise validate.fail(key, spec, "is 0 in every frequency bin the noise reaches "
                            "(the support of Sigma): nothing would be trained")
    return jnp.asarray(mask)
