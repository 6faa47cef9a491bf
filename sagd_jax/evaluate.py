"""Judge generated images against the data of their run; writes one JSON file (and plots).

    python -m sagd_jax.evaluate --samples=DIR/generated/NAME/samples.npz \\
        [--band=bandpass:0.45:0.6] [--filter_band=bandstop:0.45:0.6] [--out=FILE.json] \\
        [--max_reference=10000] [--num_subsets=100] [--subset_size=1000] [--model_units] \\
        [--inception=auto|on|off] [--inception_weights=PATH] [--reference_stats=FILE.npz] \\
        [--reference_split=SPLIT] [--inception_reference_images=50000]

The run (its data config) is found from the samples' ``manifest.json``. Reference images: the
``test`` split for Fashion-MNIST and TFDS data, the run's own source otherwise, always without
the run's training corruption (clean data); at most ``--max_reference`` images.

Metrics (those that apply):
* ``spectrum``: radially averaged power spectra of samples and reference, the per-bin
  ``|log ratio|`` and its mean (``spectrum.png``);
* ``fd``, ``kid`` (``mean``, ``std``, ``sem``): Frechet and kernel distances in the features of
  the in-project Fashion-MNIST classifier, for 28x28x1 data (trained on first use, cached);
  ``kid_blocks`` (``mean``, ``sem``): KID over 10 disjoint sample/reference blocks, whose
  ``sem`` includes the sampling noise of the generated set;
  ``--filter_band`` removes a band from both sets before the features, and adds
  ``spectrum_off_band``: the spectrum error over the frequencies outside that band;
* ``fid``/``kid``/``inception_score`` under ``inception``: FID, KID and IS in the FID
  Inception-v3's features (``sagd_jax.metrics.inception``), any RGB or grayscale images,
  against the Inception reference of the run's data (``--reference_split``, default the
  training split as in the literature; computed once and cached, ``sagd_jax.metrics.fid``) or
  published statistics (``--reference_stats``: pytorch-fid's or EDM's ``.npz``; FID only).
  ``--inception=on`` needs the weights (``--inception_weights``, ``$SAGD_JAX_INCEPTION``, the
  cache or a download); ``auto`` (default) is ``on`` for RGB and 32x32+ images and skips them
  with a note where they are missing for 28x28x1 data (whose classifier features remain);
  ``off`` skips them; never for grf data;
* ``band_energy_ratio``: energy of samples inside ``--band`` relative to the reference's;
* ``grf_variance``: for ``grf`` data, per-frequency variance of the samples against the exact
  spectrum (``mean_abs_log_ratio`` and the Monte-Carlo floor; ``grf_variance.png``).

Images: the ``float32`` member (model units) of ``sagd_jax.sample``'s ``samples.npz``, else
``arr_0``, which must be uint8 pixels (the FID tools' layout), or float images in model units
([-1, 1]) with ``--model_units``.

Prints the headline numbers as JSON; progress goes to stderr. Bad input (a missing, damaged or
empty file, float ``arr_0`` without ``--model_units``, a bad band, an existing ``--out``) stops
with a one-line error naming the file or flag and exit status 2, before any work, nothing
written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli
from sagd_jax.evaluation import InceptionRequest, evaluate, summary


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("samples", None, "samples.npz of python -m sagd_jax.sample.",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "JSON file (default evaluation.json beside the samples; "
                        "never overwritten).", flag_values=fv)
    flags.DEFINE_string("band", None, "A band (kind:lo:hi[:edge]) whose energy to compare.",
                        flag_values=fv)
    flags.DEFINE_string("filter_band", None, "Remove this band from samples and reference "
                        "before FD/KID.", flag_values=fv)
    flags.DEFINE_integer("max_reference", 10_000, "At most this many reference images.",
                         flag_values=fv)
    flags.DEFINE_integer("num_subsets", 100, "KID subsets.", flag_values=fv)
    flags.DEFINE_integer("subset_size", 1000, "KID subset size.", flag_values=fv)
    flags.DEFINE_enum("inception", "auto", ["auto", "on", "off"], "FID/KID/IS in the FID "
                      "Inception-v3's features: on, off, or auto (on; skipped for grf data and, "
                      "when the weights are missing, for 28x28x1 data).", flag_values=fv)
    flags.DEFINE_string("inception_weights", None, "pt_inception-2015-12-05-6726825d.pth "
                        "(default: $SAGD_JAX_INCEPTION, else the cache, else a download).",
                        flag_values=fv)
    flags.DEFINE_string("reference_stats", None, "Published Inception statistics (.npz with "
                        "mu, sigma: pytorch-fid's or EDM's) instead of the run's data.",
                        flag_values=fv)
    flags.DEFINE_string("reference_split", None, "Data split of the Inception reference "
                        "(default: the run's training split).", flag_values=fv)
    flags.DEFINE_integer("inception_reference_images", 50_000, "At most this many reference "
                         "images for the Inception statistics.", flag_values=fv)
    flags.DEFINE_boolean("model_units", False, "arr_0 holds float images in model units, "
                         "[-1, 1] (default: arr_0 must be uint8 pixels).", flag_values=fv)


def evaluate_cli(fv: flags.FlagValues) -> None:
    if fv.samples is None:
        raise ValueError("--samples: required (likelihood: python -m sagd_jax.likelihood)")
    inception = InceptionRequest(fv.inception, fv.inception_weights, fv.reference_stats,
                                 fv.reference_split, fv.inception_reference_images)
    results = evaluate(fv.samples, fv.out, fv.band, fv.filter_band, fv.max_reference,
                       fv.num_subsets, fv.subset_size, model_units=fv.model_units,
                       inception=inception)
    print(json.dumps(summary(results), indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, evaluate_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-evaluate``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
