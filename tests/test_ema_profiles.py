"""Post-hoc EMA maths (``sagd_jax.ema_profiles``): the std of a power profile against float64
quadrature, the update against its closed-form weights, the inner product against quadrature,
and reconstructions from snapshots against directly simulated EMAs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from sagd_jax import ema_profiles as ema

QUAD = {"epsabs": 1e-15, "epsrel": 1e-13, "limit": 200}


def quadrature_std(gamma: float) -> float:
    """Relative std of ``p(tau) = (gamma+1) tau^gamma`` on [0, 1], by quadrature."""
    p = lambda tau: (gamma + 1) * tau**gamma  # noqa: E731
    mass = integrate.quad(p, 0, 1, **QUAD)[0]
    mean = integrate.quad(lambda tau: tau * p(tau), 0, 1, **QUAD)[0] / mass
    var = integrate.quad(lambda tau: (tau - mean) ** 2 * p(tau), 0, 1, **QUAD)[0] / mass
    return math.sqrt(var)


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- 1. std <-> exponent


@pytest.mark.parametrize("std", [0.01, 0.05, 0.07, 0.10, 0.2, 0.28, ema.MAX_STD])
def test_std_exponent_round_trip_and_quadrature(std):
    gamma = ema.std_to_exponent(std)
    assert gamma >= 0
    assert ema.exponent_to_std(gamma) == pytest.approx(std, rel=1e-12)
    assert quadrature_std(gamma) == pytest.approx(std, rel=1e-9)


def test_edm2_stds_have_the_exponents_quadrature_gives():
    # EDM2's two kept profiles. The exponents are checked against quadrature above; here
    # against the values the paper quotes (about 16.97 and 6.94), loosely.
    assert ema.std_to_exponent(0.050) == pytest.approx(16.97, abs=0.01)
    assert ema.std_to_exponent(0.100) == pytest.approx(6.94, abs=0.01)
    # gamma = 0 is the uniform average, std 1/sqrt(12); the std falls as gamma grows.
    assert ema.exponent_to_std(0.0) == pytest.approx(ema.MAX_STD, rel=1e-15)
    assert ema.std_to_exponent(ema.MAX_STD) == pytest.approx(0.0, abs=1e-12)
    gammas = [ema.std_to_exponent(s) for s in np.linspace(0.005, 0.28, 40)]
    assert np.all(np.diff(gammas) < 0)


# ---------------------------------------------------------------- 2. the update


def test_discrete_profile_is_the_continuous_profile_integrated_over_each_step():
    t, std = 37, 0.1
    gamma = ema.std_to_exponent(std)
    weights = ema.discrete_profile(t, std)
    assert weights.shape == (t,) and weights.dtype == np.float64
    quad = [integrate.quad(lambda tau: (gamma + 1) / t * (tau / t) ** gamma, i - 1, i,
                           **QUAD)[0] for i in range(1, t + 1)]
    np.testing.assert_allclose(weights, quad, rtol=1e-10, atol=1e-16)
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("std", [0.05, 0.10, ema.MAX_STD])
def test_float64_recursion_gives_the_closed_form_weights(std):
    # The update on one-hot parameters (params_i = e_i) leaves the weight vector in the EMA.
    steps = 300
    gamma = ema.std_to_exponent(std)
    state = np.zeros(steps)
    for t in range(1, steps + 1):
        beta = (1 - 1 / t) ** (gamma + 1)
        state *= beta
        state[t - 1] += 1 - beta
    np.testing.assert_allclose(state, ema.discrete_profile(steps, std), rtol=1e-11, atol=1e-15)


def test_power_beta_and_update_weight_match_float64():
    std = 0.05
    gamma = ema.std_to_exponent(std)
    steps = np.array([1, 2, 3, 10, 1000, 123_457, 1_000_000, 16_000_000], np.int32)
    beta64 = (1 - 1 / steps.astype(np.float64)) ** (gamma + 1)
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf at step 1
        weight64 = -np.expm1((gamma + 1) * np.log1p(-1 / steps.astype(np.float64)))
    beta = np.asarray(jax.jit(lambda s: ema.power_beta(s, std))(jnp.asarray(steps)))
    weight = np.asarray(jax.jit(lambda s: ema.power_update_weight(s, std))(jnp.asarray(steps)))
    assert beta.dtype == np.float32 and beta[0] == 0.0 and weight[0] == 1.0
    np.testing.assert_allclose(beta, beta64, rtol=1e-6)
    # 1 - beta to float32 precision even where beta is within 1e-6 of 1.
    np.testing.assert_allclose(weight, weight64, rtol=2e-6)


def test_simulated_update_gives_the_closed_form_profile():
    rng = np.random.default_rng(1)
    steps, dim, std = 2000, 50, 0.05
    i = np.arange(1, steps + 1)[:, None] / steps
    trajectory = np.sin(6 * i + rng.uniform(0, 6, dim)) + 0.1 * rng.standard_normal((steps, dim))

    def body(state, inputs):
        step, params = inputs
        return ema.power_ema_update(state, params, step, std), None

    first = jnp.full((dim,), 123.0, jnp.float32)  # overwritten by the first update (beta_1 = 0)
    final, _ = jax.jit(lambda xs: jax.lax.scan(body, first, xs))(
        (jnp.arange(1, steps + 1, dtype=jnp.int32), jnp.asarray(trajectory, jnp.float32)))
    expected = ema.discrete_profile(steps, std) @ trajectory
    assert final.dtype == jnp.float32
    # float32 state over 2000 updates: round-off of a few 1e-7 per update, averaged away.
    np.testing.assert_allclose(np.asarray(final), expected, atol=2e-5)
    # step 1 copies the parameters, in the EMA's dtype.
    tree = {"w": jnp.zeros(3, jnp.bfloat16)}
    out = ema.power_ema_update(tree, {"w": jnp.ones(3, jnp.float32)}, jnp.int32(1), 0.1)
    assert out["w"].dtype == jnp.bfloat16 and np.all(np.asarray(out["w"], np.float32) == 1)


# ---------------------------------------------------------------- 3. reconstruction


@pytest.fixture(scope="module")
def training():
    """A synthetic trajectory (drift, oscillation and noise; 2000 steps x 50 parameters) and
    its power EMAs of stds 0.05, 0.07 and 0.10 at every step, float64 recursions."""
    rng = np.random.default_rng(0)
    steps, dim = 2000, 50
    i = np.arange(1, steps + 1)[:, None]
    freq, phase = rng.uniform(0.5, 3, dim), rng.uniform(0, 6.3, dim)
    trajectory = (np.sin(2 * np.pi * freq * i / steps + phase) + 0.5 * i / steps
                  + 0.1 * rng.standard_normal((steps, dim)))
    emas = {}
    for std in (0.05, 0.07, 0.10):
        gamma = ema.std_to_exponent(std)
        state, history = np.zeros(dim), np.zeros((steps + 1, dim))
        for t in range(1, steps + 1):
            beta = (1 - 1 / t) ** (gamma + 1)
            state = beta * state + (1 - beta) * trajectory[t - 1]
            history[t] = state
        emas[std] = history
    every = 100
    snapshot_steps = [s for s in range(every, steps + 1, every) for _ in (0, 1)]
    snapshot_stds = [0.05, 0.10] * (steps // every)
    snapshots = [{"w": emas[std][step]}
                 for step, std in zip(snapshot_steps, snapshot_stds, strict=True)]
    span = trajectory.max() - trajectory.min()
    return trajectory, emas, snapshot_steps, snapshot_stds, snapshots, span


@pytest.mark.parametrize("std", [0.05, 0.10])
@pytest.mark.parametrize("step", [2000, 1000, 300])
def test_kept_profile_is_reconstructed_exactly(training, std, step):
    _, emas, steps, stds, snapshots, span = training
    x = ema.solve_coefficients(steps, stds, step, std)
    unit = np.zeros(len(steps))
    unit[[k for k, (s, d) in enumerate(zip(steps, stds, strict=True)) if (s, d) == (step, std)]] = 1
    np.testing.assert_allclose(x, unit, atol=1e-10)
    assert ema.profile_error(x, steps, stds, step, std) < 1e-6  # sqrt of round-off
    out = ema.reconstruct(x, snapshots)["w"]
    np.testing.assert_allclose(out, emas[std][step], rtol=0, atol=1e-12 * span)


def test_reconstruction_between_kept_stds_matches_the_simulated_ema(training):
    trajectory, emas, steps, stds, snapshots, span = training
    # Measured (seed 0): at step 2000 profile error 0.0025, max |error| 2.7e-5 of the
    # trajectory's range; at step 1000 (10 snapshots so far) 0.0091 and 2.5e-4. Tolerances
    # leave a margin of about 4x; the error is set by the trajectory's noise and curvature.
    for step, tol in ((2000, 1e-4), (1000, 1e-3)):
        x = ema.solve_coefficients(steps, stds, step, 0.07)
        assert x.sum() == pytest.approx(1.0, abs=1e-12)
        error = ema.profile_error(x, steps, stds, step, 0.07)
        assert error < 0.02
        out = ema.reconstruct(x, snapshots)["w"]
        assert np.abs(out - emas[0.07][step]).max() < tol * span
        bound = cauchy_schwarz_bound(x, steps, stds, step, 0.07, trajectory)
        assert np.all(np.abs(out - emas[0.07][step]) <= bound + 1e-12 * span)


def cauchy_schwarz_bound(x, steps, stds, step, std, trajectory) -> np.ndarray:
    """A rigorous per-parameter bound on |reconstruction - target EMA|: both are weighted sums
    of the trajectory, with discrete weights q (the snapshots' profiles combined) and p; since
    both sum to 1, the error is <q - p, theta - c> for any c, at most ||q - p|| ||theta - c||."""
    last = max(steps)
    q = sum(xk * np.pad(ema.discrete_profile(s, d), (0, last - s))
            for xk, s, d in zip(x, steps, stds, strict=True))
    p = np.pad(ema.discrete_profile(step, std), (0, last - step))
    centred = trajectory[:last] - trajectory[:last].mean(0)
    return np.linalg.norm(q - p) * np.linalg.norm(centred, axis=0)


def test_reconstruction_between_snapshot_steps(training):
    trajectory, emas, steps, stds, snapshots, span = training
    # A step between snapshots (every 100 steps) needs a profile that stops at 1950, made from
    # profiles that stop at 1900 and 2000: its relative L2 error is 0.28 (it puts weight on
    # steps 1951..2000), so the default max_error refuses it.
    text = one_line_error(ema.solve_coefficients, steps, stds, 1950, 0.07,
                          match="relative error 0.2")
    assert "step 1950" in text
    # Asked for anyway: measured max |error| 1.2e-3 of the range (40x the error at a snapshot
    # step), bounded as the profile error says.
    x = ema.solve_coefficients(steps, stds, 1950, 0.07, max_error=0.5)
    out = ema.reconstruct(x, snapshots)["w"]
    error = np.abs(out - emas[0.07][1950])
    assert 2e-4 * span < error.max() < 4e-3 * span
    assert np.all(error <= cauchy_schwarz_bound(x, steps, stds, 1950, 0.07, trajectory)
                  + 1e-12 * span)


@pytest.mark.parametrize(("snapshots", "std", "expected"), [
    # (snapshots so far, target std, relative profile error measured at the last snapshot)
    (20, 0.03, 0.026), (20, 0.2, 0.015), (20, 0.02, 0.087), (20, 0.25, 0.059),
    (10, 0.2, 0.052), (1, 0.07, 0.056), (100, 0.01, 0.026),
])
def test_profile_error_beyond_the_kept_stds(snapshots, std, expected):
    # The documented range: what the error rule (max_error 0.05) accepts. Snapshots of 0.05
    # and 0.10 every 100 steps; scale-free, so only the count matters.
    steps = [s for s in range(100, 100 * snapshots + 1, 100) for _ in (0, 1)]
    stds = [0.05, 0.10] * snapshots
    x = ema.solve_coefficients(steps, stds, steps[-1], std, max_error=1.0)
    error = ema.profile_error(x, steps, stds, steps[-1], std)
    assert error == pytest.approx(expected, rel=0.05)
    if expected > ema.MAX_PROFILE_ERROR:
        one_line_error(ema.solve_coefficients, steps, stds, steps[-1], std,
                       match=f"std={std}.*relative error")
    else:
        ema.solve_coefficients(steps, stds, steps[-1], std)
    # Scale-free: the same schedule in other units gives the same coefficients (up to the
    # round-off of the solve's ill-determined directions) and the same error.
    steps7 = [7 * s for s in steps]
    y = ema.solve_coefficients(steps7, stds, 7 * steps[-1], std, max_error=1.0)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-8)
    assert ema.profile_error(y, steps7, stds, 7 * steps[-1], std) == pytest.approx(error, rel=1e-6)


def test_reconstruct_keeps_dtypes_and_kinds():
    trees = [{"a": np.full((2, 3), v, np.float32), "b": jnp.full((4,), v, jnp.bfloat16)}
             for v in (1.0, 2.0, 4.0)]
    out = ema.reconstruct([0.5, -0.25, 0.75], trees)
    assert isinstance(out["a"], np.ndarray) and out["a"].dtype == np.float32
    assert isinstance(out["b"], jax.Array) and out["b"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["a"], 0.5 - 0.5 + 3.0)
    np.testing.assert_array_equal(np.asarray(out["b"], np.float32), 3.0)


# ---------------------------------------------------------------- 4. inner product


@pytest.mark.parametrize(("t_a", "std_a", "t_b", "std_b"), [
    (1000, 0.05, 1000, 0.05), (700, 0.05, 1000, 0.10), (1000, 0.05, 700, 0.10),
    (300, 0.2, 1000, 0.05), (1000, ema.MAX_STD, 250, 0.02), (5.5, 0.1, 3.25, 0.15),
])
def test_profile_dot_matches_quadrature(t_a, std_a, t_b, std_b):
    g_a, g_b = ema.std_to_exponent(std_a), ema.std_to_exponent(std_b)
    profile = lambda tau, t, g: (g + 1) / t * (tau / t) ** g  # noqa: E731
    end = min(t_a, t_b)
    quad = integrate.quad(lambda tau: profile(tau, t_a, g_a) * profile(tau, t_b, g_b), 0, end,
                          **QUAD)[0]
    assert float(ema.profile_dot(t_a, g_a, t_b, g_b)) == pytest.approx(quad, rel=1e-9)
    assert float(ema.profile_dot(t_b, g_b, t_a, g_a)) == pytest.approx(quad, rel=1e-12)


def test_profile_dot_broadcasts():
    t = np.array([100.0, 200.0, 300.0])
    out = ema.profile_dot(t[:, None], 5.0, t[None, :], 2.0)
    assert out.shape == (3, 3)
    assert out[1, 2] == pytest.approx(float(ema.profile_dot(200.0, 5.0, 300.0, 2.0)), rel=1e-15)


# ---------------------------------------------------------------- 5. bad input


@pytest.mark.parametrize("std", [0.0, -0.05, 0.29, math.nan, math.inf, True, "0.05"])
def test_bad_std_is_one_line(std):
    text = one_line_error(ema.std_to_exponent, std, match="EMA std=")
    assert repr(std) in text


def test_bad_inputs_are_one_line():
    steps, stds = [100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1]
    one_line_error(ema.exponent_to_std, -0.5, match="gamma=-0.5")
    one_line_error(ema.solve_coefficients, [], [], 100, 0.05, match="none given")
    one_line_error(ema.solve_coefficients, steps, stds[:3], 100, 0.05, match="4 steps but 3")
    one_line_error(ema.solve_coefficients, [0, 100], [0.05, 0.1], 100, 0.05,
                   match="snapshot step=0")
    one_line_error(ema.solve_coefficients, [-100, 100], [0.05, 0.1], 100, 0.05,
                   match="snapshot step=-100")
    one_line_error(ema.solve_coefficients, [100.5, 200], [0.05, 0.1], 100, 0.05,
                   match="snapshot step=100.5")
    one_line_error(ema.solve_coefficients, steps, stds, 201, 0.05, match="target_step=201: beyond")
    one_line_error(ema.solve_coefficients, steps, stds, 0, 0.05, match="target_step=0")
    one_line_error(ema.solve_coefficients, steps, [0.05, 0.1, 0.05, 0.5], 200, 0.05,
                   match="std=0.5")
    one_line_error(ema.solve_coefficients, steps, stds, 200, 0.3, match="std=0.3")
    one_line_error(ema.solve_coefficients, steps, stds, 50, 0.05, match="step 50.*relative")
    one_line_error(ema.discrete_profile, 0, 0.05, match="step=0")
    one_line_error(ema.profile_error, [1.0], steps, stds, 200, 0.05, match=r"shape \(1,\)")
    one_line_error(ema.reconstruct, [1.0], [{"a": np.ones(2)}] * 2, match=r"expected \(2,\)")
    one_line_error(ema.reconstruct, [0.5, 0.5], [{"a": np.ones(2)}, {"b": np.ones(2)}],
                   match="snapshot 1")
    one_line_error(ema.reconstruct, [1.0], [{"a": np.ones(2, np.int32)}], match="int32")
