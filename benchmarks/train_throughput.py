"""Training throughput of a config's train step, with every ratio measured in the same run.

    python benchmarks/train_throughput.py                       # DDPM++ 64 ch, batch 32
    python benchmarks/train_throughput.py --config configs/quickstart.py
    python benchmarks/train_throughput.py --set model.remat=True --json out.json

Measures, on the default device:
* the bare jitted train step on pre-loaded data: compile time, median step time, img/s, FLOPs
  per image (XLA cost analysis of the whole step, ``common.counted_flops``), XLA's buffer
  sizes and peak memory;
* the same step with isotropic noise (gamma = 0, no bands), interleaved with the SAGD step in
  alternating blocks so drift cancels: ``sagd_over_iso_step_time``; and the parts where they
  differ timed alone: ``sagd_over_iso_from_parts``;
* the f32 matmul rate, and the rate XLA reaches on this step's own 3x3 convolutions (forward
  plus both gradients, each shape timed alone, weighted by its count in the network):
  ``utilization_vs_matmul`` and ``utilization_vs_conv`` are the step's FLOP/s over those;
* the trainer's full loop (data pipeline, metrics, logging, async checkpoints at the config's
  intervals unless overridden) against the bare step dispatched back to back before and
  after it: ``loop_over_bare_img_per_s``; and one checkpoint save on its own (blocking, total
  and CPU seconds). If the config's dataset is not available offline, the loop reads
  ``natural_patches`` of the same size instead.
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
    counted_flops,
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
        step = functools.partial(train_step, model=model, tx=tx, process=process,
                                 ema_decay=config.optim.ema_decay)
        lowered = jax.jit(step, donate_argnums=0).lower(self.state, batch, self.key)
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.flops = counted_flops(step, self.state, batch, self.key)
        memory = self.compiled.memory_analysis()
        self.buffer_bytes = {name: int(getattr(memory, f"{name}_size_in_bytes", 0))
                             for name in ("argument", "output", "temp", "alias")}
        self.run(2)  # warm-up

    def run(self, steps: int) -> list[float]:
        def one() -> Any:
            self.state, metrics = self.compiled(self.state, self.batch, self.key)
            return metrics["loss"]

        return timed(one, steps)

    def pipelined_seconds(self, steps: int) -> float:
        """Seconds of ``steps`` steps dispatched back to back (one wait at the end), as a
        training loop runs them."""
        import jax

        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch, self.key)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


def process_part_seconds(config: Any, batch: Any, repeats: int = 20) -> float:
    """Median seconds of the step's process-only work on ``batch``: drawing ``x_t``
    (``Sigma^{1/2}``) and the projected loss with its gradient, the parts where SAGD and
    isotropic steps differ."""
    import jax

    _, _, process, _ = step_parts(config)

    @jax.jit
    def part(key: Any, x0: Any) -> Any:
        t = process.sample_time(key, x0.shape[0])
        x_t, eps = process.marginal_sample(key, x0, t)
        grad = jax.grad(lambda out: process.loss(out, x0, eps, t).mean())(x_t)
        return x_t, grad

    key = jax.random.key(0)
    jax.block_until_ready(part(key, batch))
    return median(timed(lambda: part(key, batch), repeats))


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


def loop_img_per_s(config: Any, log_every: int, checkpoint_every: int,
                   num_steps: int) -> tuple[float, str]:
    """img/s of ``train_and_evaluate`` over its log intervals after the first (which holds the
    compile), with the async checkpoint saves that fall in them; returns it and the dataset
    read. With ``num_steps = checkpoint_every + log_every`` the timed window is one checkpoint
    interval holding exactly one save."""
    from sagd_jax.data import get_source
    from sagd_jax.train.loop import train_and_evaluate

    config = copy.deepcopy(config)
    try:
        get_source(config.data)
    except ValueError as err:
        print(f"loop: {config.data.name} unavailable ({err}); reading natural_patches instead")
        config.data.name = "natural_patches"
    config.train.update(dict(num_steps=num_steps, log_every=log_every,
                             checkpoint_every=checkpoint_every, sample_every=10**9,
                             num_samples=2, sample_steps=1))
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    timed_records = [r for r in records[1:] if r["step"] % log_every == 0]
    steps = sum(log_every for _ in timed_records)
    seconds = sum(log_every / r["steps_per_sec"] for r in timed_records)
    return steps * config.train.batch_size / seconds, config.data.name


def checkpoint_cost(state: Any, config: Any, saves: int = 3) -> dict[str, float]:
    """One async save of ``state`` through the trainer's ``Checkpointer``: seconds the caller is
    blocked, seconds until it is on disk, and process CPU seconds (medians over ``saves``)."""
    import resource

    import jax

    from sagd_jax.checkpoint import Checkpointer

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    blocked, total, cpu_s = [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        checkpointer = Checkpointer(workdir, keep=2)
        for i in range(saves):
            state = state.replace(step=state.step + 1 + i)
            cpu0, start = cpu(), time.perf_counter()
            checkpointer.save(state, config)
            blocked.append(time.perf_counter() - start)
            checkpointer.wait()
            total.append(time.perf_counter() - start)
            cpu_s.append(cpu() - cpu0)
        checkpointer.close()
    leaves = jax.tree.leaves(state)
    return {"checkpoint_blocking_s": median(blocked), "checkpoint_save_s": median(total),
            "checkpoint_cpu_s": median(cpu_s), "state_leaves": len(leaves),
            "state_bytes": sum(leaf.nbytes for leaf in leaves)}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, "configs/cifar10_ddpmpp.py:cpu")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="global batch (default: the config's train.batch_size)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=3,
                        help="alternating SAGD/isotropic blocks (medians over all steps)")
    parser.add_argument("--loop_log_every", type=int, default=None,
                        help="steps per log interval of the loop run (default: the config's)")
    parser.add_argument("--loop_checkpoint_every", type=int, default=None,
                        help="steps per checkpoint of the loop run (default: the config's)")
    parser.add_argument("--loop_steps", type=int, default=None,
                        help="steps of the loop run (default: checkpoint_every + log_every, "
                             "so that the timed window holds one save)")
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
    sagd_part, iso_part = process_part_seconds(config, batch), process_part_seconds(iso, batch)
    flops_per_image = sagd.flops / batch_size
    peak, peak_kind = peak_memory_bytes()
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "img_per_s": batch_size / step_s, "step_time_s": step_s, "compile_s": sagd.compile_s,
        "iso_step_time_s": iso_s, "sagd_over_iso_step_time": step_s / iso_s,
        # The same ratio from the parts that differ, timed alone (precise where steps are long
        # and noisy): the isotropic step plus SAGD's extra process work, over the former.
        "sagd_process_part_s": sagd_part, "iso_process_part_s": iso_part,
        "sagd_over_iso_from_parts": 1.0 + (sagd_part - iso_part) / iso_s,
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
        log_every = args.loop_log_every or config.train.log_every
        checkpoint_every = args.loop_checkpoint_every or config.train.checkpoint_every
        num_steps = args.loop_steps or checkpoint_every + log_every
        if num_steps < 2 * log_every:
            raise SystemExit(f"--loop_steps={num_steps}: needs at least two log intervals "
                             f"of {log_every} steps (the first holds the compile)")
        # The bare step pipelined as the loop runs it, before and after the loop (drift cancels).
        pipelined_steps = args.steps * args.blocks
        bare_s = sagd.pipelined_seconds(pipelined_steps)
        loop, dataset = loop_img_per_s(config, log_every, checkpoint_every, num_steps)
        bare_s += sagd.pipelined_seconds(pipelined_steps)
        bare = 2 * pipelined_steps * batch_size / bare_s
        result |= {"loop_img_per_s": loop, "loop_dataset": dataset,
                   "loop_bare_img_per_s": bare, "loop_over_bare_img_per_s": loop / bare,
                   "loop_log_every": log_every, "loop_checkpoint_every": checkpoint_every,
                   "loop_steps": num_steps}
        result |= checkpoint_cost(sagd.state, config)
    print_scalars(result)
    write_json(args, result, __file__, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
