"""Train (or find cached) the Fashion-MNIST classifier whose features give FD and KID.

    python -m sagd_jax.train_classifier            # trains if absent, prints test accuracy

The recipe is fixed (``sagd_jax.metrics.classifier.Recipe``); the weights and a JSON sidecar
with the test accuracy go to ``<cache>/classifier/`` (``$SAGD_JAX_CACHE``, else
``$XDG_CACHE_HOME/sagd-jax``, else ``~/.cache/sagd-jax``), written once, never overwritten.
Training progress goes to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli


def define_flags(fv: flags.FlagValues) -> None:
    """No flags of its own (``--verbosity`` only): the recipe is fixed."""


def train_cli(fv: flags.FlagValues) -> None:
    from sagd_jax.metrics.classifier import load_or_train  # after flag parsing: a fast --help

    extractor = load_or_train()
    print(f"{extractor.recipe.name}: test accuracy {extractor.test_accuracy:.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the classifier CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, train_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-classifier``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
