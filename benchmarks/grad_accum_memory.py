"""What gradient accumulation (``train.grad_accum_steps``) saves: XLA's temp buffer of the step.

    python benchmarks/grad_accum_memory.py                     # DDPM++ 64 ch, batch 32
    python benchmarks/grad_accum_memory.py --batch_size 64 --accum 1,4 --json=out.json

Compiles only (nothing runs, so it may run beside other work): the config's train step
(``sagd_jax.train_step.train_step`` jitted as ``Run.train_step`` does, on one device) for a
fixed global batch at each ``--accum``, and reports XLA's temp buffer (the activations and
gradients that live during the step; the state and the batch are arguments, not temp) against
``--accum`` 1's.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console


def step_memory(config: Any, accum: int) -> dict[str, float]:
    """XLA's buffer sizes of the config's train step with ``grad_accum_steps=accum`` (lowered
    on shapes, compiled on the default device, never run) and its compile seconds."""
    import jax
    import jax.numpy as jnp

    from sagd_jax import rng
    from sagd_jax.run import Run
    from sagd_jax.sharding import batch_sharding, replicated
    from sagd_jax.train_step import train_step

    run = Run.from_config(config, load_data=False, device_count=1)
    mesh = common.default_mesh()
    key = rng.stream_key(config.seed, rng.TRAIN)
    step = functools.partial(train_step, train_key=key, model=run.model, tx=run.tx,
                             process=run.process, ema_decay=config.optim.ema_decay,
                             grad_accum_steps=accum)
    state_sh = run.state_sharding(mesh)
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sharding(mesh)),
                     out_shardings=(state_sh, replicated(mesh)), donate_argnums=0)
    batch = jax.ShapeDtypeStruct((config.train.batch_size, *run.image_shape), jnp.float32,
                                 sharding=batch_sharding(mesh))
    start = time.perf_counter()
    compiled = jitted.lower(run.abstract_state(mesh), batch).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {"temp_bytes": memory.temp_size_in_bytes,
            "argument_bytes": memory.argument_size_in_bytes,
            "output_bytes": memory.output_size_in_bytes, "compile_s": seconds}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", 32, "Global batch, the same at every --accum.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_list("accum", ["1", "2", "4", "8"], "The train.grad_accum_steps to compile.",
                      flag_values=fv)


def parse_accum(values: list[str], batch_size: int) -> list[int]:
    """``--accum``: distinct integers >= 1 dividing ``--batch_size``; one-line ValueError."""
    text = ",".join(values)
    accums = common.int_list(values, "--accum", distinct=True)
    for accum in accums:
        if batch_size % accum:
            raise ValueError(f"--accum={text}: {accum} does not divide --batch_size={batch_size}")
    return accums


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    import jax

    accums = parse_accum(fv.accum, fv.batch_size)
    rows = []
    for accum in accums:
        variant = copy.deepcopy(fv.config)
        variant.train.batch_size = fv.batch_size
        variant.train.grad_accum_steps = accum
        rows.append({"accum": accum, "microbatch": fv.batch_size // accum,
                     **step_memory(variant, accum)})
    base = rows[0]["temp_bytes"]
    for row in rows:
        row["temp_vs_first"] = row["temp_bytes"] / base
    print(console.table([{"grad_accum_steps": r["accum"], "microbatch": r["microbatch"],
                          "temp MB": f"{r['temp_bytes'] / 1e6:.1f}",
                          f"vs {rows[0]['accum']}": f"{r['temp_vs_first']:.3f}",
                          "compile s": f"{r['compile_s']:.1f}"} for r in rows]))
    return {"backend": jax.default_backend(), "batch_size": fv.batch_size, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
