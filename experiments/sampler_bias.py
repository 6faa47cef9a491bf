"""Exact bias of each sampler on the Gaussian model, versus step count and noise anisotropy.

    python experiments/sampler_bias.py [--size=8] [--noise_exponent_start=1] [--json=FILE]

No Monte Carlo: ``sagd_jax.gaussian.sampler_output_spectrum`` propagates the per-frequency
variance through each sampler's linear recursion in float64. Printed: the worst per-frequency
``|var / c - 1|`` over the rfft bins, for the data spectrum of ``sagd_jax.demo`` (rising with
frequency, a bump at rho = 0.7) and VP SDE noise with several gamma; with
``--noise_exponent_start=S`` (!= 1) the noise follows the per-frequency schedule ``w^s(t)``,
``s(t) = S + (1 - S) t`` (``sagd_jax.frequency_schedule``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python experiments/sampler_bias.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import flags

from benchmarks import common
from sagd_jax.demo import demo_data
from sagd_jax.frequency_schedule import FrequencySchedule
from sagd_jax.gaussian import sampler_output_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.schedules import VPSDE
from sagd_jax.spectral import SpectralCovariance

CASES = [("ddpm", 200), ("ddpm", 1000), ("ddim", 100), ("ddim", 400), ("ode_euler", 200),
         ("ode_heun", 50), ("ode_heun", 100), ("sde", 400)]
GAMMAS = (-1.0, 0.0, 1.0, 2.0)


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("size", 8, "Image side, pixels.", lower_bound=2, flag_values=fv)
    flags.DEFINE_float("noise_exponent_start", 1.0, "s(0) of a per-frequency schedule w^s(t) "
                       "(1: the constant Sigma).", flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    size = fv.size
    data = demo_data(size)
    c = np.asarray(data.spectrum, np.float64)
    table = {}
    start = fv.noise_exponent_start
    print(f"worst |var/c - 1| over frequencies, {size}x{size}, VP SDE schedule"
          + (f", noise w^s(t) from s(0) = {start:g}" if start != 1.0 else ""))
    print(f"{'sampler':10s} {'steps':>5s} " + " ".join(f"{'gamma=' + str(g):>10s}" for g in GAMMAS))
    for name, steps in CASES:
        row = []
        for gamma in GAMMAS:
            cov = SpectralCovariance.create(size, size, gamma=gamma)
            process = DiffusionProcess(cov=cov, schedule=VPSDE())
            if start != 1.0:
                process = process.replace(shaping=FrequencySchedule.create(
                    cov, noise_exponent_start=start))
            var = sampler_output_spectrum(process, data, name, steps)
            row.append(float(np.abs(var / c - 1).max()))
        table[f"{name}/{steps}"] = dict(zip([str(g) for g in GAMMAS], row, strict=True))
        print(f"{name:10s} {steps:5d} " + " ".join(f"{v:10.4f}" for v in row))
    return {"size": size, "noise_exponent_start": start, "worst_rel_var_err": table}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
