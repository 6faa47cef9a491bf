"""Negative log-likelihood of a run's held-out images through the probability-flow ODE.

    python -m sagd_jax.likelihood --workdir=DIR [--model=ema|exact] [--num_images=256] \\
        [--ode_steps=100] [--trace=hutchinson|exact] [--probes=1] [--seed=0] [--out=FILE] \\
        [--params=ema|posthoc:STD]

The negative log-likelihood of the run's reference images (the clean test split for
Fashion-MNIST and TFDS data, the run's own source otherwise; at most ``--num_images``) through
the probability-flow ODE (``sagd_jax.log_density``: RK4 on the logsnr grid, exact trace or
Hutchinson probes), under the EMA weights of the latest checkpoint (``--params=posthoc:STD``:
the post-hoc EMA of that relative std, ``sagd_jax.posthoc_ema``) or, for grf data, the exact
model (``--model=exact``).
8-bit data is uniformly dequantised (key from ``--seed``) and reported in bits per dimension of
its levels; grf data (continuous) in bits per dimension of its density (``nats / ln 2``); every
result has its standard error over images. With masked bands the images are projected
onto the support of ``Sigma`` and the density (and the dimension count) is the support's.
Written to ``--out`` (default ``DIR/likelihood/<model>-<steps>steps-<trace>-seed<K>.json``,
never overwritten).

Prints nats and bits per dimension as JSON. Bad input (a missing run, a bad flag, an existing
``--out``) stops with a one-line error and exit status 2, nothing written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "The training run (--workdir of python -m "
                        "sagd_jax.main).", flag_values=fv, required=True)
    flags.DEFINE_enum("model", "ema", ["ema", "exact"], "EMA network, or the exact Gaussian "
                      "model of grf data.", flag_values=fv)
    flags.DEFINE_integer("num_images", 256, "At most this many images.", flag_values=fv)
    flags.DEFINE_integer("ode_steps", 100, "RK4 steps (4 evaluations each).", flag_values=fv)
    flags.DEFINE_enum("trace", "hutchinson", ["hutchinson", "exact"], "Divergence estimator "
                      "(exact: one JVP per pixel dimension).", flag_values=fv)
    flags.DEFINE_integer("probes", 1, "Hutchinson probes per image.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Dequantisation and probe seed.", flag_values=fv)
    flags.DEFINE_string("params", "ema", "The network's weights: ema | posthoc:STD (the "
                        "post-hoc EMA of relative std STD at the last snapshot).", flag_values=fv)
    flags.DEFINE_string("out", None, "JSON file (default DIR/likelihood/<model>-<steps>steps-"
                        "<trace>-seed<K>.json; never overwritten).", flag_values=fv)


def likelihood_cli(fv: flags.FlagValues) -> None:
    from sagd_jax.evaluation import likelihood  # after flag parsing: a fast --help

    results = likelihood(fv.workdir, fv.model, fv.num_images, fv.ode_steps, fv.trace,
                         fv.probes, fv.seed, fv.out, params=fv.params)
    print(json.dumps({k: results[k] for k in ("nats_per_dim", "bits_per_dim")}, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the likelihood CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, likelihood_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-likelihood``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
