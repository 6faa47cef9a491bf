"""Sampler time grids: where the ``steps`` sampler times between 1 and ``t_min`` go.

* ``uniform``: ``schedules.time_grid`` (uniform in t; a discrete schedule's integer grid).
* ``edm``: Karras et al.'s grid: noise-to-signal ratios ``r = sigma_t / alpha_t`` spaced
  uniformly in ``r^(1/rho)`` from ``r(1)`` to ``r(t_min)`` (``rho = 7``), mapped back to t.
* ``logsnr``: uniform in ``lambda = log(alpha_t / sigma_t)`` (DPM-Solver's grid; the scalar
  schedule's, also under a per-frequency schedule).
* ``snr``: EDM's rule applied in every frequency bin: bin ``k`` has its own signal-to-noise
  ratio ``SNR_k(t) = A_t(k)^2 c_k / S_t(k)^2`` (``c``: the data's power spectrum, the run's
  reference spectrum) and its own EDM coordinate ``u_k(t)``, ``SNR_k^(-1/(2 rho))`` scaled to
  [0, 1] between ``t_min`` and 1; the grid is uniform in their mean over bins (full-grid
  weighted), so each frequency's transition gets its share of the steps. Isotropic noise on
  data shaped like the noise (``c`` proportional to ``w``) gives the ``edm`` grid.

Every grid starts at 1, ends at ``t_min`` and decreases strictly; on a discrete schedule it is
snapped to the integer grid ``i / T``. Times are float64 ``(steps,)``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sagd_jax import validate
from sagd_jax.schedules import time_grid
from sagd_jax.spectral import half_plane_multiplicity

GRIDS = ("uniform", "edm", "snr", "logsnr")
# ``auto``: the grid that won every row of README's table (exact bias at 10-100 network
# evaluations, gamma 0, 1, 2) for that sampler; uniform where none did.
AUTO = {"ddim": "logsnr", "dpmpp_2m": "logsnr"}
EDM_RHO = 7.0
TABLE_POINTS = 4001  # times on which the grids are inverted


def _table(t_min: float) -> np.ndarray:
    """Dense times from ``t_min`` to 1 (float64), for inverting monotone functions of t."""
    return np.linspace(t_min, 1.0, TABLE_POINTS)


def _log_noise_ratio(schedule) -> tuple[np.ndarray, np.ndarray]:
    """``(table, log(sigma_t / alpha_t))`` on ``_table``: increasing in t."""
    table = _table(schedule.t_min)
    alpha, sigma = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(jnp.asarray(table)))
    return table, np.log(sigma / alpha)


def _invert(values: np.ndarray, table: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``t`` with ``values(t) = targets`` for ``values`` increasing along ``table``."""
    return np.interp(targets, values, table)


def _snap(times: np.ndarray, schedule) -> np.ndarray:
    """Exact ends; a discrete schedule's integer grid, strictly decreasing."""
    times = np.asarray(times, np.float64).copy()
    times[0], times[-1] = 1.0, schedule.t_min
    total = schedule.num_timesteps
    if total is None:
        return times
    steps = len(times)
    position = np.arange(steps)
    # Room for the steps after and before each time, then strictly decreasing.
    index = np.clip(np.round(times * total).astype(np.int64), steps - position, total - position)
    for i in range(steps - 2, -1, -1):
        index[i] = max(index[i], index[i + 1] + 1)
    return index / total


def edm_grid(schedule, steps: int, rho: float = EDM_RHO) -> np.ndarray:
    """Karras et al.'s noise levels ``r = sigma / alpha`` (module docstring) as times."""
    if steps == 1:
        return np.ones(1)
    table, log_ratio = _log_noise_ratio(schedule)
    r_max, r_min = np.exp(log_ratio[-1]), np.exp(log_ratio[0])
    u = np.linspace(0.0, 1.0, steps)
    ratios = (r_max ** (1 / rho) + u * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho
    return _snap(_invert(log_ratio, table, np.log(ratios)), schedule)


def logsnr_grid(schedule, steps: int) -> np.ndarray:
    """Times uniform in ``log(alpha / sigma)`` from t = 1 to ``t_min``."""
    if steps == 1:
        return np.ones(1)
    table, log_ratio = _log_noise_ratio(schedule)  # -lambda
    return _snap(_invert(log_ratio, table, np.linspace(log_ratio[-1], log_ratio[0], steps)),
                 schedule)


def snr_grid(process, steps: int, spectrum: np.ndarray, rho: float = EDM_RHO) -> np.ndarray:
    """Steps placed by the per-frequency transitions of the data ``spectrum`` (``(H, W//2+1)``,
    the per-bin variance ``c``) under ``process`` (module docstring)."""
    schedule = process.schedule
    if steps == 1:
        return np.ones(1)
    c = np.asarray(spectrum, np.float64)
    if c.shape != process.cov.weights.shape or not np.all(np.isfinite(c)) or (c < 0).any():
        raise ValueError(f"reference spectrum of shape {c.shape}: expected finite values >= 0 "
                         f"of shape {tuple(process.cov.weights.shape)}")
    table = _table(schedule.t_min)
    a, s2 = (np.asarray(v, np.float64) for v in
             process.spectral_coefficients(jnp.asarray(table, jnp.float32)))
    weight = np.broadcast_to(half_plane_multiplicity(process.cov.height, process.cov.width),
                             c.shape)
    used = (np.asarray(process.cov.weights) > 0) & (c > 0)
    if not used.any():
        raise ValueError("reference spectrum: no frequency with both signal and noise")
    # Each bin's EDM coordinate: its noise-to-signal ratio r_k = SNR_k^(-1/2) to the 1/rho,
    # scaled to [0, 1] between t_min and 1; the grid is uniform in their weighted mean.
    root = (s2[:, used] / (a**2 * c)[:, used]) ** (0.5 / rho)
    share = (root - root[0]) / (root[-1] - root[0])
    position = (share * weight[used]).sum(1) / weight[used].sum()  # 0 at t_min, 1 at t = 1
    position = np.maximum.accumulate(position + 1e-12 * np.arange(len(table)))
    targets = np.linspace(position[-1], position[0], steps)
    return _snap(_invert(position, table, targets), schedule)


def resolve(grid: str, sampler: str) -> str:
    """``grid``, with ``auto`` replaced by ``sampler``'s default (``AUTO``, else uniform)."""
    validate.one_of("time_grid", grid, ("auto", *GRIDS))
    return AUTO.get(sampler, "uniform") if grid == "auto" else grid


def make_grid(process, steps: int, grid: str = "uniform", spectrum: np.ndarray | None = None,
              rho: float = EDM_RHO) -> np.ndarray:
    """The ``steps`` sampler times of ``grid`` (``uniform | edm | snr | logsnr``; ``snr``
    needs the data's per-bin ``spectrum``), float64, from 1 down to ``t_min``."""
    validate.one_of("time_grid", grid, GRIDS)
    uniform = time_grid(process.schedule, steps)  # validates steps
    if grid == "uniform":
        return uniform
    rho = validate.number("rho", rho, 0.0, open_lo=True)
    if grid == "edm":
        return edm_grid(process.schedule, steps, rho)
    if grid == "logsnr":
        return logsnr_grid(process.schedule, steps)
    if spectrum is None:
        raise ValueError("time_grid='snr': needs the data's reference spectrum")
    return snr_grid(process, steps, spectrum, rho)


def check_times(times: np.ndarray, schedule, steps: int) -> np.ndarray:
    """An explicit grid: ``steps`` finite times, ``times[0] = 1``, strictly decreasing, none
    below ``t_min``; returned as float64."""
    times = np.asarray(times, np.float64)
    ok = (times.shape == (steps,) and np.all(np.isfinite(times)) and times[0] == 1.0
          and np.all(np.diff(times) < 0) and times[-1] >= schedule.t_min - 1e-12)
    if not ok:
        raise ValueError(f"times: expected {steps} strictly decreasing times from 1 to "
                         f">= t_min={schedule.t_min:g}, got {np.array2string(times[:4])}...")
    return times
