"""Post-hoc EMA with power-function profiles (Karras et al. 2024, EDM2, section 3 and
appendix C): the maths, as pure functions (docs/math.md section 14).

An EMA is a weighted average of the parameter trajectory; its *profile* is the weight it gives
each moment of training. A power-function profile at training step ``t`` is

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)   on 0 <= tau <= t   (integral 1)

and its width is named by the *relative standard deviation* ``sigma_rel`` (``std`` here), the
standard deviation of ``tau`` under ``p_t`` divided by ``t``:
``std^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))``. Being relative, it is scale-free: the
same ``std`` is the same shape of average at every step and for every unit of time.

Training keeps it with the update ``ema_t = beta_t ema_{t-1} + (1 - beta_t) params_t``,
``beta_t = (1 - 1/t)^(gamma + 1)`` (``t`` counts updates from 1; ``beta_1 = 0``). The weight of
``params_i`` in ``ema_t`` is then exactly ``(i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1)``:
``p_t`` integrated over ``(i - 1, i]``, the EMA of a trajectory that holds ``params_i`` over
that interval. Snapshots of a few such EMAs (several stds, every ``N`` steps) are combined
afterwards by least squares in the profiles' inner product into the EMA of another ``std`` or
step. Steps are counted in updates (any unit would do; the profiles only see ratios).

Host-side maths (exponents, inner products, the solve, the weighted sums) is float64 NumPy;
``power_beta``, ``power_update_weight`` and ``power_ema_update`` are jnp and trace inside a
jitted train step (``std`` is then a static Python float).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# gamma >= 0 (weights that never fall as training goes on): std in (0, MAX_STD], MAX_STD the
# uniform average's std (gamma = 0), 1 / sqrt(12).
MAX_STD = math.sqrt(1.0 / 12.0)
# ``solve_coefficients`` refuses a target whose reconstructed profile is off by more than this
# (relative L2 norm, ``profile_error``).
MAX_PROFILE_ERROR = 0.05


def exponent_to_std(gamma: float) -> float:
    """The relative standard deviation of the power profile of exponent ``gamma >= 0``."""
    if not (isinstance(gamma, (int, float, np.floating, np.integer)) and math.isfinite(gamma)
            and gamma >= 0):
        raise ValueError(f"EMA exponent gamma={gamma!r}: must be a finite number >= 0")
    g = float(gamma)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def std_to_exponent(std: float) -> float:
    """The exponent ``gamma >= 0`` whose power profile has relative std ``std``, for
    ``0 < std <= MAX_STD``: the largest real root of
    ``gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0``, ``s = std^-2`` (the std formula
    with its denominators cleared)."""
    ok = isinstance(std, (int, float, np.floating, np.integer)) and not isinstance(std, bool)
    if not (ok and math.isfinite(std) and 0 < std <= MAX_STD * (1 + 1e-12)):
        raise ValueError(f"EMA std={std!r}: must be in (0, {MAX_STD:.6f}] (1/sqrt(12), the "
                         f"uniform average; a power profile of exponent >= 0)")
    s = float(std) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    gamma = float(roots[np.abs(roots.imag) < 1e-9 * (1 + np.abs(roots.real))].real.max())
    return max(gamma, 0.0)  # at std = MAX_STD the root is 0 to about 1e-15 either way


def power_beta(step: jax.Array, std: float) -> jax.Array:
    """``beta_t = (1 - 1/t)^(gamma + 1)`` (float32 scalar) for ``step`` ``t >= 1`` (int32, the
    number of the update just applied): ``ema_t = beta_t ema_{t-1} + (1 - beta_t) params_t``.
    ``std`` is a static Python float. Use ``power_update_weight`` for ``1 - beta_t``: taken as
    ``1 - power_beta`` it loses most of its digits in float32 late in training."""
    gamma = std_to_exponent(std)
    return jnp.exp(_log_beta(step, gamma))


def power_update_weight(step: jax.Array, std: float) -> jax.Array:
    """``1 - beta_t`` (float32 scalar, accurate to float32 round-off at any step; 1 at step 1)."""
    gamma = std_to_exponent(std)
    return -jnp.expm1(_log_beta(step, gamma))


def _log_beta(step: jax.Array, gamma: float) -> jax.Array:
    t = jnp.asarray(step).astype(jnp.float32)
    return (gamma + 1.0) * jnp.log1p(-1.0 / t)  # -inf at t = 1


def power_ema_update(ema: Any, params: Any, step: jax.Array, std: float) -> Any:
    """``ema_t`` from ``ema_{t-1}`` and ``params_t`` (pytrees of the same structure):
    ``ema + (1 - beta_t) (params - ema)`` leaf by leaf, in at least float32, returned in each
    ``ema`` leaf's dtype. At step 1 it is ``params`` (cast)."""
    weight = power_update_weight(step, std)

    def update(e: jax.Array, p: jax.Array) -> jax.Array:
        dtype = jnp.promote_types(e.dtype, jnp.float32)
        e32 = e.astype(dtype)
        return (e32 + weight.astype(dtype) * (p.astype(dtype) - e32)).astype(e.dtype)

    return jax.tree.map(update, ema, params)


def discrete_profile(step: int, std: float) -> np.ndarray:
    """The weights ``(step,)`` float64 of ``params_1 .. params_step`` in the power EMA of
    ``std`` after ``step`` updates: ``(i/t)^(gamma+1) - ((i-1)/t)^(gamma+1)`` (sum 1)."""
    t = _positive_int("step", step)
    gamma = std_to_exponent(std)
    edges = (np.arange(t + 1, dtype=np.float64) / t) ** (gamma + 1.0)
    return np.diff(edges)


def profile_dot(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> np.ndarray:
    """``<p_a, p_b> = integral p_a(tau) p_b(tau) dtau`` of two power profiles (ends ``t`` in
    steps, exponents ``gamma``; NumPy-broadcast, float64, units 1/step). For ``t_a <= t_b``,
    ``(gamma_a+1)(gamma_b+1) / ((gamma_a+gamma_b+1) t_b) (t_a/t_b)^gamma_b``."""
    t_a, g_a, t_b, g_b = np.broadcast_arrays(*(np.asarray(v, np.float64)
                                               for v in (t_a, gamma_a, t_b, gamma_b)))
    # Symmetric: put the shorter profile first.
    swap = t_a > t_b
    t_lo, t_hi = np.where(swap, t_b, t_a), np.where(swap, t_a, t_b)
    g_lo, g_hi = np.where(swap, g_b, g_a), np.where(swap, g_a, g_b)
    return ((g_lo + 1) * (g_hi + 1) / ((g_lo + g_hi + 1) * t_hi)) * (t_lo / t_hi) ** g_hi


def solve_coefficients(snapshot_steps: Sequence[int], snapshot_stds: Sequence[float],
                       target_step: int, target_std: float,
                       max_error: float = MAX_PROFILE_ERROR) -> np.ndarray:
    """The coefficients ``x`` (``(K,)`` float64, one per snapshot, summing to 1) with
    ``sum_k x_k p_k`` closest to the target profile in L2: ``A x = b``, ``A_jk = <p_j, p_k>``,
    ``b_j = <p_j, p_target>`` by least squares, then scaled to sum 1 (a constant trajectory is
    kept exactly), as EDM2 does. Snapshot ``k`` is the power EMA of ``snapshot_stds[k]`` at
    ``snapshot_steps[k]`` (several stds may share a step). A target the snapshots cannot make
    is refused: a step beyond the last snapshot, or a relative profile error
    (``profile_error``) above ``max_error``, e.g. a std far outside the kept ones, a step
    before the snapshots or between sparse ones (math.md's table)."""
    steps, gammas = _snapshots(snapshot_steps, snapshot_stds)
    t = _positive_int("target_step", target_step)
    if t > steps.max():
        raise ValueError(f"target_step={t}: beyond the last EMA snapshot (step {int(steps.max())})")
    gamma = std_to_exponent(target_std)
    gram = profile_dot(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    rhs = profile_dot(steps, gammas, t, gamma)
    x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    x = x / x.sum()
    error = _error(x, gram, rhs, profile_dot(t, gamma, t, gamma))
    if not error <= max_error:
        kept = ", ".join(f"{s:g}" for s in sorted(set(np.asarray(snapshot_stds).tolist())))
        first, last = int(steps.min()), int(steps.max())
        raise ValueError(
            f"EMA target std={target_std!r} at step {t}: the {len(steps)} snapshots (stds "
            f"{kept}, steps {first}..{last}) reconstruct its profile with relative error "
            f"{error:.3g} > max_error={max_error:g}")
    return x


def profile_error(coefficients: Any, snapshot_steps: Sequence[int],
                  snapshot_stds: Sequence[float], target_step: int, target_std: float) -> float:
    """``||sum_k x_k p_k - p_target|| / ||p_target||`` (L2 over training time, closed form):
    how far the reconstructed average's profile is from the one asked for. For i.i.d. noise in
    the parameters it is the reconstruction's error over the target EMA's own noise."""
    steps, gammas = _snapshots(snapshot_steps, snapshot_stds)
    x = np.asarray(coefficients, np.float64)
    if x.shape != steps.shape:
        raise ValueError(f"EMA coefficients of shape {x.shape}: expected {steps.shape}, one a "
                         "snapshot")
    t, gamma = _positive_int("target_step", target_step), std_to_exponent(target_std)
    gram = profile_dot(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    return _error(x, gram, profile_dot(steps, gammas, t, gamma), profile_dot(t, gamma, t, gamma))


def _error(x: np.ndarray, gram: np.ndarray, rhs: np.ndarray, norm2: np.ndarray) -> float:
    squared = float(x @ gram @ x - 2 * x @ rhs + norm2)
    return math.sqrt(max(squared, 0.0) / float(norm2))


def reconstruct(coefficients: Any, snapshots: Sequence[Any]) -> Any:
    """``sum_k x_k snapshots[k]``: pytrees of the same structure with floating leaves (NumPy or
    JAX arrays, gathered to the host), accumulated in float64 and returned in each leaf's dtype
    and kind (JAX leaves come back as JAX arrays)."""
    x = np.asarray(coefficients, np.float64)
    if x.ndim != 1 or len(x) != len(snapshots) or len(x) == 0:
        raise ValueError(f"EMA coefficients of shape {x.shape}: expected ({len(snapshots)},), "
                         "one a snapshot, at least one")
    structure = jax.tree.structure(snapshots[0])
    for k, tree in enumerate(snapshots[1:], 1):
        if jax.tree.structure(tree) != structure:
            raise ValueError(f"EMA snapshot {k}: its tree differs from snapshot 0's")

    def combine(*leaves: Any) -> Any:
        first = leaves[0]
        dtype = np.dtype(first.dtype)
        if not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
            raise ValueError(f"EMA snapshot leaf of dtype {dtype}: only floating leaves can be "
                             "averaged")
        total = np.zeros(np.shape(first), np.float64)
        for weight, leaf in zip(x, leaves, strict=True):
            total += weight * np.asarray(leaf, np.float64)
        out = total.astype(dtype)
        return jnp.asarray(out) if isinstance(first, jax.Array) else out

    return jax.tree.map(combine, *snapshots)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"EMA {key}={value!r}: must be an integer >= 1 (training steps)")
    return int(value)


def _snapshots(snapshot_steps: Sequence[int],
               snapshot_stds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, exponents)`` ``(K,)`` float64 of the snapshots, checked."""
    steps = np.asarray(snapshot_steps).ravel().tolist()
    stds = np.asarray(snapshot_stds).ravel().tolist()
    if not steps:
        raise ValueError("EMA snapshots: none given (at least one (step, std) is needed)")
    if len(steps) != len(stds):
        raise ValueError(f"EMA snapshots: {len(steps)} steps but {len(stds)} stds (one of each "
                         "per snapshot)")
    for step in steps:
        _positive_int("snapshot step", step)
    gammas = [std_to_exponent(float(s)) for s in stds]
    return np.asarray(steps, np.float64), np.asarray(gammas, np.float64)
