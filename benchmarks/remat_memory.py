"""What rematerialisation (``jax.checkpoint``, ``model.remat``) buys on the default backend.

    python benchmarks/remat_memory.py                          # DDPM++ 64 ch, batch 32
    python benchmarks/remat_memory.py --config configs/quickstart.py --json out.json

Compiles only (nothing is timed, so it may run beside other work):
* a plain chain of dense blocks (``--chain_blocks`` blocks of 4 tanh(x @ W) layers), its
  gradient with and without ``jax.checkpoint`` per block: XLA's temp buffer, and the number of
  dots and optimization barriers before and after XLA's optimisation passes (a backend that
  honours remat keeps the barriers and recomputes the forward dots);
* the config's train step with ``model.remat`` off and on: temp buffer and FLOPs per image.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    check_args,
    counted_flops,
    make_parser,
    print_scalars,
    write_json,
)


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
    """XLA temp buffer and FLOPs per image of the config's train step (compiled, not run)."""
    import jax
    import jax.numpy as jnp
    from train_throughput import step_parts

    from sagd_jax.train.state import create_train_state, init_key
    from sagd_jax.train.step import INIT_STREAM, train_step

    model, tx, process, shape = step_parts(config)
    state = jax.eval_shape(lambda: create_train_state(model, tx, init_key(0, INIT_STREAM), shape))
    step = functools.partial(train_step, model=model, tx=tx, process=process,
                             ema_decay=config.optim.ema_decay)
    args = (state, jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32), jax.random.key(0))
    compiled = jax.jit(step, donate_argnums=0).lower(*args).compile()
    return {"temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
            "flops_per_image": counted_flops(step, *args) / batch_size}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, "configs/cifar10_ddpmpp.py:cpu")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="global batch (default: the config's train.batch_size)")
    parser.add_argument("--chain_blocks", type=int, default=16)
    parser.add_argument("--chain_width", type=int, default=512)
    parser.add_argument("--chain_batch", type=int, default=4096)
    parser.add_argument("--skip_model", action="store_true", help="the dense chain only")
    args = parser.parse_args(argv)
    config = check_args(args)
    for flag in ("batch_size", "chain_blocks", "chain_width", "chain_batch"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"--{flag}={value}: must be positive")
    batch_size = args.batch_size or config.train.batch_size
    import jax

    result: dict[str, Any] = {"backend": jax.default_backend()}
    for remat in (False, True):
        tag = "remat" if remat else "plain"
        sizes = (args.chain_blocks, args.chain_width, args.chain_batch)
        result |= {f"chain_{tag}_{k}": v for k, v in chain(*sizes, remat).items()}
    result["chain_activation_bytes"] = args.chain_batch * args.chain_width * 4
    if not args.skip_model:
        result["batch_size"] = batch_size
        for remat in (False, True):
            variant = copy.deepcopy(config)
            variant.model.remat = remat
            tag = "remat" if remat else "plain"
            result |= {f"step_{tag}_{k}": v for k, v in train_step_memory(variant,
                                                                         batch_size).items()}
    print_scalars(result)
    write_json(args, result, __file__, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
