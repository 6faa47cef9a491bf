"""What rematerialisation (``jax.checkpoint``, ``model.remat``) buys on the default backend.

    python benchmarks/remat_memory.py                          # DDPM++ 64 ch, batch 32
    python benchmarks/remat_memory.py --config=configs/quickstart.py --json=out.json

Compiles only (nothing is timed, so it may run beside other work):
* a plain chain of dense blocks (``--chain_blocks`` blocks of 4 tanh(x @ W) layers), its
  gradient with and without ``jax.checkpoint`` per block: XLA's temp buffer, and the number of
  dots and optimization barriers before and after XLA's optimisation passes (a backend that
  honours remat keeps the barriers and recomputes the forward dots);
* the config's train step (``Run.train_step``) with ``model.remat`` off and on: temp buffer
  and FLOPs per image.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console


def chain(blocks: int, width: int, batch: int, remat: bool) -> dict[str, float]:
    """Temp bytes and op counts of the gradient of a ``blocks``-block tanh-dense chain."""
    import jax
    import jax.numpy as jnp

    def block(w: jax.Array, x: jax.Array) -> jax.Array:
        for _ in range(4):
            x = jnp.tanh(x @ w)
        return x

    def loss(ws: list[jax.Array], x: jax.Array) -> jax.Array:
        f = jax.checkpoint(block) if remat else block
        for w in ws:
            x = f(w, x)
        return jnp.sum(x**2)

    ws = [jax.ShapeDtypeStruct((width, width), jnp.float32)] * blocks
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32)
    lowered = jax.jit(jax.grad(loss)).lower(ws, x)
    before = lowered.as_text()
    compiled = lowered.compile()
    after = compiled.as_text()
    return {"temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
            "dots_before": before.count("stablehlo.dot_general"),
            "dots_after": after.count(" dot("),
            "barriers_before": before.count("optimization_barrier"),
            "barriers_after": after.count("opt-barrier")}


def train_step_memory(config: Any, batch_size: int) -> dict[str, float]:
    """XLA temp buffer and FLOPs per image of the config's train step (``Run.train_step`` on
    the default device, lowered on shapes and compiled, never run)."""
    import jax
    import jax.numpy as jnp

    from sagd_jax.run import Run
    from sagd_jax.sharding import batch_sharding

    run = Run.from_config(config, load_data=False, device_count=1)
    mesh = common.default_mesh()
    state = run.abstract_state(mesh)
    batch = jax.ShapeDtypeStruct((batch_size, *run.image_shape), jnp.float32,
                                 sharding=batch_sharding(mesh))
    compiled = run.train_step(mesh).lower(state, batch).compile()
    return {"temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
            "flops_per_image": common.counted_flops(lambda: run.train_step(mesh), state, batch)
            / batch_size}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's "
                         "train.batch_size).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("chain_blocks", 16, "Blocks of the dense chain.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("chain_width", 512, "Width of the dense chain.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("chain_batch", 4096, "Batch of the dense chain.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_boolean("skip_model", False, "The dense chain only.", flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    config = fv.config
    batch_size = fv.batch_size or config.train.batch_size
    import jax

    result: dict[str, Any] = {"backend": jax.default_backend()}
    for remat in (False, True):
        tag = "remat" if remat else "plain"
        sizes = (fv.chain_blocks, fv.chain_width, fv.chain_batch)
        result |= {f"chain_{tag}_{k}": v for k, v in chain(*sizes, remat).items()}
    result["chain_activation_bytes"] = fv.chain_batch * fv.chain_width * 4
    if not fv.skip_model:
        result["batch_size"] = batch_size
        for remat in (False, True):
            variant = copy.deepcopy(config)
            variant.model.remat = remat
            variant.train.batch_size = batch_size
            tag = "remat" if remat else "plain"
            result |= {f"step_{tag}_{k}": v for k, v in train_step_memory(variant,
                                                                         batch_size).items()}
    print(console.table(common.scalars(result)))
    return result


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
