"""The SAGD forward process ``x_t = alpha_t x_0 + sigma_t Sigma^{1/2} eps`` (docs/math.md
sections 2-3).

``DiffusionProcess`` bundles a schedule (``alpha_t``, ``sigma_t``, SDE coefficients) with the noise
covariance ``Sigma`` and the network's prediction type, and gives the training targets, the
projected white-space loss, the score and the Tweedie denoiser. Shapes: images
``x: (B, H, W, C)``; times ``t``: a scalar or ``(B,)`` in [0, 1].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from sagd_jax import loss_weighting, validate
from sagd_jax.frequency_schedule import FrequencySchedule
from sagd_jax.schedules import Schedule, get_schedule
from sagd_jax.spectral import SpectralCovariance, apply_multiplier, half_plane_multiplicity

PREDICTIONS = ("eps", "x0", "v")
PARAMETERIZATIONS = ("none", "edm")
NOISE_LABEL_SCALE = 1000.0  # the network's noise label is 1000 t (DDPM's, EDM's VP c_noise)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0``, 0 elsewhere (bins outside the support)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def combine(*terms: tuple[jax.Array, jax.Array]) -> jax.Array:
    """``sum_i M_i x_i`` for frequency-diagonal ``M_i``: ``terms`` are ``(x_i, m_i)`` with
    ``x_i: (B, H, W, C)`` and real multipliers ``m_i: (B, H, W // 2 + 1)``; one inverse FFT."""
    x = terms[0][0]
    height, width = x.shape[-3], x.shape[-2]
    total = sum(jnp.fft.rfft2(v.astype(jnp.float32), axes=(-3, -2)) * m[..., None]
                for v, m in terms)
    return jnp.fft.irfft2(total, s=(height, width), axes=(-3, -2)).astype(x.dtype)


def expand_to(coef: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a per-example coefficient ``(B,)`` (or a scalar) to broadcast against ``x``."""
    coef = jnp.asarray(coef)
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


@struct.dataclass
class DiffusionProcess:
    """SAGD forward process: schedule + noise covariance + prediction type.

    cov: the noise covariance ``Sigma`` (a pytree leaf: its weights can be traced).
    schedule: any schedule of ``sagd_jax.schedules`` (static).
    prediction: what the network outputs: ``eps`` (white noise), ``x0`` (the clean image, pixel
      space) or ``v`` (``alpha eps - sigma Sigma^{-1/2} x0``, white space).
    project_data: train on ``P x0`` instead of ``x0`` (``training_data``). Where ``w = 0`` the
      forward process adds no noise, so ``x_t`` carries ``alpha_t x0`` there during training
      while every sampler keeps those frequencies at 0; projecting the data removes that
      mismatch (no effect with full support).
    parameterization: ``none`` (the network sees ``x_t`` and outputs the prediction) or
      ``edm`` (Karras et al.'s preconditioning of an ``x0`` prediction, with
      ``r = sigma_t / alpha_t`` and ``x~ = x_t / alpha_t``: the network sees ``c_in x~``,
      ``c_in = 1 / sqrt(r^2 + sigma_data^2)``, and its output ``F`` gives
      ``x0_hat = c_skip x~ + c_out F``, ``c_skip = sigma_data^2 / (r^2 + sigma_data^2)``,
      ``c_out = r sigma_data / sqrt(r^2 + sigma_data^2)``; the loss is on ``F`` (EDM's
      weighting ``1 / c_out^2``), in white space; ``c_noise`` stays ``1000 t``, as EDM's VP
      preconditioning). Needs ``prediction="x0"``.
    sigma_data: the data's standard deviation assumed by ``edm`` (EDM's 0.5).
    shaping: ``None`` (the constant-``Sigma`` process) or a per-frequency schedule: then
      ``x_t = A_t x0 + S_t eps`` with ``A_t``, ``S_t`` diagonal in frequency
      (``sagd_jax.frequency_schedule``); ``v`` keeps its definition with the scalar
      ``alpha_t``, ``sigma_t`` and the base ``Sigma``, and the loss is unchanged.
    loss_weighting: ``none`` (the loss of section 3) or a weighting ``lambda(SNR_k)`` of the
      per-bin eps error (``sagd_jax.loss_weighting``: ``snr``, ``min_snr`` with
      ``min_snr_gamma``, ``sigmoid`` with ``sigmoid_bias``, ``edm`` with ``sigma_data``),
      docs/math.md section 13.
    frequency_loss_weights: ``None`` (off) or a per-bin weight ``f_k``, float32
      ``(H, W // 2 + 1)`` (a pytree leaf), multiplying the white-space loss in each bin.
    """

    cov: SpectralCovariance
    schedule: Schedule = struct.field(pytree_node=False)
    prediction: str = struct.field(pytree_node=False, default="eps")
    project_data: bool = struct.field(pytree_node=False, default=False)
    shaping: FrequencySchedule | None = None
    parameterization: str = struct.field(pytree_node=False, default="none")
    sigma_data: float = struct.field(pytree_node=False, default=0.5)
    loss_weighting: str = struct.field(pytree_node=False, default="none")
    min_snr_gamma: float = struct.field(pytree_node=False, default=5.0)
    sigmoid_bias: float = struct.field(pytree_node=False, default=0.0)
    frequency_loss_weights: jax.Array | None = None

    def __post_init__(self) -> None:
        validate.one_of("prediction", self.prediction, PREDICTIONS)
        validate.one_of("loss_weighting", self.loss_weighting, loss_weighting.WEIGHTINGS)
        validate.number("min_snr_gamma", self.min_snr_gamma, 0.0, open_lo=True)
        validate.number("sigmoid_bias", self.sigmoid_bias)
        validate.one_of("parameterization", self.parameterization, PARAMETERIZATIONS)
        validate.number("sigma_data", self.sigma_data, 0.0, open_lo=True)
        if self.parameterization == "edm" and self.prediction != "x0":
            raise validate.fail("parameterization", self.parameterization,
                                f"preconditions an x0 prediction (prediction={self.prediction!r})")

    @classmethod
    def from_config(cls, config: Any, height: int, width: int) -> DiffusionProcess:
        """From a config with full ``noise`` (see ``SpectralCovariance.from_config``, and
        ``project_data``) and ``diffusion`` (``schedule``, ``schedule_kwargs``, ``prediction``,
        the per-frequency schedule, ``parameterization``, ``sigma_data`` and the loss
        weighting keys) sections, each key read as it is (their one default:
        ``default_config()``)."""
        cov = SpectralCovariance.from_config(validate.lookup(config, "noise"), height, width)
        project_data = validate.boolean(*validate.entry(config, "noise.project_data"))
        name = validate.lookup(config, "diffusion.schedule")
        kwargs = validate.mapping(*validate.entry(config, "diffusion.schedule_kwargs"))
        try:
            schedule = get_schedule(name, **kwargs)
        except ValueError as err:
            raise ValueError(f"diffusion.{err}") from None
        prediction = validate.one_of(*validate.entry(config, "diffusion.prediction"), PREDICTIONS)
        shaping = FrequencySchedule.from_config(config, cov)
        if shaping is not None:
            try:
                shaping.check_monotone(schedule)
            except ValueError as err:
                raise ValueError(f"diffusion.{err}") from None
        parameterization = validate.one_of(
            *validate.entry(config, "diffusion.parameterization"), PARAMETERIZATIONS)
        sigma_data = validate.number(*validate.entry(config, "diffusion.sigma_data"), 0.0,
                                     open_lo=True)
        if parameterization == "edm" and prediction != "x0":
            raise ValueError(f"diffusion.parameterization='edm': preconditions an x0 "
                             f"prediction; set diffusion.prediction=x0 (not {prediction!r})")
        weighting = validate.one_of(*validate.entry(config, "diffusion.loss_weighting"),
                                    loss_weighting.WEIGHTINGS)
        min_snr_gamma = validate.number(*validate.entry(config, "diffusion.min_snr_gamma"), 0.0,
                                        open_lo=True)
        sigmoid_bias = validate.number(*validate.entry(config, "diffusion.sigmoid_bias"))
        frequency_weights = loss_weighting.frequency_weights(
            *validate.entry(config, "diffusion.frequency_loss_weights"), cov)
        return cls(cov=cov, schedule=schedule, prediction=prediction, project_data=project_data,
                   shaping=shaping, parameterization=parameterization, sigma_data=sigma_data,
                   loss_weighting=weighting, min_snr_gamma=min_snr_gamma,
                   sigmoid_bias=sigmoid_bias, frequency_loss_weights=frequency_weights)

    # --- marginals -----------------------------------------------------------------------
    def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(alpha_t, sigma_t)``, float32, same shape as ``t``."""
        return self.schedule.alpha_sigma(t)

    def spectral_coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(A_t, S_t^2)`` per frequency bin, broadcastable to ``t.shape + (H, W//2+1)``:
        ``(alpha_t, sigma_t^2 w)`` for the constant process."""
        if self.shaping is not None:
            return self.shaping.coefficients(self.schedule, t)
        alpha, sigma = self.coefficients(t)
        return alpha[..., None, None], sigma[..., None, None] ** 2 * self.cov.weights

    def spectral_sde(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f_k, g2_k)`` per bin: ``dx = f_k x dt + sqrt(g2_k) dw`` with white ``dw``
        (``(f, g2 w)`` for the constant process)."""
        if self.shaping is not None:
            return self.shaping.sde(self.schedule, t)
        f, g2 = self.sde(t)
        return f[..., None, None], g2[..., None, None] * self.cov.weights

    def training_data(self, x0: jax.Array) -> jax.Array:
        """The clean images the network learns from: ``P x0`` with ``project_data``, else
        ``x0`` (same shape and dtype)."""
        return self.cov.project(x0) if self.project_data else x0

    def perturb(self, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
        """``x_t = alpha_t x0 + sigma_t Sigma^{1/2} eps`` for white ``eps`` shaped like ``x0``."""
        if self.shaping is not None:
            a, s2 = self.spectral_coefficients(t)
            return combine((x0, a), (eps, jnp.sqrt(s2))).astype(x0.dtype)
        alpha, sigma = self.coefficients(t)
        noise = self.cov.sqrt(eps)
        return (expand_to(alpha, x0) * x0 + expand_to(sigma, x0) * noise).astype(x0.dtype)

    def marginal_sample(
        self, key: jax.Array, x0: jax.Array, t: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Draw ``x_t ~ q(x_t | x0)``; returns ``(x_t, eps)`` with ``eps`` the white noise."""
        eps = jax.random.normal(key, x0.shape, jnp.float32)
        return self.perturb(x0, eps, t), eps

    def sample_time(self, key: jax.Array, batch: int) -> jax.Array:
        """Training noise levels ``(batch,)``: uniform on ``[t_min, 1]`` for continuous
        schedules, uniform on the grid ``{1/T, ..., 1}`` for discrete ones."""
        total = self.schedule.num_timesteps
        if total is None:
            return jax.random.uniform(key, (batch,), minval=self.schedule.t_min, maxval=1.0)
        return jax.random.randint(key, (batch,), 1, total + 1).astype(jnp.float32) / total

    def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """``x_T ~ N(0, sigma_T^2 Sigma)`` at ``t = 1`` (``N(0, S_1^2)`` per bin)."""
        if self.shaping is not None:
            _, s2 = self.spectral_coefficients(jnp.float32(1.0))
            return apply_multiplier(jax.random.normal(key, shape, jnp.float32), jnp.sqrt(s2))
        _, sigma_T = self.coefficients(jnp.float32(1.0))
        return sigma_T * self.cov.sample(key, shape)

    def sde(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Forward SDE ``dx = f x dt + sqrt(g2) Sigma^{1/2} dw``: returns ``(f, g2)``."""
        return self.schedule.sde(t)

    # --- the network's input and output scalings ---------------------------------------------
    def preconditioning(self, t: jax.Array) -> tuple[jax.Array, ...]:
        """``(1 / alpha_t, c_in, c_skip, c_out)`` of ``edm`` (class docstring), shape of ``t``."""
        alpha, sigma = self.coefficients(t)
        r2, d2 = (sigma / alpha) ** 2, self.sigma_data**2
        return (1.0 / alpha, jax.lax.rsqrt(r2 + d2), d2 / (r2 + d2),
                jnp.sqrt(r2) * self.sigma_data * jax.lax.rsqrt(r2 + d2))

    def network_input(self, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(image, noise label)`` the network is called on: ``(x_t, 1000 t)``, or
        ``(c_in x_t / alpha_t, 1000 t)`` under ``edm``."""
        labels = NOISE_LABEL_SCALE * t
        if self.parameterization == "none":
            return x_t, labels
        inv_alpha, c_in, _, _ = self.preconditioning(t)
        return (expand_to(c_in * inv_alpha, x_t) * x_t).astype(x_t.dtype), labels

    # --- targets and loss (white space) ---------------------------------------------------
    def target(self, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
        """What the network should output for ``x_t = perturb(x0, eps, t)`` (under ``edm``:
        ``F = (x0 - c_skip x_t / alpha_t) / c_out``)."""
        if self.parameterization == "edm":
            inv_alpha, _, c_skip, c_out = self.preconditioning(t)
            x_t = self.perturb(x0, eps, t).astype(jnp.float32)
            return (x0 - expand_to(c_skip * inv_alpha, x0) * x_t) / expand_to(c_out, x0)
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        alpha, sigma = self.coefficients(t)
        return expand_to(alpha, eps) * eps - expand_to(sigma, eps) * self.cov.inv_sqrt(x0)

    def _white(self, value: jax.Array) -> jax.Array:
        """A prediction in white space: ``x0`` (and ``edm``'s ``F``) is whitened by
        ``Sigma^{-1/2}``."""
        return self.cov.inv_sqrt(value) if self.prediction == "x0" else value

    def loss(
        self, output: jax.Array, x0: jax.Array, eps: jax.Array, t: jax.Array
    ) -> jax.Array:
        """Per-example projected white-space loss ``||P (target - output)||^2 / (C trace(P))``.

        output, x0, eps: ``(B, H, W, C)``; returns ``(B,)`` float32. Normalised by the
        number of supported dimensions, so predicting 0 for ``eps`` costs 1 whatever the mask.
        Components off the support never reach ``x_t`` and are excluded by the projector.
        With a ``loss_weighting`` or ``frequency_loss_weights``: ``weighted_loss``.
        """
        if self.loss_weighting != "none" or self.frequency_loss_weights is not None:
            return self.weighted_loss(output, x0, eps, t)
        diff = self._white(self.target(x0, eps, t).astype(jnp.float32)) - self._white(
            output.astype(jnp.float32)
        )
        proj = self.cov.project(diff)
        dims = self.cov.support_fraction * diff.shape[-3] * diff.shape[-2] * diff.shape[-1]
        return jnp.sum(proj**2, axis=(-3, -2, -1)) / dims

    def loss_weights(self, t: jax.Array) -> jax.Array:
        """The per-bin weight of ``weighted_loss``: ``P_k f_k lambda(SNR_k(t))``, float32,
        ``t.shape + (H, W // 2 + 1)`` (``lambda = 1`` under ``loss_weighting="none"``, ``f = 1``
        without ``frequency_loss_weights``)."""
        support = self.cov.support.astype(jnp.float32)
        if self.loss_weighting == "none":
            weights = jnp.broadcast_to(support, jnp.shape(t) + support.shape)
        else:
            a, s2 = self.spectral_coefficients(t)
            weights = support * loss_weighting.bin_weights(
                self.loss_weighting, a, s2, min_snr_gamma=self.min_snr_gamma,
                sigmoid_bias=self.sigmoid_bias, sigma_data=self.sigma_data)
        if self.frequency_loss_weights is not None:
            weights = weights * self.frequency_loss_weights.astype(jnp.float32)
        return weights

    def weighted_loss(
        self, output: jax.Array, x0: jax.Array, eps: jax.Array, t: jax.Array
    ) -> jax.Array:
        """``sum_k P_k f_k lambda(SNR_k) |e_k|^2 / (C trace(P))`` per example (docs/math.md
        section 13), ``(B,)`` float32: ``e`` is the white eps error ``eps - eps_hat``, with
        ``eps_hat = eps_from_output(output, perturb(x0, eps, t), t)`` for any prediction and
        parameterization; under ``loss_weighting="none"`` it is the diff of ``loss`` (target
        minus output, white space) and ``lambda = 1``. The bins' energies come from one
        ``rfft2`` (Parseval: a half-plane bin stands for itself and its mirror image)."""
        if self.loss_weighting == "none":
            diff = self._white(self.target(x0, eps, t).astype(jnp.float32)) - self._white(
                output.astype(jnp.float32))
        else:
            eps_hat = self.eps_from_output(output, self.perturb(x0, eps, t), t)
            diff = eps.astype(jnp.float32) - eps_hat.astype(jnp.float32)
        height, width, channels = diff.shape[-3], diff.shape[-2], diff.shape[-1]
        spectrum = jnp.fft.rfft2(diff, axes=(-3, -2))
        energy = jnp.sum(spectrum.real**2 + spectrum.imag**2, axis=-1)  # (B, H, W // 2 + 1)
        mult = jnp.asarray(half_plane_multiplicity(height, width), jnp.float32)
        total = jnp.sum(energy * self.loss_weights(t) * mult, axis=(-2, -1))
        dims = self.cov.support_fraction * height * width * channels
        return total / (height * width) / dims

    # --- converting a network output -----------------------------------------------------
    def eps_from_output(self, output: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """White ``eps_hat`` from a network output of this process's prediction type."""
        if self.prediction == "eps":
            return output
        if self.parameterization == "edm":
            inv_alpha, _, c_skip, c_out = self.preconditioning(t)
            output = (expand_to(c_skip * inv_alpha, x_t) * x_t
                      + expand_to(c_out, x_t) * output.astype(jnp.float32))
        if self.prediction == "x0":
            return self.eps_from_x0(x_t, t, output)
        alpha, sigma = self.coefficients(t)
        if self.shaping is not None:  # v = alpha eps - sigma Sigma^{-1/2} x0, solved per bin
            a, s2 = self.spectral_coefficients(t)
            alpha, sigma = alpha[..., None, None], sigma[..., None, None]
            root_w = jnp.sqrt(self.cov.weights)
            den = a * root_w * alpha + sigma * jnp.sqrt(s2)
            return combine((x_t, safe_divide(sigma, den)), (output, safe_divide(a * root_w, den)))
        alpha, sigma = expand_to(alpha, x_t), expand_to(sigma, x_t)
        return (sigma * self.cov.inv_sqrt(x_t) + alpha * output) / (alpha**2 + sigma**2)

    def eps_from_x0(self, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
        """The white ``eps`` with ``x_t = perturb(x0, eps, t)``: ``S_t^+ (x_t - A_t x0)``."""
        if self.shaping is not None:
            a, s2 = self.spectral_coefficients(t)
            inv_s = safe_divide(1.0, jnp.sqrt(s2))
            return combine((x_t, inv_s), (x0, -a * inv_s))
        alpha, sigma = self.coefficients(t)
        alpha, sigma = expand_to(alpha, x_t), expand_to(sigma, x_t)
        return self.cov.inv_sqrt(x_t - alpha * x0) / sigma

    def score(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
        """``grad log p_t(x_t) = -Sigma^{-1/2} eps / sigma_t`` (pseudo-inverse off the support;
        ``-S_t^+ eps`` per bin)."""
        if self.shaping is not None:
            _, s2 = self.spectral_coefficients(t)
            return combine((eps, -safe_divide(1.0, jnp.sqrt(s2))))
        _, sigma = self.coefficients(t)
        return -self.cov.inv_sqrt(eps) / expand_to(sigma, x_t)

    def denoise(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
        """Tweedie: ``x0_hat = (x_t - sigma_t Sigma^{1/2} eps) / alpha_t``
        (``A_t^{-1} (x_t - S_t eps)`` per bin)."""
        if self.shaping is not None:
            a, s2 = self.spectral_coefficients(t)
            return combine((x_t, 1.0 / a), (eps, -jnp.sqrt(s2) / a))
        alpha, sigma = self.coefficients(t)
        return (x_t - expand_to(sigma, x_t) * self.cov.sqrt(eps)) / expand_to(alpha, x_t)
