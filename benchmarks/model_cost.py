"""Parameter count and forward FLOPs per image (XLA cost analysis) of a config's U-Net.

    python benchmarks/model_cost.py --config configs/cifar10_ddpmpp.py [--variant cpu]

Shapes only: the parameters are never allocated (``jax.eval_shape``).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from sagd_jax.config import load_config_file
from sagd_jax.models import build_model, count_params, flops_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a configs/*.py file")
    parser.add_argument("--variant", default=None, help="the config's variant, if any")
    args = parser.parse_args()
    config = load_config_file(args.config + (f":{args.variant}" if args.variant else ""))
    shape = (config.data.image_size, config.data.image_size, config.data.channels)
    model = build_model(config.model, shape)
    x, labels = jnp.zeros((1, *shape)), jnp.zeros((1,))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, labels))
    params = count_params(variables["params"])
    flops = flops_per_image(model, variables, shape)
    print(f"{args.config}{':' + args.variant if args.variant else ''}: image {shape}, "
          f"{params:,} parameters, {flops / 1e9:.2f} GFLOP per image forward "
          f"(XLA cost analysis on {jax.devices()[0].platform})")


if __name__ == "__main__":
    main()
