"""Exact bias of each sampler on each time grid, versus network evaluations and anisotropy.

    python experiments/time_grids.py [--size=8] [--json=FILE]

No Monte Carlo: ``sagd_jax.gaussian.sampler_output_spectrum`` propagates the per-frequency
variance through each sampler's linear recursion in float64 on the grid's own times. Printed:
the worst per-frequency ``|var / c - 1|`` for the data spectrum of ``sagd_jax.demo`` under VP SDE
noise with gamma 0, 1, 2 (and gamma 2 under the per-frequency schedule white near the data,
``noise_exponent_start=0``, where the snr grid is not EDM's), for the grids of
``sagd_jax.time_grids`` (snr on the exact data spectrum) at 10, 20, 50 and 100 network
evaluations (Heun: ``(NFE + 1) // 2`` steps, ``2 steps - 1 <= NFE`` evaluations).
"""

from __future__ import annotations

import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python experiments/time_grids.py`` from anywhere
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
from sagd_jax.time_grids import GRIDS, make_grid

NFES = (10, 20, 50, 100)
SAMPLERS = ("ddpm", "ddim", "ode_heun", "dpmpp_2m", "sde")
NOISES = (("gamma 0", 0.0, 1.0), ("gamma 1", 1.0, 1.0), ("gamma 2", 2.0, 1.0),
          ("gamma 2, white near data", 2.0, 0.0))


def steps_for(sampler: str, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler == "ode_heun" else nfe


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("size", 8, "Image side, pixels.", lower_bound=2, flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    size = fv.size
    data = demo_data(size)
    c = np.asarray(data.spectrum, np.float64)
    rows = []
    print(f"worst |var/c - 1| over frequencies, {size}x{size}, VP SDE; NFE {NFES}")
    for label, gamma, start in NOISES:
        cov = SpectralCovariance.create(size, size, gamma=gamma)
        process = DiffusionProcess(cov=cov, schedule=VPSDE())
        if start != 1.0:
            process = process.replace(shaping=FrequencySchedule.create(
                cov, noise_exponent_start=start))
        for sampler in SAMPLERS:
            for grid in GRIDS:
                errors = []
                for nfe in NFES:
                    steps = steps_for(sampler, nfe)
                    times = make_grid(process, steps, grid, c)
                    var = sampler_output_spectrum(process, data, sampler, steps, times=times)
                    errors.append(float(np.abs(var / c - 1).max()))
                rows.append({"noise": label, "sampler": sampler, "grid": grid,
                             **{f"nfe{n}": e for n, e in zip(NFES, errors, strict=True)}})
                print(f"{label:26s} {sampler:9s} {grid:8s} "
                      + " ".join(f"{e:8.4f}" for e in errors))
    return {"size": size, "nfe": list(NFES), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
