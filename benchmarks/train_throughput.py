"""Training throughput of a config's train step, with every ratio measured in the same run.

    python benchmarks/train_throughput.py                       # DDPM++ 64 ch, batch 32
    python benchmarks/train_throughput.py --config configs/quickstart.py
    python benchmarks/train_throughput.py --set model.remat=True --json out.json

Measures, on the default device:
* the bare jitted train step on pre-loaded data: compile time, median step time, img/s, FLOPs
  per image (XLA cost analysis of the whole step), XLA's buffer sizes and peak memory;
* the same step with isotropic noise (gamma = 0, no bands), interleaved with the SAGD step in
  alternating blocks so drift cancels: ``sagd_over_iso_step_time``;
* the f32 matmul rate, and the rate XLA reaches on this step's own 3x3 convolutions (forward
  plus both gradients, each shape timed alone, weighted by its count in the network):
  ``utilization_vs_matmul`` and ``utilization_vs_conv`` are the step's FLOP/s over those;
* the trainer's full loop (data pipeline, metrics, logging, async checkpoints every log
  interval) against the bare step: ``loop_over_bare_img_per_s``. If the config's dataset is
  not available offline, the loop reads ``natural_patches`` of the same size instead.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    check_args,
    make_parser,
    matmul_gflops,
    median,
    peak_memory_bytes,
    print_scalars,
    timed,
    write_json,
)


def step_parts(config: Any) -> tuple[Any, Any, Any, tuple[int, int, int]]:
    """(model, optimizer, process, image shape) of a config, without touching its dataset."""
    from sagd_jax.models import build_model
    from sagd_jax.process import DiffusionProcess
    from sagd_jax.train.state import make_optimizer

    shape = (config.data.image_size, config.data.image_size, config.data.channels)
    process = DiffusionProcess.from_config(config, shape[0], shape[1])
    return build_model(config.model, shape), make_optimizer(config.optim), process, shape


class BareStep:
    """The trainer's jitted ``train_step`` (same partial, same donation) on one fixed batch."""

    def __init__(self, config: Any, batch: Any):
        import jax

        from sagd_jax.train.state import create_train_state, init_key
        from sagd_jax.train.step import INIT_STREAM, TRAIN_STREAM, stream_key, train_step

        model, tx, process, shape = step_parts(config)
        self.state = create_train_state(model, tx, init_key(config.seed, INIT_STREAM), shape)
        self.batch, self.key = batch, stream_key(config.seed, TRAIN_STREAM)
        fn = jax.jit(functools.partial(train_step, model=model, tx=tx, process=process,
                                       ema_decay=config.optim.ema_decay), donate_argnums=0)
        lowered = fn.lower(self.state, batch, self.key)
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.flops = float(cost["flops"])
        memory = self.compiled.memory_analysis()
        self.buffer_bytes = {name: int(getattr(memory, f"{name}_size_in_bytes", 0))
                             for name in ("argument", "output", "temp", "alias")}
        self.run(2)  # warm-up

    def run(self, steps: int) -> list[float]:
        def one() -> Any:
            self.state, metrics = self.compiled(self.state, self.batch, self.key)
            return metrics["loss"]

        return timed(one, steps)


def conv_shapes(config: Any, batch_size: int) -> Counter:
    """The 3x3 convolutions of one training forward pass: Counter of (x shape, kernel shape)."""
    import jax
    import jax.numpy as jnp

    model, _, _, shape = step_parts(config)
    x = jnp.zeros((batch_size, *shape))
    labels = jnp.zeros((batch_size,))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], labels[:1]))
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, x, labels, train=True,
                                                 rngs={"dropout": jax.random.key(0)}))(params)
    found: Counter = Counter()

    def walk(inner: Any) -> None:
        for eqn in inner.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars[:2])
                found[(lhs, rhs)] += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(jaxpr.jaxpr)
    return found


def conv_rate(shapes: Counter, repeats: int) -> dict[str, float]:
    """Seconds and GFLOP/s of the step's convolutions (``conv2d_same`` forward plus both
    gradients, as the model runs them), each shape timed alone, weighted by its count."""
    import jax

    from sagd_jax.models.conv import conv2d_same

    total_s = total_flops = 0.0
    for (x_shape, k_shape), count in shapes.items():
        x = jax.random.normal(jax.random.key(0), x_shape)
        kernel = jax.random.normal(jax.random.key(1), k_shape) * 0.05
        out_shape = (*x_shape[:3], k_shape[3])
        dy = jax.random.normal(jax.random.key(2), out_shape)

        @jax.jit
        def fwd_bwd(x: Any, kernel: Any, dy: Any) -> Any:
            y, vjp = jax.vjp(conv2d_same, x, kernel)
            return y, vjp(dy)

        jax.block_until_ready(fwd_bwd(x, kernel, dy))
        seconds = median(timed(lambda x=x, kernel=kernel, dy=dy, f=fwd_bwd: f(x, kernel, dy),
                               repeats))
        b, h, w, c_in = x_shape
        flops = 3 * 2 * b * h * w * k_shape[0] * k_shape[1] * c_in * k_shape[3]
        total_s += count * seconds
        total_flops += count * flops
    return {"conv_seconds_per_step": total_s, "conv_gflops": total_flops / total_s / 1e9,
            "conv_flops_per_step": total_flops}


def loop_img_per_s(config: Any, log_every: int, intervals: int) -> tuple[float, str]:
    """img/s of ``train_and_evaluate`` over log intervals 2.. (the first holds the compile),
    with an (async) checkpoint at every interval; returns it and the dataset it read."""
    from sagd_jax.data import get_source
    from sagd_jax.train.loop import train_and_evaluate

    config = copy.deepcopy(config)
    try:
        get_source(config.data)
    except ValueError as err:
        print(f"loop: {config.data.name} unavailable ({err}); reading natural_patches instead")
        config.data.name = "natural_patches"
    config.train.update(dict(num_steps=log_every * (intervals + 1), log_every=log_every,
                             checkpoint_every=log_every, sample_every=10**9, num_samples=2,
                             sample_steps=1))
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    return median([r["img_per_sec"] for r in records[1:]]), config.data.name


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, "configs/cifar10_ddpmpp.py:cpu")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="global batch (default: the config's train.batch_size)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=3,
                        help="alternating SAGD/isotropic blocks (medians over all steps)")
    parser.add_argument("--loop_log_every", type=int, default=5,
                        help="steps per log (and checkpoint) interval of the loop run")
    parser.add_argument("--loop_intervals", type=int, default=3,
                        help="timed log intervals of the loop run (after the first)")
    parser.add_argument("--skip_loop", action="store_true")
    parser.add_argument("--skip_conv", action="store_true")
    args = parser.parse_args(argv)
    config = check_args(args)
    if args.batch_size is not None:
        config.train.batch_size = args.batch_size
    iso = copy.deepcopy(config)
    iso.noise.gamma, iso.noise.bands = 0.0, ""
    from sagd_jax.config import validate_config

    for cfg in (config, iso):
        try:
            validate_config(cfg)
            step_parts(cfg)
        except ValueError as err:
            raise SystemExit(f"--config={args.config}: {err}") from None

    import jax

    batch_size = config.train.batch_size
    _, _, _, shape = step_parts(config)
    batch = jax.random.uniform(jax.random.key(0), (batch_size, *shape), minval=-1.0, maxval=1.0)
    print(f"{args.config} {' '.join(args.set)}: batch {batch_size}, image {shape}, "
          f"device {jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
    sagd, isotropic = BareStep(config, batch), BareStep(iso, batch)
    sagd_times, iso_times = [], []
    for _ in range(args.blocks):
        sagd_times += sagd.run(args.steps)
        iso_times += isotropic.run(args.steps)
    step_s, iso_s = median(sagd_times), median(iso_times)
    flops_per_image = sagd.flops / batch_size
    peak, peak_kind = peak_memory_bytes()
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "img_per_s": batch_size / step_s, "step_time_s": step_s, "compile_s": sagd.compile_s,
        "iso_step_time_s": iso_s, "sagd_over_iso_step_time": step_s / iso_s,
        "flops_per_image": flops_per_image, "step_gflops": sagd.flops / step_s / 1e9,
        "xla_buffer_bytes": sagd.buffer_bytes, "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
    }
    matmul = matmul_gflops()
    result |= {"matmul_gflops": matmul, "utilization_vs_matmul": result["step_gflops"] / matmul}
    if not args.skip_conv:
        conv = conv_rate(conv_shapes(config, batch_size), repeats=3)
        result |= conv | {
            "utilization_vs_conv": result["step_gflops"] / conv["conv_gflops"],
            "conv_share_of_step_time": conv["conv_seconds_per_step"] / step_s,
        }
    if not args.skip_loop:
        bare = result["img_per_s"]
        loop, dataset = loop_img_per_s(config, args.loop_log_every, args.loop_intervals)
        result |= {"loop_img_per_s": loop, "loop_dataset": dataset,
                   "loop_over_bare_img_per_s": loop / bare}
    print_scalars(result)
    write_json(args, result, __file__, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
