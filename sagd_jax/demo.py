"""Demo of the SAGD core with no training: the exact Gaussian model through every sampler.

    python -m sagd_jax.demo [--size=32] [--num=512] [--seed=0] [--json=out.json]

For a data spectrum unlike the noise's and several noise weightings (isotropic, power laws and
a band-stop mask), each sampler draws images with the exact noise predictor of docs/math.md
section 5 and the table reports how far the per-frequency variance of the samples is from the
data spectrum c(k) (the answer is known), and the energy left in the masked band. ``--json``
also writes the rows to a new file (never overwritten); progress goes to stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from sagd_jax import cli, console, files, validate
from sagd_jax.gaussian import GaussianData
from sagd_jax.metrics.spectra import power_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import get_sampler
from sagd_jax.schedules import VPSDE
from sagd_jax.spectral import SpectralCovariance, full_grid_mean, radial_frequency

NOISES = {
    "isotropic": dict(gamma=0.0),
    "gamma=1": dict(gamma=1.0),
    "gamma=2": dict(gamma=2.0),
    "gamma=1, bandstop [0.4, 0.6]": dict(gamma=1.0, bands="bandstop:0.4:0.6"),
}
SAMPLERS = [("ddpm", 250), ("ddim", 100), ("ode_euler", 100), ("ode_heun", 50), ("sde", 250)]


def demo_data(size: int) -> GaussianData:
    """Data whose spectrum rises with frequency and has a bump at rho = 0.7."""
    rho = radial_frequency(size, size)
    c = (rho + 0.2) ** 0.5 * (1 + 2 * np.exp(-(((rho - 0.7) / 0.15) ** 2)))
    c = c / full_grid_mean(c, size)
    return GaussianData(spectrum=jnp.asarray(c, jnp.float32), height=size, width=size)


def measure(size: int, num: int, seed: int) -> list[dict]:
    """One row per (noise, sampler): ``num`` samples of ``size x size`` images; the median over
    frequencies of ``|log(sample variance / c)|``, the energy left in a masked band (None
    without a mask) and the seconds taken."""
    data = demo_data(size)
    c = np.asarray(data.spectrum, np.float64)
    rows = []
    progress = console.Progress("demo", total=len(NOISES) * len(SAMPLERS), unit="sampler run")
    for noise_name, noise in NOISES.items():
        cov = SpectralCovariance.create(size, size, **noise)
        process = DiffusionProcess(cov=cov, schedule=VPSDE())
        support = np.asarray(cov.support)
        for name, steps in SAMPLERS:
            start = time.perf_counter()
            x = get_sampler(name)(process, data.eps_fn(process), jax.random.key(seed),
                                  (num, size, size, 1), steps)
            x = np.asarray(jax.block_until_ready(x), np.float64)
            seconds = time.perf_counter() - start
            ratio = power_spectrum(x) / c
            rows.append(dict(
                noise=noise_name, sampler=name, steps=steps,
                median_abs_log_ratio=float(np.median(np.abs(np.log(ratio[support])))),
                masked_energy=float(np.sum(ratio[~support] * c[~support])) if (~support).any()
                else None,
                seconds=seconds,
            ))
            progress.update(1, f"{noise_name}, {name}")
    return rows


def display_rows(rows: list[dict]) -> list[dict]:
    """``measure``'s rows with the printed columns and precision."""
    return [{"noise": r["noise"], "sampler": r["sampler"], "steps": r["steps"],
             "|log var/c|": f"{r['median_abs_log_ratio']:.3f}",
             "masked E": None if r["masked_energy"] is None else f"{r['masked_energy']:.1e}",
             "s": f"{r['seconds']:.1f}"} for r in rows]


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("size", 32, "Image side, pixels (>= 4).", flag_values=fv)
    flags.DEFINE_integer("num", 512, "Samples per sampler (>= 2).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the rows to this new JSON file.",
                        flag_values=fv)


def demo(fv: flags.FlagValues) -> None:
    size = validate.integer("--size", fv.size, 4)
    num = validate.integer("--num", fv.num, 2)
    files.refuse_existing("--json", fv.json)
    print(f"Exact Gaussian model, {size}x{size}, {num} samples per sampler, "
          f"VP SDE schedule, on {jax.devices()[0].platform}")
    rows = measure(size, num, fv.seed)
    print(console.table(display_rows(rows)))
    print(f"(median over frequencies of |log(sample variance / c)|; Monte-Carlo floor about "
          f"{np.sqrt(1 / num) * 0.67:.3f} for {num} samples)")
    if fv.json is not None:
        files.write_new_json("--json", fv.json, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, demo, argv)


def run() -> None:
    """Console-script entry point (``sagd-demo``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
