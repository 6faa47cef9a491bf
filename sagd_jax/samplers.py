"""Samplers for SAGD (SAGD.md section 4), each a pure jit-compiled function with a ``lax`` loop.

Every sampler has the signature ``sampler(process, eps_fn, key, shape, steps, **options)``:

* ``eps_fn(x, t) -> eps_hat``: any white-noise predictor; ``x: (B, H, W, C)``, ``t: (B,)``
  float32 in [0, 1]. A plain function works (jit caches on its identity); pass a
  ``jax.tree_util.Partial`` to have its arguments (e.g. network parameters) traced instead.
* ``shape = (B, H, W, C)``; ``steps``: the number of sampler iterations on
  ``schedules.time_grid`` (1 -> ``t_min``). Each iteration moves ``x`` from one grid time to the
  next; the last one maps ``x_{t_min}`` to the clean image with the Tweedie denoiser (for DDPM and
  DDIM this *is* their final step: the posterior at s = 0 is a point mass at ``x0_hat``).
  Network evaluations: ``steps`` for DDPM, DDIM, Euler and Euler-Maruyama; ``2 steps - 1`` for
  Heun.
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

Randomness: the prior uses ``fold_in(key, 0)``, iteration ``i`` uses ``fold_in(key, i + 1)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sagd_jax import validate
from sagd_jax.process import DiffusionProcess, expand_to
from sagd_jax.schedules import time_grid

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
# An update maps (process, eps_fn, x, t, s, key, options) -> x at the next (smaller) time s.
Update = Callable[..., jax.Array]


def _as_pytree_fn(eps_fn: EpsFn) -> jax.tree_util.Partial:
    return eps_fn if isinstance(eps_fn, jax.tree_util.Partial) else jax.tree_util.Partial(eps_fn)


@functools.partial(jax.jit, static_argnames=("update", "shape", "steps", "sharding"))
def _run(
    process: DiffusionProcess,
    eps_fn: jax.tree_util.Partial,
    key: jax.Array,
    options: dict[str, jax.Array],
    *,
    update: Update,
    shape: tuple[int, ...],
    steps: int,
    sharding: jax.sharding.Sharding | None,
) -> jax.Array:
    """Prior draw, ``steps - 1`` updates along the time grid, then the Tweedie denoiser."""
    times = jnp.asarray(time_grid(process.schedule, steps), jnp.float32)
    batch = jnp.ones((shape[0],), jnp.float32)

    def constrain(x: jax.Array) -> jax.Array:
        return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

    x = constrain(process.prior_sample(jax.random.fold_in(key, 0), shape))

    def body(i: jax.Array, x: jax.Array) -> jax.Array:
        t, s = times[i] * batch, times[i + 1] * batch
        return constrain(update(process, eps_fn, x, t, s, jax.random.fold_in(key, i + 1),
                                options))

    x = jax.lax.fori_loop(0, steps - 1, body, x)
    t_last = times[-1] * batch
    x0_hat, _ = _denoise(process, x, t_last, eps_fn(x, t_last), options)
    # Off the support of Sigma the exact dynamics keep the prior's zeros; projecting removes
    # the round-off that 1/alpha_T amplifies there, so masked bands of samples are exactly 0.
    return constrain(process.cov.project(x0_hat))


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
    alpha, sigma = (expand_to(v, x) for v in process.coefficients(t))
    return x0_hat, process.cov.inv_sqrt(x - alpha * x0_hat) / sigma


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
        **options: float,
    ) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        if len(shape) != 4 or shape[1:3] != (process.cov.height, process.cov.width):
            raise ValueError(
                f"shape={shape}: expected (B, {process.cov.height}, {process.cov.width}, C)"
            )
        time_grid(process.schedule, steps)  # validates steps before tracing
        unknown = sorted(set(options) - set(option_names))
        if unknown:
            raise ValueError(f"sampler {name!r} takes no option(s) {unknown}")
        if "clip_x0" in options:
            validate.number("clip_x0", options["clip_x0"], 0.0, open_lo=True)
        opts = {k: jnp.float32(v) for k, v in options.items()}
        return _run(process, _as_pytree_fn(eps_fn), key, opts, update=update, shape=shape,
                    steps=steps, sharding=sharding)

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


def _ddpm_update(process, eps_fn, x, t, s, key, options):
    x0_hat, _ = _denoise(process, x, t, eps_fn(x, t), options)
    mean, var = _posterior(process, x, x0_hat, t, s)
    z = jax.random.normal(key, x.shape, jnp.float32)
    return mean + jnp.sqrt(var) * process.cov.sqrt(z)


def _ddim_update(process, eps_fn, x, t, s, key, options):
    x0_hat, eps = _denoise(process, x, t, eps_fn(x, t), options)
    _, var = _posterior(process, x, x0_hat, t, s)
    alpha_s, sigma_s = (expand_to(c, x) for c in process.coefficients(s))
    noise_var = options.get("eta", 0.0) ** 2 * var
    z = jax.random.normal(key, x.shape, jnp.float32)
    direction = jnp.sqrt(jnp.maximum(sigma_s**2 - noise_var, 0.0))
    return alpha_s * x0_hat + process.cov.sqrt(direction * eps + jnp.sqrt(noise_var) * z)


def _ode_velocity(process, eps_fn, x, t):
    """Probability-flow ODE: ``dx/dt = f x + g2 / (2 sigma) Sigma^{1/2} eps_hat``."""
    f, g2 = (expand_to(c, x) for c in process.sde(t))
    _, sigma = process.coefficients(t)
    return f * x + g2 / (2.0 * expand_to(sigma, x)) * process.cov.sqrt(eps_fn(x, t))


def _euler_update(process, eps_fn, x, t, s, key, options):
    return x + expand_to(s - t, x) * _ode_velocity(process, eps_fn, x, t)


def _heun_update(process, eps_fn, x, t, s, key, options):
    h = expand_to(s - t, x)
    v_t = _ode_velocity(process, eps_fn, x, t)
    v_s = _ode_velocity(process, eps_fn, x + h * v_t, s)
    return x + 0.5 * h * (v_t + v_s)


def _sde_update(process, eps_fn, x, t, s, key, options):
    """Reverse SDE ``dx = [f x + g2 Sigma^{1/2} eps_hat / sigma] dt + sqrt(g2) Sigma^{1/2} dw``."""
    f, g2 = (expand_to(c, x) for c in process.sde(t))
    _, sigma = process.coefficients(t)
    h = expand_to(s - t, x)  # negative: time runs backwards
    drift = f * x + g2 / expand_to(sigma, x) * process.cov.sqrt(eps_fn(x, t))
    z = jax.random.normal(key, x.shape, jnp.float32)
    return x + h * drift + process.cov.sqrt(jnp.sqrt(g2 * -h) * z)


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

SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "sde": sde_euler_maruyama,
}


def get_sampler(name: str) -> Callable[..., jax.Array]:
    """A sampler by name: ``ddpm``, ``ddim``, ``ode_euler``, ``ode_heun``, ``sde``."""
    return SAMPLERS[validate.one_of("sampler", name, tuple(SAMPLERS))]
