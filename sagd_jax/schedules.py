"""Noise schedules: ``alpha(t)``, ``sigma(t)`` and the SDE coefficients, for t in [0, 1].

Every schedule is a frozen (hashable) dataclass with the same interface, so samplers and the
process never ask which one they hold:

* ``alpha_sigma(t) -> (alpha, sigma)``: marginal coefficients of
  ``x_t = alpha x_0 + sigma Sigma^{1/2} eps``; ``t`` any float array, results the same shape.
* ``sde(t) -> (f, g2)``: the forward SDE ``dx = f x dt + sqrt(g2) Sigma^{1/2} dw`` whose marginals
  these are (``f = d log alpha / dt``, ``g2 = d sigma^2/dt - 2 f sigma^2``).
* ``t_min``: the smallest time samplers evaluate the network at; ``num_timesteps``: the size of
  the discrete grid ``t_i = i / T`` for discrete schedules, ``None`` for continuous ones.

VP schedules (``alpha^2 + sigma^2 = 1``) are described by ``log alpha^2(t)``; then
``f = 1/2 d log alpha^2/dt = -beta(t)/2`` and ``g2 = beta(t)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sagd_jax import validate


def _vp_from_log_alpha2(log_alpha2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(alpha, sigma)`` from ``log alpha^2``; ``sigma^2 = -expm1(.)`` avoids cancellation."""
    return jnp.exp(0.5 * log_alpha2), jnp.sqrt(-jnp.expm1(log_alpha2))


@dataclasses.dataclass(frozen=True)
class VPSDE:
    """Continuous VP SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    num_timesteps: int | None = None
    name: str = "vp_sde"

    def log_alpha2(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.float32)
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def beta(self, t: jax.Array) -> jax.Array:
        return self.beta_min + jnp.asarray(t, jnp.float32) * (self.beta_max - self.beta_min)

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _vp_from_log_alpha2(self.log_alpha2(t))

    def sde(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        beta = self.beta(t)
        return -0.5 * beta, beta


@functools.lru_cache(maxsize=16)
def _log_alpha_bar_table(kind: str, params: tuple[float, ...], num_timesteps: int) -> np.ndarray:
    """``log alpha_bar_i`` for i = 0..T (``alpha_bar_0 = 1``), float64, cached per schedule."""
    steps = np.arange(1, num_timesteps + 1, dtype=np.float64)
    if kind == "linear":
        beta_start, beta_end = params
        betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    else:  # cosine (Nichol & Dhariwal), betas clipped at max_beta
        s, max_beta = params

        def alpha_bar(u: np.ndarray) -> np.ndarray:
            return np.cos((u / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2

        betas = np.minimum(1.0 - alpha_bar(steps) / alpha_bar(steps - 1), max_beta)
    return np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])


@dataclasses.dataclass(frozen=True)
class _DiscreteVP:
    """A VP schedule given by ``T`` betas, on the grid ``t_i = i / T``.

    Between grid points ``log alpha^2`` is interpolated linearly, so ``beta(t)`` is piecewise
    constant: ``-T log(1 - beta_i)`` on ``((i-1)/T, i/T]``. On the grid the coefficients are
    exactly those of the discrete DDPM chain.
    """

    num_timesteps: int = 1000

    @property
    def t_min(self) -> float:
        return 1.0 / self.num_timesteps

    def _table(self) -> np.ndarray:
        raise NotImplementedError

    def log_alpha2(self, t: jax.Array) -> jax.Array:
        table = self._table()
        grid = np.linspace(0.0, 1.0, self.num_timesteps + 1)
        return jnp.interp(jnp.asarray(t, jnp.float32), grid, table.astype(np.float32))

    def betas(self) -> np.ndarray:
        """The discrete ``beta_i``, i = 1..T, float64."""
        return -np.expm1(np.diff(self._table()))

    def beta(self, t: jax.Array) -> jax.Array:
        table = self._table()
        slopes = -np.diff(table) * self.num_timesteps  # beta(t) on each interval
        index = jnp.ceil(jnp.asarray(t, jnp.float32) * self.num_timesteps).astype(jnp.int32) - 1
        return jnp.asarray(slopes, jnp.float32)[jnp.clip(index, 0, self.num_timesteps - 1)]

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _vp_from_log_alpha2(self.log_alpha2(t))

    def sde(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        beta = self.beta(t)
        return -0.5 * beta, beta


@dataclasses.dataclass(frozen=True)
class DDPMLinear(_DiscreteVP):
    """DDPM's linear betas (Ho et al.): ``beta_i`` from 1e-4 to 0.02 over T = 1000 steps."""

    beta_start: float = 1e-4
    beta_end: float = 0.02
    name: str = "ddpm_linear"

    def _table(self) -> np.ndarray:
        params = (float(self.beta_start), float(self.beta_end))
        return _log_alpha_bar_table("linear", params, self.num_timesteps)


@dataclasses.dataclass(frozen=True)
class Cosine(_DiscreteVP):
    """The cosine schedule (Nichol & Dhariwal): ``alpha_bar = cos^2((t + s)/(1 + s) pi/2)``."""

    s: float = 0.008
    max_beta: float = 0.999
    name: str = "cosine"

    def _table(self) -> np.ndarray:
        params = (float(self.s), float(self.max_beta))
        return _log_alpha_bar_table("cosine", params, self.num_timesteps)


@dataclasses.dataclass(frozen=True)
class VE:
    """Variance exploding: ``alpha = 1``, ``sigma = sigma_min (sigma_max / sigma_min)^t``."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 0.0
    num_timesteps: int | None = None
    name: str = "ve"

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = jnp.asarray(t, jnp.float32)
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return jnp.ones_like(sigma), sigma

    def sde(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, sigma = self.alpha_sigma(t)
        return jnp.zeros_like(sigma), 2.0 * sigma**2 * math.log(self.sigma_max / self.sigma_min)


Schedule = VPSDE | DDPMLinear | Cosine | VE
SCHEDULES: dict[str, type] = {
    "vp_sde": VPSDE,
    "ddpm_linear": DDPMLinear,
    "cosine": Cosine,
    "ve": VE,
}


def get_schedule(name: str, **kwargs: float) -> Schedule:
    """A schedule by name (``vp_sde``, ``ddpm_linear``, ``cosine``, ``ve``) with overrides of
    its parameters (finite numbers; ``num_timesteps`` an integer >= 1)."""
    validate.one_of("schedule", name, tuple(SCHEDULES))
    fields = {f.name for f in dataclasses.fields(SCHEDULES[name])} - {"name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise validate.fail("schedule_kwargs", kwargs,
                            f"the {name} schedule has no parameter(s) {', '.join(unknown)}")
    checked = {key: validate.integer(f"schedule_kwargs.{key}", value, 1)
               if key == "num_timesteps" else validate.number(f"schedule_kwargs.{key}", value)
               for key, value in kwargs.items()}
    return SCHEDULES[name](**checked)


def time_grid(schedule: Schedule, steps: int) -> np.ndarray:
    """``steps`` decreasing sampler times from 1 to ``schedule.t_min``, float64.

    Discrete schedules land on their integer grid ``t_i = i / T`` (needs ``steps <= T``);
    continuous ones are uniform in t. ``steps = 1`` gives ``[1]``.
    """
    validate.integer("steps", steps, 1)
    if schedule.num_timesteps is not None:
        total = schedule.num_timesteps
        if steps > total:
            raise ValueError(f"steps={steps}: a {schedule.name} schedule has only {total} steps")
        indices = np.round(np.linspace(total, 1, steps)).astype(np.int64)
        return indices / total
    return np.linspace(1.0, schedule.t_min, steps)
