"""Train or resume a run: ``python -m sagd_jax.main --config=configs/NAME.py --workdir=DIR``.

Config values are overridden on the command line (``--config.noise.gamma=2``); a variant is
chosen with ``--config=configs/NAME.py:VARIANT``. On a workdir that already has checkpoints the
run resumes from the latest one. Bad input stops with a one-line error and exit status 2.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from sagd_jax.train.loop import train_and_evaluate  # after flag parsing: fast --help

    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except ValueError as err:
        logging.flush()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point (``sagd-train``)."""
    app.run(main)


if __name__ == "__main__":
    run()
