"""Inception reference statistics of a dataset's split, computed once and cached.

    python -m sagd_jax.fid_reference --config=configs/cifar10_ddpmpp.py [--split=train] \\
        [--max_images=50000] [--inception_weights=PATH] [--config.KEY=VALUE ...]

prints the path of the reference: ``<cache>/inception_reference/NAME.npz`` by default
(``sagd_jax.metrics.fid`` says what it holds and how ``NAME`` is made), or ``--out``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv)
    flags.DEFINE_string("split", "train", "The data split (FID's convention: the training "
                        "set, as the published CIFAR-10 / FFHQ references).", flag_values=fv)
    flags.DEFINE_integer("max_images", 50_000, "At most this many images.", flag_values=fv)
    flags.DEFINE_string("inception_weights", None, "pt_inception-2015-12-05-6726825d.pth "
                        "(default: $SAGD_JAX_INCEPTION, else the cache, else a download).",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "Write the reference here instead of the cache (never "
                        "overwritten).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 100, "Images per Inception batch.", flag_values=fv)


def reference_cli(fv: flags.FlagValues) -> None:
    from sagd_jax import validate
    from sagd_jax.config import normalize
    from sagd_jax.metrics.fid import compute_reference
    from sagd_jax.metrics.inception import InceptionFeatures, weights_path

    validate.integer("--max_images", fv.max_images, 2)
    validate.integer("--batch_size", fv.batch_size, 1)
    config = normalize(fv.config)
    weights = weights_path(fv.inception_weights)  # before any work: a missing file is 1 line
    extractor = InceptionFeatures.from_file(weights, batch_size=fv.batch_size)
    _, path = compute_reference(config.data, extractor, fv.split, fv.max_images, fv.out)
    print(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the reference-statistics CLI on ``argv``; returns the exit status."""
    return cli.run(__doc__, define_flags, reference_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-fid-reference``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
