"""Judge a sample set against data; writes one JSON file (and plots), prints the headline.

    python -m sagd_jax.evaluate --samples=SET[,SET2,...] [--fid_sets=K]
        [--config=configs/NAME.py | --reference_stats=F]
        [--classifier=auto|on|off] [--inception=auto|on|off] [--out=FILE.json] [--overwrite]
        [--band=bandpass:0.45:0.6] [--filter_band=bandstop:0.45:0.6] [--max_reference=10000]
        [--num_subsets=100] [--subset_size=1000] [--model_units] [--inception_weights=PATH]
        [--reference_split=SPLIT] [--inception_reference_images=50000]

``SET``: ``sagd_jax.sample``'s ``samples.npz``; any ``.npz`` with ``arr_0`` uint8 ``(N, H, W,
C)`` (ADM's and EDM's layout; optional ``arr_1`` labels); a folder of PNG / JPEG files; a
``.zip`` of them (``sagd_jax.sample_files``). The data judged against: ``--config`` (its
``data`` section), else the run named by the ``manifest.json`` beside a ``samples.npz``, else
only ``--reference_stats`` (Inception FID and IS). Reference images: the ``test`` split for
Fashion-MNIST and TFDS data, the data's own source otherwise, always without the training
corruption (clean data); at most ``--max_reference`` images.

Metrics (those that apply):
* ``spectrum``: radially averaged power spectra of samples and reference, the per-bin
  ``|log ratio|`` and its mean (``<out>_spectrum.png``);
* ``fd``, ``kid`` (``mean``, ``std``, ``sem``): Frechet and kernel distances in the features of
  the in-project Fashion-MNIST classifier, for 28x28x1 data. ``--classifier=auto`` (default)
  uses it when the cache holds it and otherwise says how to get it; ``on`` trains it once if
  needed (5 to 10 minutes on 2 CPU cores, announced first); ``off``.
  ``kid_blocks`` (``mean``, ``sem``): KID over 10 disjoint sample/reference blocks, whose
  ``sem`` includes the sampling noise of the generated set;
  ``--filter_band`` removes a band from both sets before the features, and adds
  ``spectrum_off_band``: the spectrum error over the frequencies outside that band;
* ``class_accuracy``: for a set with labels (``arr_1``: class-conditional samples) that the
  classifier judges, the fraction of samples it puts in the class of their own label (of the
  samples as they are, never band-filtered), and ``class_accuracy_per_class``: that fraction
  for each label 0..9 (null for a label no sample has). The classifier's accuracy on the
  real test images, ``classifier_test_accuracy``, is the ceiling; chance, about 0.1;
* ``fid``/``kid``/``inception_score`` under ``inception``: FID, KID and IS in the FID
  Inception-v3's features (``sagd_jax.metrics.inception``), any RGB or grayscale images,
  against the Inception reference of the data (``--reference_split``, default the training
  split as in the literature; computed once and cached, ``sagd_jax.metrics.fid``) or
  published statistics (``--reference_stats``: pytorch-fid's or EDM's ``.npz``; FID only).
  ``--inception=on`` needs the weights (``--inception_weights``, ``$SAGD_JAX_INCEPTION``, the
  cache or a download); ``auto`` (default) is ``on`` for RGB and 32x32+ images and skips them
  with a note where they are missing for 28x28x1 data (whose classifier features remain);
  ``off`` skips them; never for grf data;
* ``band_energy_ratio``: energy of samples inside ``--band`` relative to the reference's;
* ``grf_variance``: for ``grf`` data, per-frequency variance of the samples against the exact
  spectrum (``mean_abs_log_ratio`` and the Monte-Carlo floor; ``<out>_grf_variance.png``).

Images of an ``.npz``: its ``float32`` member (model units) when present, else ``arr_0``, which
must be uint8 pixels, or float images in model units ([-1, 1]) with ``--model_units``.

Results: ``--out``, default ``evaluation.json`` beside a ``samples.npz`` with its manifest,
else ``<SET>.evaluation.json`` beside the set; its path is printed on stderr. Run again, it prints
the stored results (exit 0); ``--overwrite`` computes them again and keeps the old file as
``<out>.previous``; a set grown since is refused unless ``--overwrite``. The headline numbers
go to stdout as JSON, progress to stderr. Bad input (a missing, damaged or empty file, a file
of a folder that does not decode, images of several sizes, float ``arr_0`` without
``--model_units``, a bad band, labels outside the classifier's classes 0..9 when it judges
the set) stops with a one-line error naming the file or flag and exit status 2, before any
work, nothing written.

Several sets, FID as papers report it (the mean or minimum over sets of different seeds: one
number cannot be compared): ``--samples=A,B,C`` names them, or ``--samples=SET --fid_sets=K``
takes the seed-s set ``SET`` of ``python -m sagd_jax.sample --sets=K`` and the K-1 sets of seeds
s+1 .. s+K-1 it made beside it. Each set is judged as above (its own ``evaluation.json``, reused
when there); then ``fid_sets_<K>.json`` beside the first set's results (``--out`` to choose)
holds, for every scalar headline (classifier ``fd``, ``kid``, ``kid_blocks``, class accuracy,
spectrum errors, ``inception_fid``, ``inception_kid``, ``inception_score``, ...), the mean, the
standard deviation (ddof=1), min, max and the values set by set, with the seeds; printed as
JSON. Run again, it prints the stored summary; ``--overwrite`` judges every set again. Refused
in one line (exit 2, nothing written) before any set is judged: K < 1, a missing set, sets of
other image shapes or sizes, sets made with other settings than the first's (but the seed) or
with the same seed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli
from sagd_jax.evaluation import (
    InceptionRequest,
    evaluate,
    evaluate_sets,
    sets_headline,
    split_sets,
    summary,
)


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("samples", None, "The set: an .npz (arr_0 uint8 NHWC, or "
                        "sagd_jax.sample's samples.npz), a folder of PNG/JPEG files or a .zip "
                        "of them; A,B,C: several sets of one model (a summary over them).",
                        flag_values=fv)
    flags.DEFINE_integer("fid_sets", None, "Judge K sets and summarise them (mean, std with "
                         "ddof=1, min per metric): --samples's seed-s set of sagd_jax.sample "
                         "--sets and its siblings of seeds s+1..s+K-1 (or the K sets "
                         "--samples names).", flag_values=fv)
    cli.define_config(fv, required=False, help_text="The data to judge against: a config "
                      "(configs/NAME.py[:variant] or a built-in name); default: the run in "
                      "the set's manifest.json.")
    flags.DEFINE_string("out", None, "JSON file (default evaluation.json beside a samples.npz "
                        "with its manifest, else SET.evaluation.json; several sets: their "
                        "summary, default fid_sets_<K>.json beside the first's).", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "Compute the results again when --out exists "
                         "(the old file kept as <out>.previous).", flag_values=fv)
    flags.DEFINE_enum("classifier", "auto", ["auto", "on", "off"], "FD/KID in the "
                      "Fashion-MNIST classifier's features (28x28x1 data), and its accuracy under "
                      "the set's labels (arr_1) when it has them: auto (when cached), "
                      "on (trained once if needed, 5-10 min on 2 CPU cores), off.",
                      flag_values=fv)
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
    if fv.fid_sets is not None or len(split_sets(fv.samples)) > 1:
        summary_ = evaluate_sets(
            fv.samples, fv.fid_sets, fv.out, band=fv.band, filter_band=fv.filter_band,
            max_reference=fv.max_reference, num_subsets=fv.num_subsets,
            subset_size=fv.subset_size, classifier=fv.classifier, model_units=fv.model_units,
            inception=inception, config=fv.config, overwrite=fv.overwrite)
        print(json.dumps(sets_headline(summary_), indent=2))
        return
    results = evaluate(fv.samples, fv.out, fv.band, fv.filter_band, fv.max_reference,
                       fv.num_subsets, fv.subset_size, fv.classifier,
                       model_units=fv.model_units, inception=inception, config=fv.config,
                       overwrite=fv.overwrite)
    print(json.dumps(summary(results), indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, evaluate_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-evaluate``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
