"""Exact per-frequency output variance of each sampler on the Gaussian model (float64).

With the exact Gaussian ``eps_fn`` every sampler is, frequency by frequency, a linear recursion
``x' = m x + noise``, so the variance of its output follows from a scalar recursion over the same
time grid. The difference between this prediction and the data spectrum ``c`` is the sampler's
discretisation bias (exact, no Monte-Carlo); the Monte-Carlo tests then compare the jitted
samplers against the prediction.
"""

from __future__ import annotations

import numpy as np

from sagd_jax.schedules import time_grid


def predicted_spectrum(process, data, sampler: str, steps: int, eta: float = 0.0) -> np.ndarray:
    """Variance of the samples per rfft bin, ``(H, W // 2 + 1)`` float64."""
    w = np.asarray(process.cov.weights, np.float64)
    c = np.asarray(data.spectrum, np.float64)

    def coef(t):
        a, s = process.coefficients(np.float32(t))
        return float(a), float(s)

    def gain(t):  # Sigma^{1/2} eps_hat(x) = gain * x, per frequency
        a, s = coef(t)
        den = a**2 * c + s**2 * w
        return np.where(den > 0, s * w / np.where(den > 0, den, 1.0), 0.0)

    def denoise(t):  # x0_hat = denoise * x
        a, s = coef(t)
        return (1.0 - s * gain(t)) / a

    def velocity(t):  # probability-flow ODE: dx/dt = velocity * x
        f, g2 = (float(v) for v in process.sde(np.float32(t)))
        return f + g2 / (2.0 * coef(t)[1]) * gain(t)

    times = time_grid(process.schedule, steps)
    var = coef(1.0)[1] ** 2 * w
    for t, s in zip(times[:-1], times[1:], strict=True):
        a_t, s_t = coef(t)
        a_s, s_s = coef(s)
        a_ts = a_t / a_s
        s2_ts = s_t**2 - a_ts**2 * s_s**2
        post_var = s2_ts * s_s**2 / s_t**2
        h = s - t
        if sampler == "ddpm":
            m = (a_ts * s_s**2 + a_s * s2_ts * denoise(t)) / s_t**2
            var = m**2 * var + post_var * w
        elif sampler == "ddim":
            noise_var = eta**2 * post_var
            m = a_s * denoise(t) + np.sqrt(max(s_s**2 - noise_var, 0.0)) * gain(t)
            var = m**2 * var + noise_var * w
        elif sampler == "ode_euler":
            var = (1 + h * velocity(t)) ** 2 * var
        elif sampler == "ode_heun":
            m = 1 + 0.5 * h * (velocity(t) + velocity(s) * (1 + h * velocity(t)))
            var = m**2 * var
        elif sampler == "sde":
            f, g2 = (float(v) for v in process.sde(np.float32(t)))
            m = 1 + h * (f + g2 / s_t * gain(t))
            var = m**2 * var + g2 * (-h) * w
        else:
            raise ValueError(sampler)
    return denoise(times[-1]) ** 2 * var
