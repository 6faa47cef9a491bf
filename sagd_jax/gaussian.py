"""The exact Gaussian data model of docs/math.md section 5: every sampler's test reference.

Data ``x_0 ~ N(0, C)`` with ``C = F^H diag(c) F`` frequency-diagonal. Under the SAGD forward
process ``x_t ~ N(0, alpha_t^2 C + sigma_t^2 Sigma)`` and, per frequency, the exact noise
prediction is ``eps_hat(k) = sigma_t sqrt(w(k)) x_t(k) / (alpha_t^2 c(k) + sigma_t^2 w(k))``.

``GaussianMixture`` (docs/math.md section 12): K classes, each such a Gaussian with a mean
image of its own; its exact conditional and unconditional predictions are the oracle of
guidance (``sagd_jax.guidance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sagd_jax.process import DiffusionProcess, combine, safe_divide
from sagd_jax.schedules import time_grid
from sagd_jax.spectral import Band, apply_multiplier, half_plane_multiplicity, spectral_weights
from sagd_jax.time_grids import check_times


@struct.dataclass
class GaussianData:
    """Stationary Gaussian images ``x_0 ~ N(0, F^H diag(c) F)``.

    spectrum: ``c`` on the rfft half-plane, float32 ``(H, W // 2 + 1)``, even and >= 0
      (per-frequency variance of the unitary DFT of one channel).
    """

    spectrum: jax.Array
    height: int = struct.field(pytree_node=False)
    width: int = struct.field(pytree_node=False)

    @classmethod
    def power_law(
        cls,
        height: int,
        width: int,
        *,
        gamma: float = 2.0,
        rho0: float = 0.1,
        bands: Sequence[Band] | str | None = (),
        normalize: bool = True,
    ) -> GaussianData:
        """``c = masks * (rho + rho0)^-gamma`` (same conventions as ``SpectralCovariance``)."""
        c = spectral_weights(
            height, width, gamma=gamma, rho0=rho0, bands=bands, normalize=normalize
        )
        return cls(spectrum=jnp.asarray(c, jnp.float32), height=height, width=width)

    def sample(self, key: jax.Array, shape: Sequence[int]) -> jax.Array:
        """Draw ``x_0`` of ``shape = (..., H, W, C)``, float32."""
        eps = jax.random.normal(key, tuple(shape), jnp.float32)
        return apply_multiplier(eps, jnp.sqrt(self.spectrum))

    def marginal_spectrum(self, process: DiffusionProcess, t: jax.Array) -> jax.Array:
        """Per-frequency variance of ``x_t``: ``alpha_t^2 c + sigma_t^2 w`` (``A_t^2 c + S_t^2``
        for a per-frequency schedule).

        Shape ``t.shape + (H, W // 2 + 1)``.
        """
        if process.shaping is not None:
            a, s2 = process.spectral_coefficients(jnp.asarray(t, jnp.float32))
            return a**2 * self.spectrum + s2
        alpha, sigma = process.coefficients(t)
        alpha, sigma = alpha[..., None, None], sigma[..., None, None]
        return alpha**2 * self.spectrum + sigma**2 * process.cov.weights

    def eps(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The exact ``E[eps | x_t]``; ``x_t: (B, H, W, C)``, ``t``: scalar or ``(B,)``."""
        if process.shaping is not None:
            a, s2 = process.spectral_coefficients(jnp.asarray(t, jnp.float32))
            return apply_multiplier(x_t, safe_divide(jnp.sqrt(s2), a**2 * self.spectrum + s2))
        _, sigma = process.coefficients(t)
        gain = safe_divide(
            sigma[..., None, None] * jnp.sqrt(process.cov.weights),
            self.marginal_spectrum(process, t),
        )
        return apply_multiplier(x_t, gain)

    def score(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The exact score ``-(alpha_t^2 C + sigma_t^2 Sigma)^+ x_t``."""
        return -apply_multiplier(x_t, safe_divide(1.0, self.marginal_spectrum(process, t)))

    def eps_fn(self, process: DiffusionProcess) -> jax.tree_util.Partial:
        """The exact model as a sampler-ready ``eps_fn(x, t)`` (a pytree: jit reuses it)."""
        return jax.tree_util.Partial(_exact_eps, self, process)


def _exact_eps(
    data: GaussianData, process: DiffusionProcess, x: jax.Array, t: jax.Array
) -> jax.Array:
    return data.eps(process, x, t)


def sampler_output_spectrum(
    process: DiffusionProcess, data: GaussianData, sampler: str, steps: int, eta: float = 0.0,
    times: np.ndarray | None = None, trajectory: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Exact per-frequency variance of a sampler's output on this data, float64 ``(H, W//2+1)``;
    with ``trajectory``, also that of each iterate, ``(steps - 1, H, W//2+1)`` (what the
    sampler's ``record_power`` measures; the forward marginal's is ``A_t^2 c + S_t^2``).

    With the exact ``eps_fn`` every sampler of ``sagd_jax.samplers`` is, frequency by frequency,
    a linear recursion ``x' = m x + noise`` on the same time grid, so the variance of its output
    follows from a scalar recursion per bin in float64 (no Monte Carlo), for the constant
    process and for a per-frequency schedule alike (its coefficients ``A_t``, ``S_t^2``,
    ``f_k``, ``g2_k`` per bin), on the uniform grid or on ``times`` (the samplers' ``times``).
    Its ratio to ``c`` is the sampler's bias for this step count: the t_min stop plus the
    discretisation error.
    """
    c = np.asarray(data.spectrum, np.float64)
    shape = c.shape
    times = (time_grid(process.schedule, steps) if times is None
             else check_times(times, process.schedule, steps))
    # Every coefficient at every grid time, computed once (float32 like the samplers).
    grid = jnp.asarray(times, jnp.float32)
    tables = [np.broadcast_to(np.asarray(v, np.float64), (len(times), *shape))
              for v in (*process.spectral_coefficients(grid), *process.spectral_sde(grid))]
    index = {float(t): i for i, t in enumerate(times)}

    def coef(t):  # (A_t, S_t^2) per bin, float64, at a grid time
        i = index[float(t)]
        return tables[0][i], tables[1][i]

    def ratio(num, den):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    def marginal(t):
        a, s2 = coef(t)
        return a**2 * c + s2

    def denoise(t):  # x0_hat = denoise * x: (1 - S^2 / V) / A
        a, s2 = coef(t)
        return (1.0 - ratio(s2, marginal(t))) / a

    def sde(t):  # (f_k, g2_k) at a grid time
        i = index[float(t)]
        return tables[2][i], tables[3][i]

    def velocity(t):  # probability-flow ODE: dx/dt = (f + g2 / (2 V)) x
        f, g2 = sde(t)
        return f + ratio(g2, 2.0 * marginal(t))

    var = coef(times[0])[1].copy()
    path: list[np.ndarray] = []  # each iterate's variance

    def result(final: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        return (final, np.stack(path) if path else np.zeros((0, *shape))) if trajectory \
            else final

    if sampler == "dpmpp_2m":  # deterministic, two-step: x_i = gain_i x_T per bin
        gain, x0_prev, h_prev = np.ones_like(c), None, None
        for t, s in zip(times[:-1], times[1:], strict=True):
            (a_t, s2_t), (a_s, s2_s) = coef(t), coef(s)
            support = (s2_t > 0) & (s2_s > 0)
            h = np.where(support, 0.5 * (np.log(a_s**2 / np.where(support, s2_s, 1.0))
                                         - np.log(a_t**2 / np.where(support, s2_t, 1.0))), 1.0)
            x0 = denoise(t) * gain
            half_inv_r = 0.0 if h_prev is None else 0.5 * h / h_prev
            scale = -a_s * np.expm1(-h)
            d = x0 if x0_prev is None else (1 + half_inv_r) * x0 - half_inv_r * x0_prev
            gain = np.where(support, np.sqrt(ratio(s2_s, s2_t)) * gain + scale * d, 0.0)
            x0_prev, h_prev = x0, h
            path.append(gain**2 * var)
        return result((denoise(times[-1]) * gain) ** 2 * var)
    for t, s in zip(times[:-1], times[1:], strict=True):
        a_t, s2_t = coef(t)
        a_s, s2_s = coef(s)
        a_ts = a_t / a_s
        s2_ts = np.maximum(s2_t - a_ts**2 * s2_s, 0.0)
        post_var = ratio(s2_ts * s2_s, s2_t)
        h = s - t
        if sampler == "ddpm":
            m = ratio(a_ts * s2_s + a_s * s2_ts * denoise(t), s2_t)
            var = m**2 * var + post_var
        elif sampler == "ddim":
            noise_var = eta**2 * post_var
            gain = ratio(np.sqrt(s2_t), marginal(t))  # eps_hat = gain * x
            m = a_s * denoise(t) + np.sqrt(np.maximum(s2_s - noise_var, 0.0)) * gain
            var = m**2 * var + noise_var
        elif sampler == "ode_euler":
            var = (1 + h * velocity(t)) ** 2 * var
        elif sampler == "ode_heun":
            m = 1 + 0.5 * h * (velocity(t) + velocity(s) * (1 + h * velocity(t)))
            var = m**2 * var
        elif sampler == "sde":
            f, g2 = sde(t)
            m = 1 + h * (f + ratio(g2, marginal(t)))
            var = m**2 * var + g2 * (-h)
        else:
            raise ValueError(f"sampler={sampler!r}: unknown")
        path.append(var)
    return result(denoise(times[-1]) ** 2 * var)


@struct.dataclass
class GaussianMixture:
    """K classes of Gaussian images, each diagonal in frequency: class ``k`` (prior
    probability ``pi_k``) is ``x_0 ~ N(mu_k, F^H diag(c_k) F)`` (docs/math.md section 12): the
    exact oracle of class-conditional and guided sampling.

    means: ``mu_k``, float32 ``(K, H, W, C)``; spectra: ``c_k`` on the rfft half-plane, float32
    ``(K, H, W // 2 + 1)``, even and >= 0 (``GaussianData``'s convention, the same for every
    channel); log_prior: ``log pi_k``, float32 ``(K,)``.

    Under the forward process ``x_t | k ~ N(A_t mu_k, F^H diag(V_k) F)`` with, per bin,
    ``V_k = A_t^2 c_k + S_t^2`` (``(A_t, S_t^2)``: ``process.spectral_coefficients``, also the
    constant process's ``(alpha_t, sigma_t^2 w)``). The exact predictions:
    ``eps`` (class ``k``): per bin ``S_t (x_t - A_t mu_k) / V_k`` (0 where ``V_k = 0`` or
    ``S_t = 0``: no noise there); ``eps_unconditional``: ``sum_k p(k | x_t) eps_k`` with the
    posterior from each class's Gaussian density of ``x_t`` (``log_likelihoods``; bins where
    ``V_k = 0`` carry no density and are left out of it).
    """

    means: jax.Array
    spectra: jax.Array
    log_prior: jax.Array

    @classmethod
    def create(cls, means: Any, spectra: Any, prior: Any = None) -> GaussianMixture:
        """From ``means (K, H, W, C)``, ``spectra (K, H, W // 2 + 1)`` and ``prior (K,)``
        (positive, normalised here; None: uniform), checked on the host."""
        means = np.asarray(means, np.float32)
        spectra = np.asarray(spectra, np.float64)
        if means.ndim != 4:
            raise ValueError(f"means: expected (K, H, W, C), got shape {means.shape}")
        k, height, width = means.shape[:3]
        if spectra.shape != (k, height, width // 2 + 1):
            raise ValueError(f"spectra: expected ({k}, {height}, {width // 2 + 1}), got "
                             f"{spectra.shape}")
        if not (np.all(np.isfinite(spectra)) and np.all(spectra >= 0)):
            raise ValueError("spectra: every value must be finite and >= 0")
        prior = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, np.float64)
        if prior.shape != (k,) or not (np.all(np.isfinite(prior)) and np.all(prior > 0)):
            raise ValueError(f"prior: expected {k} positive probabilities, got {prior}")
        return cls(means=jnp.asarray(means), spectra=jnp.asarray(spectra, jnp.float32),
                   log_prior=jnp.asarray(np.log(prior / prior.sum()), jnp.float32))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def sample(self, key: jax.Array, labels: jax.Array, shape: Sequence[int]) -> jax.Array:
        """``x_0`` of class ``labels[i]`` for each image, ``shape = (B, H, W, C)``, float32."""
        shape = tuple(int(d) for d in shape)
        if shape[1:] != tuple(self.means.shape[1:]) or jnp.shape(labels) != shape[:1]:
            raise ValueError(f"shape={shape}, labels {jnp.shape(labels)}: expected "
                             f"(B, {', '.join(map(str, self.means.shape[1:]))}) and (B,)")
        labels = jnp.asarray(labels, jnp.int32)
        eps = jax.random.normal(key, shape, jnp.float32)
        return self.means[labels] + apply_multiplier(eps, jnp.sqrt(self.spectra[labels]))

    def _coefficients(self, process: DiffusionProcess, t: jax.Array, batch: int
                      ) -> tuple[jax.Array, jax.Array]:
        """``(A_t, S_t^2)`` per example and bin, float32 ``(B, H, W // 2 + 1)``."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        a, s2 = process.spectral_coefficients(t)
        shape = (batch, *self.spectra.shape[1:])
        return jnp.broadcast_to(a, shape), jnp.broadcast_to(s2, shape)

    def eps(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array,
            labels: jax.Array) -> jax.Array:
        """The exact ``E[eps | x_t, class labels[i]]``, white, shaped like ``x_t``."""
        a, s2 = self._coefficients(process, t, x_t.shape[0])
        labels = jnp.asarray(labels, jnp.int32)
        gain = safe_divide(jnp.sqrt(s2), a**2 * self.spectra[labels] + s2)
        return combine((x_t, gain), (self.means[labels], -a * gain)).astype(x_t.dtype)

    def log_likelihoods(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array
                        ) -> jax.Array:
        """``log p(x_t | k)``, float32 ``(B, K)``: each class's Gaussian density of ``x_t``,
        in frequency (``-(|F (x_t - A mu_k)|^2 / V_k + log(2 pi V_k)) / 2`` summed over every
        bin of the full grid and every channel; bins with ``V_k = 0`` left out)."""
        height, width = x_t.shape[1:3]
        a, s2 = self._coefficients(process, t, x_t.shape[0])
        spec_x = jnp.fft.rfft2(x_t.astype(jnp.float32), axes=(1, 2), norm="ortho")
        spec_mu = jnp.fft.rfft2(self.means, axes=(1, 2), norm="ortho")
        diff = spec_x[:, None] - a[:, None, ..., None] * spec_mu[None]  # (B, K, H, W', C)
        var = a[:, None] ** 2 * self.spectra[None] + s2[:, None]  # (B, K, H, W')
        mult = jnp.asarray(half_plane_multiplicity(height, width), jnp.float32)
        power = jnp.sum(jnp.abs(diff) ** 2, axis=-1)
        log_det = jnp.where(var > 0, jnp.log(2.0 * jnp.pi * jnp.where(var > 0, var, 1.0)), 0.0)
        terms = safe_divide(power, var) + x_t.shape[-1] * log_det
        return -0.5 * jnp.sum(mult * terms, axis=(-2, -1))

    def posterior(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """``p(k | x_t)``, float32 ``(B, K)`` (a softmax: stable for any log-density)."""
        return jax.nn.softmax(self.log_likelihoods(process, x_t, t) + self.log_prior, axis=-1)

    def eps_unconditional(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array
                          ) -> jax.Array:
        """The exact ``E[eps | x_t] = sum_k p(k | x_t) E[eps | x_t, k]``, shaped like ``x_t``."""
        height, width = x_t.shape[1:3]
        p = self.posterior(process, x_t, t)
        a, s2 = self._coefficients(process, t, x_t.shape[0])
        gain = safe_divide(jnp.sqrt(s2)[:, None], a[:, None] ** 2 * self.spectra[None]
                           + s2[:, None])  # (B, K, H, W')
        weighted = p[:, :, None, None] * gain
        spec_x = jnp.fft.rfft2(x_t.astype(jnp.float32), axes=(1, 2), norm="ortho")
        spec_mu = jnp.fft.rfft2(self.means, axes=(1, 2), norm="ortho")
        spec = (jnp.sum(weighted, axis=1)[..., None] * spec_x
                - a[..., None] * jnp.einsum("bkij,kijc->bijc", weighted, spec_mu))
        return jnp.fft.irfft2(spec, s=(height, width), axes=(1, 2),
                              norm="ortho").astype(x_t.dtype)

    def cond_fn(self, process: DiffusionProcess) -> jax.tree_util.Partial:
        """The exact class-conditional model as ``cond_fn(x, t, labels)`` (a pytree): label
        ``num_classes`` (the null label) gives the unconditional prediction."""
        return jax.tree_util.Partial(_mixture_eps, self, process)


def _mixture_eps(mixture: GaussianMixture, process: DiffusionProcess, x: jax.Array,
                 t: jax.Array, labels: jax.Array) -> jax.Array:
    null = jnp.asarray(labels) >= mixture.num_classes
    eps_c = mixture.eps(process, x, t, jnp.minimum(labels, mixture.num_classes - 1))
    # The unconditional prediction only where some example asks for it.
    eps_u = jax.lax.cond(jnp.any(null), lambda: mixture.eps_unconditional(process, x, t),
                         lambda: jnp.zeros_like(x))
    return jnp.where(null[:, None, None, None], eps_u, eps_c)
