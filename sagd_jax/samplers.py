"""Samplers for SAGD (docs/math.md section 4), each a pure jitted function with a ``lax`` loop.

Every sampler has the signature ``sampler(process, eps_fn, key, shape, steps, **options)``:

* ``eps_fn(x, t) -> eps_hat``: any white-noise predictor; ``x: (B, H, W, C)``, ``t: (B,)``
  float32 in [0, 1]. A plain function works (jit caches on its identity); pass a
  ``jax.tree_util.Partial`` to have its arguments (e.g. network parameters) traced instead.
* ``shape = (B, H, W, C)``; ``steps``: the number of sampler iterations on
  ``schedules.time_grid`` (1 -> ``t_min``), or on ``times`` (an explicit grid of ``steps``
  decreasing times, e.g. ``time_grids.make_grid``'s ``edm`` or ``snr``; traced: another grid
  of the same length reuses the compiled sampler). Each iteration moves ``x`` from one grid
  time to the next; the last one maps ``x_{t_min}`` to the clean image with the Tweedie
  denoiser (for DDPM and DDIM this *is* their final step: the posterior at s = 0 is a point
  mass at ``x0_hat``).
  Network evaluations: ``steps`` for DDPM, DDIM, Euler, Euler-Maruyama and DPM-Solver++(2M);
  ``2 steps - 1`` for Heun.
* ``clip_x0`` (option of DDPM and DDIM): clip each ``x0_hat`` to ``[-clip_x0, clip_x0]`` (the
  data range; then projected onto the support of ``Sigma``) and re-derive ``eps_hat`` from it,
  as DDPM's ``clip_denoised``. Not part of the exact dynamics: it keeps a briefly trained model
  whose ``x0_hat`` drifts far out of range at high noise (``sigma / alpha`` amplifies any error
  of ``eps_hat``) inside the data range. Also applied to the final denoising step.
* ``sharding`` (optional): keeps ``x`` split that way (e.g. the batch over the mesh's
  ``data`` axis) through the whole loop; the samples are the same as without it.
* The prior is ``N(0, sigma_T^2 Sigma)``; all fresh noise is ``Sigma^{1/2} z``, so a band that
  ``Sigma`` masks out starts at 0 and stays 0 (selective omission); the returned samples are
  projected onto the support of ``Sigma`` to remove round-off there.

* ``record_power=True``: return ``(samples, power)`` with ``power[i]`` the mean power per
  frequency bin (``power_per_bin``) of the iterate at grid time ``i + 1``, float32
  ``(steps - 1, H, W // 2 + 1)``: where a trajectory leaves the forward marginal
  (``experiments/drift_check.py``). The samples are the same as without it.
* ``condition`` (optional, a ``Condition``): band-conditional generation: the known frequency
  bins of given images are kept on their forward path and returned exactly; the sampler fills
  in the rest (spectral super-resolution, band inpainting).

Randomness: the prior uses ``fold_in(key, 0)``, iteration ``i`` uses ``fold_in(key, i + 1)``;
a condition's known bins draw from ``fold_in(key, _CONDITION_STREAM)`` folded the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sagd_jax import validate
from sagd_jax.process import DiffusionProcess, combine, expand_to, safe_divide
from sagd_jax.schedules import time_grid
from sagd_jax.spectral import first_odd_bin
from sagd_jax.time_grids import check_times

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
# An update maps (process, eps_fn, x, t, s, key, options) -> x at the next (smaller) time s.
Update = Callable[..., jax.Array]


def as_pytree_fn(eps_fn: EpsFn) -> jax.tree_util.Partial:
    """``eps_fn`` as a pytree (a ``Partial``), so jitted solvers take it as an argument."""
    return eps_fn if isinstance(eps_fn, jax.tree_util.Partial) else jax.tree_util.Partial(eps_fn)


@struct.dataclass
class Condition:
    """Known frequency bands of each image, for band-conditional generation.

    images: the known images ``(B, H, W, C)`` float32 (only their ``known`` bins are read);
    known: 1.0 on the known rfft bins, 0.0 elsewhere, ``(H, W // 2 + 1)`` (an even mask).
    Sampling keeps the known bins of ``x_t`` on a forward path of the known images: the prior's
    known bins are drawn from ``q(x_1 | x0)``, each step's from the posterior
    ``q(x_s | x_t, x0)`` given the previous ones (the forward process's path, exactly), while
    the sampler moves the rest; the final known bins are the images' own.

    Exactness: where ``Sigma`` has no noise in the known bins (``w = 0`` there, a model trained
    with ``noise.bands`` removing them and ``noise.project_data=False``), ``x_t`` carries
    ``A_t x0`` there and the model's score is the conditional score of the other bins given
    them: the samples are exact draws of the conditional for any data. With noise in the
    known bins this is the replacement method: exact when the bins are independent a priori
    (a stationary Gaussian), otherwise biased (the model sees the known bins only through
    their noisy ``x_t``; docs: a two-component mixture's weights drift toward the prior's).
    """

    images: jax.Array
    known: jax.Array

    @classmethod
    def create(cls, images: jax.Array, known: jax.Array | np.ndarray) -> Condition:
        """Check shapes and that ``known`` is a 0/1 mask on the half-plane of ``images``, even:
        the bins of columns 0 and ``W / 2`` (``W`` even) that are each other's mirror images
        (rows ``i`` and ``-i mod H``, the same frequency's two halves) known together."""
        images = jnp.asarray(images, jnp.float32)
        known = np.asarray(known, np.float32)
        if images.ndim != 4:
            raise ValueError(f"condition images: expected (B, H, W, C), got {images.shape}")
        height, width = images.shape[1:3]
        if known.shape != (height, width // 2 + 1):
            raise ValueError(f"known bands: expected a ({height}, {width // 2 + 1}) mask, got "
                             f"{known.shape}")
        if not np.isin(known, (0.0, 1.0)).all():
            raise ValueError("known bands: the mask must be 0 or 1 in every bin")
        odd = first_odd_bin(known, width)
        if odd is not None:
            row, column, mirror = odd
            raise ValueError(f"known bands: the mask is not even: bin ({row}, {column}) is "
                             f"{known[row, column]:g} but its mirror ({mirror}, {column}) is "
                             f"{known[mirror, column]:g}")
        return cls(images=images, known=jnp.asarray(known))

    def start(self, process: DiffusionProcess, x: jax.Array, key: jax.Array) -> jax.Array:
        """``x`` (the prior draw at t = 1) with its known bins drawn from ``q(x_1 | x0)``."""
        a, s2 = process.spectral_coefficients(jnp.ones((x.shape[0],), jnp.float32))
        z = jax.random.normal(key, x.shape, jnp.float32)
        return combine((x, 1.0 - self.known), (self.images, self.known * a),
                       (z, self.known * jnp.sqrt(s2)))

    def step(self, process: DiffusionProcess, x_t: jax.Array, x_s: jax.Array, t: jax.Array,
             s: jax.Array, key: jax.Array) -> jax.Array:
        """``x_s`` (the sampler's move from ``x_t``) with its known bins drawn from
        ``q(x_s | x_t, x0)``."""
        m_x, m_0, var = _spectral_posterior(process, t, s)
        # Bins without forward noise (w = 0 there) are deterministic: x_s = A_s x0.
        a_s, _ = process.spectral_coefficients(s)
        _, s2_t = process.spectral_coefficients(t)
        m_0 = jnp.where(s2_t > 0, m_0, a_s)
        z = jax.random.normal(key, x_s.shape, jnp.float32)
        return combine((x_s, 1.0 - self.known), (x_t, self.known * m_x),
                       (self.images, self.known * m_0), (z, self.known * jnp.sqrt(var)))

    def finish(self, x0_hat: jax.Array) -> jax.Array:
        """The final images: the known bins of ``images``, the rest of ``x0_hat``."""
        return combine((x0_hat, 1.0 - self.known), (self.images, self.known))


# The known bins' noise: a stream of its own beside the sampler's (fold_in(key, i + 1)).
_CONDITION_STREAM = 0x636F6E64


@functools.partial(jax.jit,
                   static_argnames=("update", "shape", "steps", "sharding", "record_power"))
def _run(
    process: DiffusionProcess,
    eps_fn: jax.tree_util.Partial,
    key: jax.Array,
    options: dict[str, jax.Array],
    condition: Condition | None,
    times: jax.Array | None,
    *,
    update: Update,
    shape: tuple[int, ...],
    steps: int,
    sharding: jax.sharding.Sharding | None,
    record_power: bool = False,
) -> Any:
    """Prior draw, ``steps - 1`` updates along the time grid ``times`` (float32
    ``(steps,)``; ``None``: the uniform grid as a compile-time constant, the program the
    default samplers have always compiled), then the Tweedie denoiser. ``record_power``: also
    return each iterate's ``power_per_bin``, float32 ``(steps - 1, H, W // 2 + 1)``."""
    if times is None:
        times = jnp.asarray(time_grid(process.schedule, steps), jnp.float32)
    batch = jnp.ones((shape[0],), jnp.float32)

    def constrain(x: jax.Array) -> jax.Array:
        return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

    condition_key = jax.random.fold_in(key, _CONDITION_STREAM)
    x = constrain(process.prior_sample(jax.random.fold_in(key, 0), shape))
    if condition is not None:
        x = constrain(condition.start(process, x, jax.random.fold_in(condition_key, 0)))

    multistep = getattr(update, "multistep", False)  # carries a memory between steps

    def body(i: jax.Array, carry: Any) -> Any:
        x, memory = carry if multistep else (carry, None)
        t, s = times[i] * batch, times[i + 1] * batch
        step_key = jax.random.fold_in(key, i + 1)
        if multistep:
            x_s, memory = update(process, eps_fn, x, t, s, step_key, options, memory)
        else:
            x_s = update(process, eps_fn, x, t, s, step_key, options)
        if condition is not None:
            x_s = condition.step(process, x, x_s, t, s, jax.random.fold_in(condition_key, i + 1))
        return (constrain(x_s), memory) if multistep else constrain(x_s)

    carry: Any = x
    if multistep:
        carry = (x, {"x0": jnp.zeros(shape, jnp.float32),
                     "h": jnp.zeros((shape[0], *process.cov.weights.shape), jnp.float32),
                     "count": jnp.int32(0)})
    if record_power:  # the same loop, also writing each iterate's mean power per bin
        def recording_body(i: jax.Array, both: Any) -> Any:
            inner, power = both
            inner = body(i, inner)
            return inner, power.at[i].set(power_per_bin(inner[0] if multistep else inner))

        carry, power = jax.lax.fori_loop(0, steps - 1, recording_body, (carry, jnp.zeros(
            (steps - 1, *process.cov.weights.shape), jnp.float32)))
    else:
        carry = jax.lax.fori_loop(0, steps - 1, body, carry)
    x = carry[0] if multistep else carry
    t_last = times[-1] * batch
    x0_hat, _ = _denoise(process, x, t_last, eps_fn(x, t_last), options)
    # Off the support of Sigma the exact dynamics keep the prior's zeros; projecting removes
    # the round-off that 1/alpha_T amplifies there, so masked bands of samples are exactly 0
    # (unless they are known: a condition's known bins are its images').
    x0_hat = process.cov.project(x0_hat)
    if condition is not None:
        x0_hat = condition.finish(x0_hat)
    return (constrain(x0_hat), power) if record_power else constrain(x0_hat)


def power_per_bin(x: jax.Array) -> jax.Array:
    """Mean power ``|F x|^2`` (unitary rfft) per frequency bin over the batch and channels:
    ``(B, H, W, C)`` -> float32 ``(H, W // 2 + 1)``."""
    spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2), norm="ortho")
    return jnp.mean(jnp.abs(spectrum) ** 2, axis=(0, 3))


def _denoise(
    process: DiffusionProcess, x: jax.Array, t: jax.Array, eps: jax.Array,
    options: dict[str, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """``(x0_hat, eps_hat)``; with ``options["clip_x0"] = c``, ``x0_hat`` clipped to [-c, c],
    projected onto the support, and ``eps_hat`` the white noise consistent with it."""
    x0_hat = process.denoise(x, t, eps)
    if "clip_x0" not in options:
        return x0_hat, eps
    c = options["clip_x0"]
    x0_hat = process.cov.project(jnp.clip(x0_hat, -c, c))
    return x0_hat, process.eps_from_x0(x, t, x0_hat)


def _make_sampler(
    update: Update, name: str, doc: str, option_names: tuple[str, ...] = ()
) -> Callable[..., jax.Array]:
    def sampler(
        process: DiffusionProcess,
        eps_fn: EpsFn,
        key: jax.Array,
        shape: tuple[int, ...],
        steps: int,
        sharding: jax.sharding.Sharding | None = None,
        condition: Condition | None = None,
        times: np.ndarray | None = None,
        record_power: bool = False,
        **options: float,
    ) -> Any:
        shape = tuple(int(d) for d in shape)
        if len(shape) != 4 or shape[1:3] != (process.cov.height, process.cov.width):
            raise ValueError(
                f"shape={shape}: expected (B, {process.cov.height}, {process.cov.width}, C)"
            )
        uniform = time_grid(process.schedule, steps)  # validates steps before tracing
        if times is not None:  # the uniform grid compiles as the default's constant
            times = check_times(times, process.schedule, steps)
            times = None if np.array_equal(times, uniform) else jnp.asarray(times, jnp.float32)
        unknown = sorted(set(options) - set(option_names))
        if unknown:
            raise ValueError(f"sampler {name!r} takes no option(s) {unknown}")
        if "clip_x0" in options:
            validate.number("clip_x0", options["clip_x0"], 0.0, open_lo=True)
        opts = {k: jnp.float32(v) for k, v in options.items()}
        if condition is not None and (condition.images.shape[:3] != shape[:3]
                                      or condition.images.shape[3] not in (1, shape[3])):
            raise ValueError(f"condition images {condition.images.shape}: expected {shape}")
        return _run(process, as_pytree_fn(eps_fn), key, opts, condition, times,
                    update=update, shape=shape, steps=steps, sharding=sharding,
                    record_power=bool(record_power))

    sampler.__name__ = sampler.__qualname__ = name
    sampler.__doc__ = doc
    return sampler


def _posterior(
    process: DiffusionProcess, x: jax.Array, x0_hat: jax.Array, t: jax.Array, s: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance factor of ``q(x_s | x_t, x0) = N(mean, var Sigma)`` for s < t."""
    alpha_t, sigma_t = (expand_to(c, x) for c in process.coefficients(t))
    alpha_s, sigma_s = (expand_to(c, x) for c in process.coefficients(s))
    alpha_ts = alpha_t / alpha_s
    sigma2_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    mean = (alpha_ts * sigma_s**2 * x + alpha_s * sigma2_ts * x0_hat) / sigma_t**2
    return mean, sigma2_ts * sigma_s**2 / sigma_t**2


def _spectral_posterior(
    process: DiffusionProcess, t: jax.Array, s: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-bin ``q(x_s | x_t, x0) = N(m_x x_t + m_0 x0, var)`` for a per-frequency schedule:
    returns ``(m_x, m_0, var)``, each ``(B, H, W // 2 + 1)`` (0 off the support)."""
    a_t, s2_t = process.spectral_coefficients(t)
    a_s, s2_s = process.spectral_coefficients(s)
    a_ts = a_t / a_s
    s2_ts = jnp.maximum(s2_t - a_ts**2 * s2_s, 0.0)
    return (safe_divide(a_ts * s2_s, s2_t), safe_divide(a_s * s2_ts, s2_t),
            safe_divide(s2_ts * s2_s, s2_t))


def _ddpm_update(process, eps_fn, x, t, s, key, options):
    x0_hat, _ = _denoise(process, x, t, eps_fn(x, t), options)
    z = jax.random.normal(key, x.shape, jnp.float32)
    if process.shaping is not None:
        m_x, m_0, var = _spectral_posterior(process, t, s)
        return combine((x, m_x), (x0_hat, m_0), (z, jnp.sqrt(var)))
    mean, var = _posterior(process, x, x0_hat, t, s)
    return mean + jnp.sqrt(var) * process.cov.sqrt(z)


def _ddim_update(process, eps_fn, x, t, s, key, options):
    x0_hat, eps = _denoise(process, x, t, eps_fn(x, t), options)
    if process.shaping is not None:
        a_s, s2_s = process.spectral_coefficients(s)
        noise_var = options.get("eta", 0.0) ** 2 * _spectral_posterior(process, t, s)[2]
        z = jax.random.normal(key, x.shape, jnp.float32)
        return combine((x0_hat, a_s),
                       (eps, jnp.sqrt(jnp.maximum(s2_s - noise_var, 0.0))),
                       (z, jnp.sqrt(noise_var)))
    _, var = _posterior(process, x, x0_hat, t, s)
    alpha_s, sigma_s = (expand_to(c, x) for c in process.coefficients(s))
    noise_var = options.get("eta", 0.0) ** 2 * var
    z = jax.random.normal(key, x.shape, jnp.float32)
    direction = jnp.sqrt(jnp.maximum(sigma_s**2 - noise_var, 0.0))
    return alpha_s * x0_hat + process.cov.sqrt(direction * eps + jnp.sqrt(noise_var) * z)


def ode_velocity(process: DiffusionProcess, eps_fn: EpsFn, x: jax.Array, t: jax.Array
                 ) -> jax.Array:
    """Probability-flow ODE: ``dx/dt = f x + g2 / (2 sigma) Sigma^{1/2} eps_hat``
    (``f_k x + g2_k / (2 S_k) eps_hat`` per bin); ``x: (B, H, W, C)``, ``t: (B,)``."""
    if process.shaping is not None:
        f, g2 = process.spectral_sde(t)
        _, s2 = process.spectral_coefficients(t)
        return combine((x, f), (eps_fn(x, t), safe_divide(g2, 2.0 * jnp.sqrt(s2))))
    f, g2 = (expand_to(c, x) for c in process.sde(t))
    _, sigma = process.coefficients(t)
    return f * x + g2 / (2.0 * expand_to(sigma, x)) * process.cov.sqrt(eps_fn(x, t))


def _euler_update(process, eps_fn, x, t, s, key, options):
    return x + expand_to(s - t, x) * ode_velocity(process, eps_fn, x, t)


def _heun_update(process, eps_fn, x, t, s, key, options):
    h = expand_to(s - t, x)
    v_t = ode_velocity(process, eps_fn, x, t)
    v_s = ode_velocity(process, eps_fn, x + h * v_t, s)
    return x + 0.5 * h * (v_t + v_s)


def _sde_update(process, eps_fn, x, t, s, key, options):
    """Reverse SDE ``dx = [f x + g2 Sigma^{1/2} eps_hat / sigma] dt + sqrt(g2) Sigma^{1/2} dw``
    (per bin: ``f_k``, ``g2_k / S_k``, ``sqrt(g2_k)``)."""
    z = jax.random.normal(key, x.shape, jnp.float32)
    if process.shaping is not None:
        f, g2 = process.spectral_sde(t)
        _, s2 = process.spectral_coefficients(t)
        h = (s - t)[:, None, None]
        return combine((x, 1.0 + h * f), (eps_fn(x, t), h * safe_divide(g2, jnp.sqrt(s2))),
                       (z, jnp.sqrt(jnp.maximum(g2, 0.0) * -h)))
    f, g2 = (expand_to(c, x) for c in process.sde(t))
    _, sigma = process.coefficients(t)
    h = expand_to(s - t, x)  # negative: time runs backwards
    drift = f * x + g2 / expand_to(sigma, x) * process.cov.sqrt(eps_fn(x, t))
    return x + h * drift + process.cov.sqrt(jnp.sqrt(g2 * -h) * z)


def _dpmpp_2m_update(process, eps_fn, x, t, s, key, options, memory):
    """DPM-Solver++(2M) (Lu et al. 2022, data prediction, multistep) in each frequency bin:
    per bin the process is a scalar one with ``lambda_k = log(A_k / S_k)``, so in white space
    (``Sigma^{-1/2} x``) it is the isotropic solver unchanged. ``memory``: the previous
    ``x0_hat``, the previous step's ``h`` per bin and the step count (the first step is
    first order)."""
    x0_hat, _ = _denoise(process, x, t, eps_fn(x, t), options)
    a_t, s2_t = process.spectral_coefficients(t)
    a_s, s2_s = process.spectral_coefficients(s)
    support = (s2_t > 0) & (s2_s > 0)
    s2_t, s2_s = jnp.where(support, s2_t, 1.0), jnp.where(support, s2_s, 1.0)
    h = 0.5 * (jnp.log(a_s**2 / s2_s) - jnp.log(a_t**2 / s2_t))  # lambda_s - lambda_t > 0
    h = jnp.where(support, h, 1.0)
    first = memory["count"] == 0
    r = memory["h"] / h
    half_inv_r = jnp.where(first, 0.0, 0.5 / jnp.where(first, 1.0, r))
    scale = -a_s * jnp.expm1(-h)  # alpha_s (1 - e^{-h})
    x_s = combine((x, jnp.where(support, jnp.sqrt(s2_s / s2_t), 0.0)),
                  (x0_hat, jnp.where(support, scale * (1.0 + half_inv_r), 0.0)),
                  (memory["x0"], jnp.where(support, -scale * half_inv_r, 0.0)))
    return x_s, {"x0": x0_hat.astype(jnp.float32), "h": h, "count": memory["count"] + 1}


_dpmpp_2m_update.multistep = True

ddpm = _make_sampler(
    _ddpm_update,
    "ddpm",
    "DDPM ancestral sampling: ``x_s ~ N(mu_tilde(x_t, x0_hat), beta_tilde Sigma)``; option\n"
    "``clip_x0`` (module docstring).",
    option_names=("clip_x0",),
)
ddim = _make_sampler(
    _ddim_update,
    "ddim",
    "DDIM with ``eta`` (option, default 0: deterministic; 1 matches DDPM's posterior) and\n"
    "``clip_x0`` (module docstring).",
    option_names=("eta", "clip_x0"),
)
ode_euler = _make_sampler(
    _euler_update, "ode_euler", "Probability-flow ODE, explicit Euler."
)
ode_heun = _make_sampler(
    _heun_update, "ode_heun", "Probability-flow ODE, Heun's second-order method."
)
sde_euler_maruyama = _make_sampler(
    _sde_update, "sde_euler_maruyama", "Reverse-time SDE, Euler-Maruyama."
)

dpmpp_2m = _make_sampler(
    _dpmpp_2m_update, "dpmpp_2m",
    "DPM-Solver++(2M): second-order multistep on the probability-flow ODE, one network\n"
    "evaluation per step; ``clip_x0`` (module docstring).",
    option_names=("clip_x0",),
)

SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "sde": sde_euler_maruyama,
    "dpmpp_2m": dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., jax.Array]:
    """A sampler by name: ``ddpm``, ``ddim``, ``ode_euler``, ``ode_heun``, ``sde``,
    ``dpmpp_2m``."""
    return SAMPLERS[validate.one_of("sampler", name, tuple(SAMPLERS))]
