"""Post-hoc EMA: the EMA of any relative std, reconstructed after training (EDM2's recipe).

    python -m sagd_jax.posthoc_ema --workdir=DIR --std=0.07[,0.1,...] [--step=N]
    python -m sagd_jax.posthoc_ema --workdir=DIR --std=0.03,0.05,0.07,0.1,0.15 \\
        --num_samples=N [--sampler=ddpm --steps=S --seed=K] [--classifier=auto|on|off]

A run that kept post-hoc EMA profiles (``--config.ema.snapshot_every=N``; the profiles of
``ema.posthoc_stds``, in ``DIR/ema_snapshots/``) can be averaged after training with any
relative std the profiles reconstruct: each ``--std`` is solved by least squares over the
snapshots up to ``--step`` (default the last one), combined, and kept, verified like a
checkpoint, in ``DIR/posthoc_ema/std<STD>/<step>/``; ``python -m sagd_jax.sample
--params=posthoc:STD`` and the sweep below use it. Prints, per std, the snapshots used and the
relative error of the reconstructed profile.

With ``--num_samples``: a sweep. Every std gets a sample set (``sagd_jax.sample
--params=posthoc:STD`` with these sampler flags, resumable) judged by ``sagd_jax.evaluate``
(classifier FD/KID for Fashion-MNIST, Inception FID/KID where it applies, spectrum error); the
table is printed and written to ``DIR/posthoc_ema/sweep-<sampler>-<steps>steps-seed<K>-
n<N>-step<STEP>.json``. A rerun reuses the sets and results.

Bad input (a workdir without snapshots, a std its profiles cannot reconstruct, a step before
the first snapshot or after the last): one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "The training run (--workdir of python -m "
                        "sagd_jax.main), trained with ema.snapshot_every > 0.", flag_values=fv,
                        required=True)
    flags.DEFINE_list("std", None, "Relative stds of the EMAs to reconstruct (EDM2's "
                      "sigma_rel), e.g. 0.05,0.07,0.1.", flag_values=fv, required=True)
    flags.DEFINE_integer("step", None, "The training step the EMA ends at: a step up to the "
                         "last snapshot (default: the last snapshot).", flag_values=fv)
    flags.DEFINE_integer("num_samples", None, "Sweep: sample and judge this many images per "
                         "std.", flag_values=fv)
    flags.DEFINE_string("sampler", "ddpm", "Sweep: the sampler.", flag_values=fv)
    flags.DEFINE_integer("steps", 250, "Sweep: sampler iterations.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sweep: sampling seed.", flag_values=fv)
    flags.DEFINE_integer("chunk_size", 256, "Sweep: images per chunk.", flag_values=fv)
    flags.DEFINE_enum("classifier", "auto", ["auto", "on", "off"], "Sweep: FD/KID in the "
                      "Fashion-MNIST classifier's features (as sagd_jax.evaluate).",
                      flag_values=fv)
    flags.DEFINE_enum("inception", "auto", ["auto", "on", "off"], "Sweep: Inception FID/KID "
                      "(as sagd_jax.evaluate).", flag_values=fv)


def posthoc_cli(fv: flags.FlagValues) -> None:
    from sagd_jax import posthoc_sweep  # after flag parsing: a fast --help

    stds = posthoc_sweep.parse_stds(fv.std)
    if fv.num_samples is None:
        for line in posthoc_sweep.reconstruct_all(fv.workdir, stds, fv.step):
            print(json.dumps(line))
        return
    table = posthoc_sweep.sweep(fv.workdir, stds, fv.step, num_samples=fv.num_samples,
                                sampler=fv.sampler, steps=fv.steps, seed=fv.seed,
                                chunk_size=fv.chunk_size, classifier=fv.classifier,
                                inception=fv.inception)
    print(posthoc_sweep.format_table(table["rows"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the post-hoc EMA CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, posthoc_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-posthoc-ema``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
