"""Log-likelihood and bits per dimension through the probability-flow ODE (score_sde's method).

The probability-flow ODE ``dx/dt = v(x, t)`` (``samplers``' velocity, any process) carries
``x_{t_min} = x0`` to ``x_1``; along it ``d log p_t(x_t) / dt = -div v``, so

    log p(x0) = log N(x_1; 0, S_1^2) + int_{t_min}^{1} div v(x_t, t) dt

with the prior ``N(0, sigma_1^2 Sigma)`` (``N(0, S_1^2)`` per bin). Solved jointly with a
fixed-step classical Runge-Kutta (RK4) on the ``logsnr`` time grid (4 network evaluations a
step), the divergence either exact (``trace="exact"``: one vector-Jacobian product per pixel
dimension, for small images) or Hutchinson's estimate ``z^T (dv/dx) z`` with ``probes``
Rademacher or Gaussian vectors ``z`` fixed along each trajectory (one VJP each).

Masked bands: ``Sigma`` has no noise there, the samplers keep them at 0, and the model's
distribution lives on the support of ``Sigma``. The density is computed there: probes are
projected onto the support (``E[z z^T] = P``), the trace is ``tr(P dv/dx)``, the prior has the
support's dimension, and ``dimensions`` counts supported dimensions only. Images are assumed on
the support (project the data: ``noise.project_data``).

Bits per dimension of 8-bit images (uniformly dequantised, scaled to [-1, 1] as the pipeline
scales them, ``x = y / 127.5 - 1``: bins of width ``2 / 255``):
``bpd = -log p(x) / (D ln 2) - log2(2 / 255)``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sagd_jax import validate
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import EpsFn, as_pytree_fn, ode_velocity
from sagd_jax.spectral import half_plane_multiplicity
from sagd_jax.time_grids import make_grid

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
BIN_WIDTH = 2.0 / 255.0  # one 8-bit level in model units


def supported_dimensions(process: DiffusionProcess, channels: int) -> int:
    """``D``: channels x the full-grid DFT bins where ``w > 0``."""
    cov = process.cov
    return int(round(float(cov.support_fraction) * cov.height * cov.width)) * channels


def prior_log_density(process: DiffusionProcess, x: jax.Array) -> jax.Array:
    """``log N(x; 0, S_1^2)`` on the support, per image: ``(B,)`` float32."""
    _, s2 = process.spectral_coefficients(jnp.ones((x.shape[0],), jnp.float32))
    support = jnp.asarray(process.cov.support, jnp.float32)
    mult = jnp.asarray(half_plane_multiplicity(process.cov.height, process.cov.width),
                       jnp.float32)
    spec = jnp.fft.rfft2(x.astype(jnp.float32), axes=(-3, -2), norm="ortho")
    s2 = jnp.where(support > 0, s2, 1.0)[..., None]
    terms = (jnp.abs(spec) ** 2 / s2 + jnp.log(2 * jnp.pi * s2)) * (support * mult)[..., None]
    return -0.5 * jnp.sum(terms, axis=(-3, -2, -1))


def _divergence(process, eps_fn, x, t, probes, trace):
    """``div v`` at ``(x, t)`` per image ``(B,)``: exact ``tr(P dv/dx)`` or the mean of
    ``z^T (dv/dx) z`` over ``probes (K, B, H, W, C)``. Reverse mode (``z^T J`` from one
    linearisation, then dotted with ``z``): networks with custom VJPs take no JVP."""
    _, pullback = jax.vjp(lambda y: ode_velocity(process, eps_fn, y, t), x)

    if trace == "exact":
        size = math.prod(x.shape[1:])

        def column(i):
            e = jnp.zeros((size,), jnp.float32).at[i].set(1.0).reshape(x.shape[1:])
            e = jnp.broadcast_to(e, x.shape)
            (row,) = pullback(process.cov.project(e))  # (P e)^T J
            return jnp.sum(row * e, axis=(1, 2, 3))

        return jnp.sum(jax.lax.map(column, jnp.arange(size)), axis=0)

    def one(z):
        (row,) = pullback(z)
        return jnp.sum(row * z, axis=(1, 2, 3))

    return jnp.mean(jax.lax.map(one, probes), axis=0)


@functools.partial(jax.jit, static_argnames=("trace",))
def _solve(process, eps_fn, x0, probes, times, *, trace):
    batch = jnp.ones((x0.shape[0],), jnp.float32)

    def field(x, t):
        t = t * batch
        return (ode_velocity(process, eps_fn, x, t),
                _divergence(process, eps_fn, x, t, probes, trace))

    def body(i, state):
        x, total = state
        t, s = times[i], times[i + 1]
        h = s - t
        k1, d1 = field(x, t)
        k2, d2 = field(x + 0.5 * h * k1, t + 0.5 * h)
        k3, d3 = field(x + 0.5 * h * k2, t + 0.5 * h)
        k4, d4 = field(x + h * k3, s)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        total = total + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
        return x, total

    x1, integral = jax.lax.fori_loop(0, times.shape[0] - 1, body,
                                     (x0.astype(jnp.float32), jnp.zeros(x0.shape[0])))
    return prior_log_density(process, x1) + integral


def log_likelihood(process: DiffusionProcess, eps_fn: EpsFn, x0: jax.Array, key: jax.Array,
                   *, steps: int = 100, trace: str = "hutchinson", probes: int = 1,
                   probe: str = "rademacher") -> jax.Array:
    """``log p(x0)`` of the model ``eps_fn`` under ``process``, per image ``(B,)`` float32.

    x0: ``(B, H, W, C)`` in model units (on the support of ``Sigma``); ``steps``: RK4 steps
    on the ``logsnr`` grid from ``t_min`` to 1 (``4 steps`` network evaluations, times
    ``1 + probes`` for Hutchinson, ``1 + H W C`` VJPs for the exact trace); ``key``: the
    probes (one set per image, fixed along its trajectory).
    """
    validate.one_of("trace", trace, TRACES)
    validate.one_of("probe", probe, PROBES)
    validate.integer("steps", steps, 1)
    validate.integer("probes", probes, 1)
    x0 = jnp.asarray(x0, jnp.float32)
    if x0.ndim != 4 or x0.shape[1:3] != (process.cov.height, process.cov.width):
        raise ValueError(f"x0 of shape {x0.shape}: expected (B, {process.cov.height}, "
                         f"{process.cov.width}, C)")
    times = make_grid(process, steps + 1, "logsnr")[::-1].copy()  # t_min -> 1
    shape = (probes, *x0.shape)
    z = (jax.random.rademacher(key, shape, jnp.float32) if probe == "rademacher"
         else jax.random.normal(key, shape, jnp.float32))
    z = process.cov.project(z)
    return _solve(process, as_pytree_fn(eps_fn), x0, z, jnp.asarray(times, jnp.float32),
                  trace=trace)


def bits_per_dim(log_px: np.ndarray | jax.Array, dimensions: int,
                 bin_width: float = BIN_WIDTH) -> np.ndarray:
    """``-log p / (D ln 2) - log2(bin_width)``: bits per (supported) dimension of dequantised
    8-bit data (``bin_width``: one level in model units)."""
    log_px = np.asarray(log_px, np.float64)
    return -log_px / (dimensions * math.log(2)) - math.log2(bin_width)
