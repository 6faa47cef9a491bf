"""Train or resume a run: ``python -m sagd_jax.main --config=configs/NAME.py --workdir=DIR``
(``--config=NAME``: the built-in config of that name, from any directory).

Config values are overridden on the command line (``--config.noise.gamma=2``); a variant is
chosen with ``--config=configs/NAME.py:VARIANT``. On a workdir that already has checkpoints the
run resumes from the latest one, under the same identity keys as its ``config.json`` (a change
of seed, batch size, optimizer or data stream is refused in one line unless
``--allow_config_change``, which records it in ``config_changes.jsonl``). Exit statuses:
0 finished; 2 bad input (an unknown key, a bad value, a workdir of another run or in use by
another trainer, a batch that does not fit in device memory: one line, nothing written);
3 a non-finite loss (``train.nonfinite=stop``); 1 a failure outside the input (a full disk, a
failed checkpoint save: one line; earlier checkpoints intact); 75 stopped by SIGTERM, SIGHUP or
Ctrl-C after checkpointing the current step (run the same command to resume); 130 a second
Ctrl-C (stopped at once). ``--verbosity=0`` shows
the libraries' INFO logs too. Multi-process: ``--coordinator_address``,
``--num_processes``, ``--process_id`` (see ``sagd_jax.distributed``); launch scripts for SLURM
and TPU pods are in ``launch/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv, help_text="Training config: a file (configs/*.py[:variant]) or a "
                      "built-in name (quickstart, cifar10_ddpmpp:cpu, ...).")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and metrics.",
                        flag_values=fv, required=True)
    flags.DEFINE_boolean("allow_config_change", False, "Resume a run under a config whose "
                         "identity keys (seed, batch size, optimizer, data stream) differ from "
                         "its config.json: the change is recorded in config_changes.jsonl and "
                         "config.json takes the new values (docs/training.md).", flag_values=fv)
    cli.define_distributed(fv)


def train(fv: flags.FlagValues) -> int:
    """Exit status 0 when the run reached ``train.num_steps``, ``cli.STOPPED`` when a signal
    stopped it after a checkpoint (run the same command to resume)."""
    import jax

    from sagd_jax.config import allowing_config_change, normalize
    from sagd_jax.train.loop import train_and_evaluate  # after flag parsing: fast --help
    from sagd_jax.train_subprocess import die_with_parent

    die_with_parent()  # started by a sweep or an experiment: stops when its caller dies
    cli.initialize_distributed(fv)
    with allowing_config_change(fv.allow_config_change):
        state = train_and_evaluate(fv.config, fv.workdir)
    num_steps = normalize(fv.config).train.num_steps
    return 0 if int(jax.device_get(state.step)) >= num_steps else cli.STOPPED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, train, argv)


def run() -> None:
    """Console-script entry point (``sagd-train``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
