"""Where does a sampler's trajectory leave the forward marginal? Per frequency, step by step.

    python experiments/drift_check.py \\
        --workdir=workdirs/experiments/fitted_patches/fit-powerlaw-seed0 --out=/tmp/drift

Runs each of ``--samplers`` (``--steps`` iterations on the uniform grid, ``--num_samples``
images, seed ``--seed``) on one run's EMA model (``--model=exact``: a ``grf`` run's exact
Gaussian model) with ``record_power``, and compares every iterate's power with the forward
marginal's at the same time, ``A_t^2 c + S_t^2`` per frequency bin, ``c`` the training data's
power per bin (``Run.power_spectrum``). Both are radially averaged (16 bins of rho); the
ratio is 1 for a trajectory that stays on the marginal. Beside it, the same ratio for a
perfect model of the data's Gaussian part (the stationary Gaussian with power ``c``), exact
from ``sampler_output_spectrum(trajectory=True)``: the sampler's own discretisation drift,
against which the network's is read. Writes ``drift_check.json`` (per sampler: the grid
times and both ratios at every ``--every``-th iterate and the last) to ``--out``, and prints
the largest ``|log ratio|`` over the radial bins at each of those times. An existing report
in ``--out`` is refused before anything runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # ``python experiments/drift_check.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import flags

from sagd_jax import cli, console, files

REPORT = "drift_check.json"  # written once in --out, never overwritten


def radial_ratio(power: np.ndarray, reference: np.ndarray, width: int) -> np.ndarray:
    """Radially averaged ``power`` over radially averaged ``reference`` (bins ``(H, W//2+1)``
    in the last two axes; leading axes kept): ``(..., 16)``, NaN where a radial bin is empty
    or the reference has no power."""
    from sagd_jax.metrics.spectra import radial_average

    flat_p = np.reshape(power, (-1, *power.shape[-2:]))
    flat_r = np.reshape(np.broadcast_to(reference, power.shape), flat_p.shape)
    rows = []
    for p, r in zip(flat_p, flat_r, strict=True):
        _, num = radial_average(p, width)
        _, den = radial_average(r, width)
        with np.errstate(invalid="ignore", divide="ignore"):
            rows.append(np.where(den > 0, num / den, np.nan))
    return np.reshape(np.stack(rows), (*power.shape[:-2], -1))


def check(workdir: str, out: str, samplers: Sequence[str], steps: int, num_samples: int,
          seed: int, every: int, model: str) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from benchmarks.common import default_mesh
    from sagd_jax.gaussian import sampler_output_spectrum
    from sagd_jax.run import Run
    from sagd_jax.samplers import get_sampler
    from sagd_jax.schedules import time_grid

    for name in samplers:
        get_sampler(name)  # a one-line error for an unknown name, before anything runs
    run = Run.from_workdir(workdir)
    process = run.process
    if model == "exact":
        eps_fn = run.exact_model().eps_fn(process)
    else:
        eps_fn = run.eps_fn(run.restore(default_mesh()).ema_params)
    height, width, channels = run.image_shape
    gaussian = run.data_gaussian()
    times = np.asarray(time_grid(process.schedule, steps), np.float64)
    marginal = np.asarray(gaussian.marginal_spectrum(
        process, jnp.asarray(times[1:], jnp.float32)), np.float64)
    keep = sorted({*range(every - 1, steps - 1, every), steps - 2})
    result: dict[str, Any] = {"workdir": workdir, "model": model, "steps": steps,
                              "num_samples": num_samples, "seed": seed,
                              "times": times[1:][keep].tolist(), "samplers": {}}
    for name in samplers:
        _, power = get_sampler(name)(process, eps_fn, jax.random.key(seed),
                                     (num_samples, height, width, channels), steps,
                                     record_power=True)
        _, exact = sampler_output_spectrum(process, gaussian, name, steps, trajectory=True)
        measured = radial_ratio(np.asarray(power, np.float64)[keep], marginal[keep], width)
        predicted = radial_ratio(exact[keep], marginal[keep], width)
        result["samplers"][name] = {"ratio": measured.tolist(), "gaussian_ratio":
                                    predicted.tolist()}
        rows = [{"sampler": name, "t": t, "max_abs_log_ratio": _worst(m),
                 "gaussian_max_abs_log_ratio": _worst(g)}
                for t, m, g in zip(result["times"], measured, predicted, strict=True)]
        print(console.table(rows, ["sampler", "t", "max_abs_log_ratio",
                                   "gaussian_max_abs_log_ratio"]), flush=True)
    files.write_new_json("--out", os.path.join(out, REPORT), result)
    return result


def _worst(ratios: np.ndarray) -> float:
    ok = np.isfinite(ratios) & (ratios > 0)
    return float(np.abs(np.log(ratios[ok])).max())


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "A trained run (sagd_jax.main).", flag_values=fv,
                        required=True)
    flags.DEFINE_string("out", None, "Folder for drift_check.json.", flag_values=fv,
                        required=True)
    flags.DEFINE_list("samplers", ["ddpm", "ddim", "ode_heun"], "Samplers to trace.",
                      flag_values=fv)
    flags.DEFINE_integer("steps", 100, "Sampler iterations (uniform grid).", lower_bound=2,
                         flag_values=fv)
    flags.DEFINE_integer("num_samples", 64, "Images per sampler.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sampling seed.", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("every", 10, "Report every N-th iterate (and the last).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("model", "ema", ["ema", "exact"], "The run's EMA network, or a grf "
                      "run's exact Gaussian model.", flag_values=fv)


def body(fv: flags.FlagValues) -> None:
    files.refuse_existing("--out", os.path.join(fv.out, REPORT))  # before anything runs
    check(fv.workdir, fv.out, fv.samplers, fv.steps, fv.num_samples, fv.seed, fv.every,
          fv.model)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, body, argv)


if __name__ == "__main__":
    sys.exit(main())
