"""Parameter count and forward FLOPs per image (XLA cost analysis) of a config's network.

    python benchmarks/model_cost.py --config=configs/cifar10_ddpmpp.py:cpu [--json=FILE]

Shapes only: the parameters are never allocated (``jax.eval_shape``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common


def define_flags(fv: flags.FlagValues) -> None:
    pass  # the shared --config and --json only


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    import jax

    from sagd_jax.models import count_params, flops_per_image
    from sagd_jax.run import Run
    from sagd_jax.train_state import init_params

    run = Run.from_config(fv.config, load_data=False, device_count=1)
    shape = run.image_shape  # a latent run's: its network acts on the latent grid
    params_tree = jax.eval_shape(lambda: init_params(run.model, jax.random.key(0), shape))
    variables = {"params": params_tree}
    params = count_params(params_tree)
    flops = flops_per_image(run.model, variables, shape)
    print(f"{command.config_spec}: image {shape}, {params:,} parameters, {flops / 1e9:.2f} "
          f"GFLOP per image forward (XLA cost analysis on {jax.devices()[0].platform})")
    return {"image_shape": list(shape), "params": params, "flops_per_image": flops}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
