"""The exact Gaussian data model of SAGD.md section 5: the reference every sampler is tested on.

Data ``x_0 ~ N(0, C)`` with ``C = F^H diag(c) F`` frequency-diagonal. Under the SAGD forward
process ``x_t ~ N(0, alpha_t^2 C + sigma_t^2 Sigma)`` and, per frequency, the exact noise
prediction is ``eps_hat(k) = sigma_t sqrt(w(k)) x_t(k) / (alpha_t^2 c(k) + sigma_t^2 w(k))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from sagd_jax.process import DiffusionProcess
from sagd_jax.spectral import Band, apply_multiplier, spectral_weights


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0``, 0 elsewhere (``0/0`` bins are outside both supports)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


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
        """Per-frequency variance of ``x_t``: ``alpha_t^2 c + sigma_t^2 w``.

        Shape ``t.shape + (H, W // 2 + 1)``.
        """
        alpha, sigma = process.coefficients(t)
        alpha, sigma = alpha[..., None, None], sigma[..., None, None]
        return alpha**2 * self.spectrum + sigma**2 * process.cov.weights

    def eps(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The exact ``E[eps | x_t]``; ``x_t: (B, H, W, C)``, ``t``: scalar or ``(B,)``."""
        _, sigma = process.coefficients(t)
        gain = _safe_divide(
            sigma[..., None, None] * jnp.sqrt(process.cov.weights),
            self.marginal_spectrum(process, t),
        )
        return apply_multiplier(x_t, gain)

    def score(self, process: DiffusionProcess, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The exact score ``-(alpha_t^2 C + sigma_t^2 Sigma)^+ x_t``."""
        return -apply_multiplier(x_t, _safe_divide(1.0, self.marginal_spectrum(process, t)))

    def eps_fn(self, process: DiffusionProcess) -> jax.tree_util.Partial:
        """The exact model as a sampler-ready ``eps_fn(x, t)`` (a pytree: jit reuses it)."""
        return jax.tree_util.Partial(_exact_eps, self, process)


def _exact_eps(
    data: GaussianData, process: DiffusionProcess, x: jax.Array, t: jax.Array
) -> jax.Array:
    return data.eps(process, x, t)
