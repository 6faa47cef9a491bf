"""Per-frequency schedules: ``x_t = A_t x_0 + S_t eps`` with ``A_t``, ``S_t`` diagonal in frequency.

The constant-``Sigma`` process has ``A_t = alpha_t`` and ``S_t^2 = sigma_t^2 w`` in every
frequency bin ``k``. A ``FrequencySchedule`` makes both depend on ``t`` per bin, on top of the
scalar schedule and the base weights ``w`` (the run's ``Sigma``):

    A_t(k)   = alpha_t d_k(t)               per-frequency signal decay (blur)
    S_t(k)^2 = sigma_t^2 w_k(t)              per-frequency noise shape

* ``w_k(t) = w_k^{s(t)} / mean(w^{s(t)})`` on the support of ``w`` (0 off it; no division
  without ``noise.normalize``), ``s(t) = s_0 + (1 - s_0) t^p``: with ``s_0 = 0`` the noise is
  white near the data and shaped like ``Sigma`` near the prior (``s(1) = 1``: the prior is
  ``N(0, sigma_1^2 Sigma)`` as before). Config: ``diffusion.noise_exponent_start`` (``s_0``,
  1 = constant) and ``diffusion.noise_exponent_power`` (``p >= 1``).
* ``d_k(t) = (1 - d_min) exp(-pi^2 rho_k^2 sigma_B(t)^2 / 2) + d_min``, ``sigma_B(t) =
  sigma_B,max sin(pi t / 2)``: a Gaussian blur of ``sigma_B(t)`` pixels (``rho``: radial
  frequency, axis Nyquist 1), blurring diffusion (Hoogeboom & Salimans) on the periodic grid.
  Config: ``diffusion.blur_sigma_max`` (pixels, 0 = off) and ``diffusion.blur_min`` (``d_min``).

Its forward SDE per bin is ``dx = f_k x dt + sqrt(g2_k) dw`` (white ``dw``) with
``f_k = f + d log d_k / dt`` and ``g2_k = w_k [g2 + sigma^2 (d log w_k / dt - 2 d log d_k / dt)]``
(``f``, ``g2``: the scalar schedule's). Ancestral samplers need ``g2_k >= 0`` (each bin's
signal-to-noise ratio falls with ``t``); ``check_monotone`` refuses a schedule where it does not.
Shapes: times ``t`` scalar or ``(B,)``; per-bin results ``t.shape + (H, W // 2 + 1)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sagd_jax import validate
from sagd_jax.schedules import Schedule
from sagd_jax.spectral import SpectralCovariance, half_plane_multiplicity, radial_frequency

KEYS = ("noise_exponent_start", "noise_exponent_power", "blur_sigma_max", "blur_min")
CHECK_POINTS = 2001  # times on which check_monotone evaluates g2_k


@struct.dataclass
class FrequencySchedule:
    """The per-bin factors ``d_k(t)`` and ``w_k(t)`` (module docstring).

    log_w: ``log w`` on the support, 0 off it, float32 ``(H, W // 2 + 1)``; support: 1.0 on
    ``w > 0``; rho2: ``rho^2``; cell_weight: each half-plane bin's share of the full-grid mean
    (``multiplicity / (H W)``). The rest is static.
    """

    log_w: jax.Array
    support: jax.Array
    rho2: jax.Array
    cell_weight: jax.Array
    exponent_start: float = struct.field(pytree_node=False, default=1.0)
    exponent_power: float = struct.field(pytree_node=False, default=1.0)
    blur_sigma_max: float = struct.field(pytree_node=False, default=0.0)
    blur_min: float = struct.field(pytree_node=False, default=0.001)
    normalize: bool = struct.field(pytree_node=False, default=True)

    @classmethod
    def create(cls, cov: SpectralCovariance, *, noise_exponent_start: float = 1.0,
               noise_exponent_power: float = 1.0, blur_sigma_max: float = 0.0,
               blur_min: float = 0.001, normalize: bool = True) -> FrequencySchedule:
        """On the base covariance ``cov`` (its weights are ``w``)."""
        validate.number("noise_exponent_start", noise_exponent_start)
        validate.number("noise_exponent_power", noise_exponent_power, 1.0)
        validate.number("blur_sigma_max", blur_sigma_max, 0.0)
        validate.number("blur_min", blur_min, 0.0, 1.0, open_lo=True)
        w = np.asarray(cov.weights, np.float64)
        support = w > 0
        height, width = cov.height, cov.width
        cell = half_plane_multiplicity(height, width) / (height * width)
        return cls(
            log_w=jnp.asarray(np.log(np.where(support, w, 1.0)), jnp.float32),
            support=jnp.asarray(support, jnp.float32),
            rho2=jnp.asarray(radial_frequency(height, width) ** 2, jnp.float32),
            cell_weight=jnp.asarray(np.broadcast_to(cell, w.shape), jnp.float32),
            exponent_start=float(noise_exponent_start),
            exponent_power=float(noise_exponent_power),
            blur_sigma_max=float(blur_sigma_max), blur_min=float(blur_min),
            normalize=bool(normalize))

    @classmethod
    def from_config(cls, config: Any, cov: SpectralCovariance) -> FrequencySchedule | None:
        """From ``diffusion.{noise_exponent_start, noise_exponent_power, blur_sigma_max,
        blur_min}`` (each read as it is; their one default: ``default_config()``); ``None``
        when the schedule is the constant one (``s_0 = 1`` and no blur), so that process is
        exactly today's."""
        values = {key: validate.number(*validate.entry(config, f"diffusion.{key}"))
                  for key in KEYS}
        if values["noise_exponent_start"] == 1.0 and values["blur_sigma_max"] == 0.0:
            return None
        normalize = validate.boolean(*validate.entry(config, "noise.normalize"))
        try:
            return cls.create(cov, normalize=normalize, **values)
        except ValueError as err:
            raise ValueError(f"diffusion.{err}") from None

    # --- per-bin factors ------------------------------------------------------------------
    def exponent(self, t: jax.Array) -> jax.Array:
        """``s(t) = s_0 + (1 - s_0) t^p``, same shape as ``t``."""
        t = jnp.asarray(t, jnp.float32)
        return self.exponent_start + (1.0 - self.exponent_start) * t**self.exponent_power

    def log_weights(self, t: jax.Array) -> jax.Array:
        """``log w_k(t)`` on the support (off it: meaningless, ``weights`` zeroes it)."""
        log_w = self.exponent(t)[..., None, None] * self.log_w
        if self.normalize:
            log_mean = jax.scipy.special.logsumexp(
                log_w, axis=(-2, -1), b=self.cell_weight * self.support, keepdims=True)
            log_w = log_w - log_mean
        return log_w

    def weights(self, t: jax.Array) -> jax.Array:
        """``w_k(t)``, float32 ``t.shape + (H, W // 2 + 1)``."""
        return jnp.exp(self.log_weights(t)) * self.support

    def log_signal(self, t: jax.Array) -> jax.Array:
        """``log d_k(t)`` (0 without blur)."""
        t = jnp.asarray(t, jnp.float32)
        if self.blur_sigma_max == 0.0:
            return jnp.zeros(t.shape + self.rho2.shape, jnp.float32)
        sigma_b = self.blur_sigma_max * jnp.sin(0.5 * jnp.pi * t)[..., None, None]
        decay = jnp.exp(-0.5 * jnp.pi**2 * self.rho2 * sigma_b**2)
        return jnp.log((1.0 - self.blur_min) * decay + self.blur_min)

    def signal(self, t: jax.Array) -> jax.Array:
        """``d_k(t)``, float32 ``t.shape + (H, W // 2 + 1)``."""
        return jnp.exp(self.log_signal(t))

    def rates(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(d log d_k / dt, d log w_k / dt)`` (forward-mode derivatives in ``t``)."""
        t = jnp.asarray(t, jnp.float32)
        ones = jnp.ones_like(t)
        _, dlog_d = jax.jvp(self.log_signal, (t,), (ones,))
        _, dlog_w = jax.jvp(self.log_weights, (t,), (ones,))
        return dlog_d, dlog_w

    def coefficients(self, schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(A_t, S_t^2)`` per bin."""
        alpha, sigma = schedule.alpha_sigma(t)
        alpha, sigma = alpha[..., None, None], sigma[..., None, None]
        return alpha * self.signal(t), sigma**2 * self.weights(t)

    def sde(self, schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f_k, g2_k)`` of the per-bin forward SDE (module docstring)."""
        f, g2 = (v[..., None, None] for v in schedule.sde(t))
        _, sigma = schedule.alpha_sigma(t)
        dlog_d, dlog_w = self.rates(t)
        weights = self.weights(t)
        return f + dlog_d, weights * (g2 + sigma[..., None, None] ** 2 * (dlog_w - 2 * dlog_d))

    def check_monotone(self, schedule: Schedule) -> None:
        """Raise a one-line ``ValueError`` where some bin's signal-to-noise ratio rises with t
        (``g2_k < 0`` on ``CHECK_POINTS`` times in ``[t_min, 1]``)."""
        t = jnp.linspace(max(schedule.t_min, 1e-6), 1.0, CHECK_POINTS, dtype=jnp.float32)
        _, g2 = jax.jit(self.sde, static_argnums=0)(schedule, t)
        scale = jnp.max(jnp.abs(g2), axis=(-2, -1))
        lowest = jnp.min(g2 / jnp.maximum(scale, 1e-30)[:, None, None], axis=(-2, -1))
        if float(jnp.min(lowest)) < -1e-4:
            index = int(jnp.argmin(lowest))
            raise ValueError(
                f"noise_exponent_start={self.exponent_start:g}: some frequency's signal-to-"
                f"noise ratio rises with t near t={float(t[index]):.3g} (g2_k < 0); the "
                "reverse process is undefined there (move noise_exponent_start toward 1)")
