"""Training throughput of a config's train step, with every ratio measured in the same run.

    python benchmarks/train_throughput.py                       # DDPM++ 64 ch, batch 32
    python benchmarks/train_throughput.py --config=configs/quickstart.py
    python benchmarks/train_throughput.py --config.model.remat=True --json=out.json

Measures, on the default device:
* the bare train step (``Run.train_step``: jitted, sharded, donated) on pre-loaded data:
  compile time, median step time, img/s, FLOPs per image (XLA cost analysis of the whole
  step, ``common.counted_flops``), XLA's buffer sizes and peak memory;
* the same step with isotropic noise (gamma = 0, no bands), interleaved with the SAGD step in
  alternating blocks so drift cancels: ``sagd_over_iso_step_time``; and the parts where they
  differ timed alone: ``sagd_over_iso_from_parts``;
* the f32 matmul rate, and the rate XLA reaches on this step's own 3x3 convolutions (forward
  plus both gradients, each shape timed alone, weighted by its count in the network):
  ``utilization_vs_matmul`` and ``utilization_vs_conv`` are the step's FLOP/s over those;
* the trainer's full loop (``sagd_jax.main`` in this process: data pipeline, metrics,
  logging, async checkpoints at the config's intervals unless overridden) against the bare
  step dispatched back to back before and after it: ``loop_over_bare_img_per_s``; and one
  checkpoint save on its own (blocking, total and CPU seconds). If the config's dataset is not
  available offline, the loop reads ``natural_patches`` of the same size instead.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console
from sagd_jax.run import Run


def bare_run(config: Any) -> Run:
    """The config's run without its data (shapes only), validated for one device."""
    return Run.from_config(config, load_data=False, device_count=1)


class BareStep:
    """The trainer's train step (``Run.train_step``: jitted, sharded, donated) on one fixed
    batch ``(B, H, W, C)``, on the default device."""

    def __init__(self, run: Run, batch: Any):
        import jax

        from sagd_jax.sharding import batch_sharding

        self.mesh = common.default_mesh()
        self.state = run.init_state(self.mesh)
        self.batch = jax.device_put(batch, batch_sharding(self.mesh))
        lowered = run.train_step(self.mesh).lower(self.state, self.batch)
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.flops = common.counted_flops(lambda: run.train_step(self.mesh), self.state,
                                          self.batch)
        memory = self.compiled.memory_analysis()
        self.buffer_bytes = {name: int(getattr(memory, f"{name}_size_in_bytes", 0))
                             for name in ("argument", "output", "temp", "alias")}
        self.run(2)  # warm-up

    def run(self, steps: int) -> list[float]:
        def one() -> Any:
            self.state, metrics = self.compiled(self.state, self.batch)
            return metrics["loss"]

        return common.timed(one, steps)

    def pipelined_seconds(self, steps: int) -> float:
        """Seconds of ``steps`` steps dispatched back to back (one wait at the end), as a
        training loop runs them."""
        import jax

        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


def process_part_seconds(run: Run, batch: Any, repeats: int = 20) -> float:
    """Median seconds of the step's process-only work on ``batch``: drawing ``x_t``
    (``Sigma^{1/2}``) and the projected loss with its gradient, the parts where SAGD and
    isotropic steps differ."""
    import jax

    process = run.process

    @jax.jit
    def part(key: Any, x0: Any) -> Any:
        t = process.sample_time(key, x0.shape[0])
        x_t, eps = process.marginal_sample(key, x0, t)
        grad = jax.grad(lambda out: process.loss(out, x0, eps, t).mean())(x_t)
        return x_t, grad

    key = jax.random.key(0)
    jax.block_until_ready(part(key, batch))
    return common.median(common.timed(lambda: part(key, batch), repeats))


def conv_shapes(run: Run, batch_size: int) -> Counter:
    """The 3x3 convolutions of one training forward pass: Counter of (x shape, kernel shape)."""
    import jax
    import jax.numpy as jnp

    model, shape = run.model, run.image_shape
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
        seconds = common.median(common.timed(
            lambda x=x, kernel=kernel, dy=dy, f=fwd_bwd: f(x, kernel, dy), repeats))
        b, h, w, c_in = x_shape
        flops = 3 * 2 * b * h * w * k_shape[0] * k_shape[1] * c_in * k_shape[3]
        total_s += count * seconds
        total_flops += count * flops
    return {"conv_seconds_per_step": total_s, "conv_gflops": total_flops / total_s / 1e9,
            "conv_flops_per_step": total_flops}


def loop_img_per_s(command: common.Command, config: Any, log_every: int,
                   checkpoint_every: int, num_steps: int, verbosity: int) -> tuple[float, str]:
    """img/s of the trainer (``sagd_jax.main``, in this process, on the config of ``command``
    at ``config``'s batch size) over its log intervals after the first (which holds the
    compile), with the async checkpoint saves that fall in them; returns it and the dataset
    read. With ``num_steps = checkpoint_every + log_every`` the timed window is one checkpoint
    interval holding exactly one save."""
    from sagd_jax import main as trainer
    from sagd_jax.data import get_source
    from sagd_jax.workdir import Workdir

    dataset = config.data.name
    try:
        get_source(config.data)
    except ValueError as err:
        console.warning("loop: %s unavailable (%s); reading natural_patches instead", dataset,
                        err)
        dataset = "natural_patches"
    settings = dict(batch_size=config.train.batch_size, num_steps=num_steps,
                    log_every=log_every, checkpoint_every=checkpoint_every,
                    sample_every=10**9, num_samples=2, sample_steps=1)
    args = [*command.config_flags(), f"--config.data.name={dataset}",
            *(f"--config.train.{key}={value}" for key, value in settings.items())]
    with tempfile.TemporaryDirectory() as workdir:
        status = trainer.main(["sagd_jax.main", *args, f"--workdir={workdir}",
                               f"--verbosity={verbosity}"])
        if status:
            raise common.Failed(f"loop: the trainer stopped with exit status {status}")
        records = Workdir(workdir).metrics()
    timed_records = [r for r in records[1:] if r["step"] % log_every == 0]
    steps = sum(log_every for _ in timed_records)
    seconds = sum(log_every / r["steps_per_sec"] for r in timed_records)
    return steps * config.train.batch_size / seconds, dataset


def checkpoint_cost(state: Any, config: Any, saves: int = 3) -> dict[str, float]:
    """One async save of ``state`` through the trainer's ``Checkpointer``: seconds the caller is
    blocked, seconds until it is on disk, and process CPU seconds (medians over ``saves``)."""
    import resource

    import jax

    from sagd_jax.workdir import Workdir

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    blocked, total, cpu_s = [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        checkpointer = Workdir(workdir).checkpointer(keep=2)
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
    return {"checkpoint_blocking_s": common.median(blocked),
            "checkpoint_save_s": common.median(total), "checkpoint_cpu_s": common.median(cpu_s),
            "state_leaves": len(leaves),
            "state_bytes": sum(leaf.nbytes for leaf in leaves)}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's "
                         "train.batch_size).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("steps", 4, "Timed steps per block.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("blocks", 3, "Alternating SAGD/isotropic blocks (medians over all "
                         "steps).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("loop_log_every", None, "Steps per log interval of the loop run "
                         "(default: the config's).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("loop_checkpoint_every", None, "Steps per checkpoint of the loop run "
                         "(default: the config's).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("loop_steps", None, "Steps of the loop run (default: "
                         "checkpoint_every + log_every, so that the timed window holds one "
                         "save).", lower_bound=1, flag_values=fv)
    flags.DEFINE_boolean("skip_loop", False, "Leave out the loop run and the checkpoint save.",
                         flag_values=fv)
    flags.DEFINE_boolean("skip_conv", False, "Leave out the convolutions timed alone.",
                         flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    config = copy.deepcopy(fv.config)
    if fv.batch_size is not None:
        config.train.batch_size = fv.batch_size
    iso = copy.deepcopy(config)
    iso.noise.gamma, iso.noise.bands = 0.0, ""
    sagd_run, iso_run = bare_run(config), bare_run(iso)
    config = sagd_run.config
    log_every = fv.loop_log_every or config.train.log_every
    checkpoint_every = fv.loop_checkpoint_every or config.train.checkpoint_every
    num_steps = fv.loop_steps or checkpoint_every + log_every
    if not fv.skip_loop and num_steps < 2 * log_every:
        raise ValueError(f"--loop_steps={num_steps}: needs at least two log intervals of "
                         f"{log_every} steps (the first holds the compile)")

    import jax

    batch_size, shape = config.train.batch_size, sagd_run.image_shape
    batch = jax.random.uniform(jax.random.key(0), (batch_size, *shape), minval=-1.0, maxval=1.0)
    print(f"{command.config_spec} {' '.join(command.overrides)}: batch {batch_size}, image "
          f"{shape}, device {jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
    sagd, isotropic = BareStep(sagd_run, batch), BareStep(iso_run, batch)
    sagd_times, iso_times = [], []
    for _ in range(fv.blocks):
        sagd_times += sagd.run(fv.steps)
        iso_times += isotropic.run(fv.steps)
    step_s, iso_s = common.median(sagd_times), common.median(iso_times)
    sagd_part = process_part_seconds(sagd_run, batch)
    iso_part = process_part_seconds(iso_run, batch)
    flops_per_image = sagd.flops / batch_size
    peak, peak_kind = common.peak_memory_bytes()
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
    matmul = common.matmul_gflops()
    result |= {"matmul_gflops": matmul, "utilization_vs_matmul": result["step_gflops"] / matmul}
    if not fv.skip_conv:
        conv = conv_rate(conv_shapes(sagd_run, batch_size), repeats=3)
        result |= conv | {
            "utilization_vs_conv": result["step_gflops"] / conv["conv_gflops"],
            "conv_share_of_step_time": conv["conv_seconds_per_step"] / step_s,
        }
    if not fv.skip_loop:
        # The bare step pipelined as the loop runs it, before and after the loop (drift cancels).
        pipelined_steps = fv.steps * fv.blocks
        bare_s = sagd.pipelined_seconds(pipelined_steps)
        loop, dataset = loop_img_per_s(command, config, log_every, checkpoint_every, num_steps,
                                       fv.verbosity)
        bare_s += sagd.pipelined_seconds(pipelined_steps)
        bare = 2 * pipelined_steps * batch_size / bare_s
        result |= {"loop_img_per_s": loop, "loop_dataset": dataset,
                   "loop_bare_img_per_s": bare, "loop_over_bare_img_per_s": loop / bare,
                   "loop_log_every": log_every, "loop_checkpoint_every": checkpoint_every,
                   "loop_steps": num_steps}
        result |= checkpoint_cost(sagd.state, config)
    print(console.table(common.scalars(result)))
    return result


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
