"""Train or resume a run: ``python -m sagd_jax.main --config=configs/NAME.py --workdir=DIR``.

Config values are overridden on the command line (``--config.noise.gamma=2``); a variant is
chosen with ``--config=configs/NAME.py:VARIANT``. On a workdir that already has checkpoints the
run resumes from the latest one. Bad input stops with a one-line error and exit status 2; a
non-finite loss (``train.nonfinite=stop``) with a one-line error and exit status 3.
Multi-process: ``--coordinator_address``, ``--num_processes``, ``--process_id`` (see
``sagd_jax.distributed``); launch scripts for SLURM and TPU pods are in ``launch/``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and metrics.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs: host:port of process 0 (else $SAGD_COORDINATOR_ADDRESS, "
                    "else auto-detected on TPU pods and SLURM).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: total number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from sagd_jax import distributed  # after flag parsing: fast --help
    from sagd_jax.train.loop import train_and_evaluate

    FLAGS = flags.FLAGS
    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except ValueError as err:
        _fail(err, 2)
    except FloatingPointError as err:
        _fail(err, 3)


def _fail(err: Exception, status: int) -> None:
    logging.flush()
    print(f"error: {err}", file=sys.stderr)
    sys.exit(status)


def run() -> None:
    """Console-script entry point (``sagd-train``)."""
    app.run(main)


if __name__ == "__main__":
    run()
