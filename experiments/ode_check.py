"""Is the probability-flow ODE solved accurately on a trained model, and where do its samples go?

    python experiments/ode_check.py \\
        --workdir=workdirs/experiments/omission/iso-clean --out=experiments/results/ode_check

Draws ``--num_samples`` images from one run's EMA model with the same seed under DDPM (``S``
steps), DDIM with eta = 0 (``S`` steps: first order in the ODE's exponential form), Heun
(``S/2`` steps, about ``S`` network evaluations) and Heun with ``2 S`` steps (the reference
solve). The three ODE solvers share the prior draw, so their distances to the reference measure
the discretisation error alone; the pixel statistics against the training data's show where
the learned flow itself takes the samples. Writes ``ode_check.json`` (per sampler: pixel std,
fraction of pixels outside [-1, 1], RMS and max distance to the reference solve) and
``ode_check.png`` (the grids side by side) to ``--out``. The samples stay beside the run, in
``<workdir>/generated/ode_check/<sampler><steps>/`` (resumable chunks, as ``sagd_jax.sample``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # ``python experiments/ode_check.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import flags

from sagd_jax import cli, files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixel_stats(images: np.ndarray) -> dict[str, float]:
    """Pixel std and the fraction of pixels outside the data range [-1, 1]."""
    x = np.asarray(images, np.float64)
    return {"pixel_std": float(x.std()), "frac_outside": float(np.mean(np.abs(x) > 1.0)),
            "max_abs": float(np.abs(x).max())}


def distance(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """RMS and max per-pixel distance between two sample sets drawn from the same prior."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return {"rms_to_reference": float(np.sqrt(np.mean(d**2))),
            "max_to_reference": float(np.abs(d).max())}


def check(workdir: str, out: str, num_samples: int, steps: int, seed: int) -> dict[str, Any]:
    from experiments.report import side_by_side
    from sagd_jax.data import get_source, load_batch
    from sagd_jax.images import save_grid
    from sagd_jax.sampling import SampleRequest, generate
    from sagd_jax.workdir import Workdir

    run_dir = Workdir(workdir)
    config = run_dir.saved_config()  # a one-line error if this is not a training workdir
    plan = [("ddpm", steps), ("ddim", steps), ("ode_heun", steps // 2), ("ode_heun", 2 * steps)]
    samples, folders = {}, {}
    for sampler, n_steps in plan:
        name = f"{sampler}{n_steps}"
        request = SampleRequest(num_samples=num_samples, sampler=sampler, steps=n_steps,
                                seed=seed, chunk_size=min(num_samples, 250),
                                eta=0.0 if sampler == "ddim" else None, float32=True)
        folders[name] = run_dir.generated(os.path.join("ode_check", name))
        with np.load(generate(workdir, request, out_dir=folders[name])) as f:
            samples[name] = f["float32"]
    reference = samples[f"ode_heun{2 * steps}"]
    data = load_batch(get_source(config.data), config.data, seed=0, step=0,
                      global_batch_size=num_samples)
    result: dict[str, Any] = {"workdir": os.path.relpath(workdir, REPO), "seed": seed,
                              "num_samples": num_samples, "data": pixel_stats(data)}
    grids, labels = [], []
    for name, images in samples.items():
        result[name] = pixel_stats(images)
        if not name.startswith("ddpm"):  # the ODE solves share the reference's prior draw
            result[name] |= distance(images, reference)
        grid = os.path.join(folders[name], "grid64.png")
        save_grid(images[:64], grid)
        grids.append(grid)
        labels.append(name)
    files.write_json(os.path.join(out, "ode_check.json"), result)
    side_by_side(grids, labels, os.path.join(out, "ode_check.png"))
    return result


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "A trained run (sagd_jax.main).", flag_values=fv,
                        required=True)
    flags.DEFINE_string("out", None, "Folder for the JSON and the figure.", flag_values=fv,
                        required=True)
    flags.DEFINE_integer("num_samples", 64, "Images per sampler.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("steps", 100, "S: DDPM and DDIM steps (even: Heun takes S/2).",
                         lower_bound=2, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sampling seed (the same prior draw for every solver).",
                         lower_bound=0, flag_values=fv)


def body(fv: flags.FlagValues) -> None:
    if fv.steps % 2:
        raise ValueError(f"--steps={fv.steps}: must be an even number >= 2 (Heun takes S/2)")
    result = check(fv.workdir, fv.out, fv.num_samples, fv.steps, fv.seed)
    for name, row in result.items():
        if isinstance(row, dict):
            print(name, " ".join(f"{k}={v:.4g}" for k, v in row.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, body, argv)


if __name__ == "__main__":
    sys.exit(main())
