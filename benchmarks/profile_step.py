"""Where the train step (or the sampler's network forward) spends its time: a jax profiler
trace of a few calls, summarised.

    python benchmarks/profile_step.py --batch_size=32              # DDPM++ 64 ch
    python benchmarks/profile_step.py --config=configs/quickstart.py --trace_dir=/tmp/trace
    python benchmarks/profile_step.py --what=forward --batch_size=16   # what a sampler runs

Traces ``--steps`` calls of the bare train step (``Run.train_step``, after a warm-up), or with
``--what=forward`` of the network as a sampler calls it (``Run.eps_fn`` on EMA parameters of a
fresh init, jitted, at ``t = 0.5``), with
``jax.profiler.trace`` and sums the durations of the XLA operations by kind (the HLO
instruction name up to its first ``.``: ``convolution``, ``dot``, ``fusion``, ``reduce``,
...), printing each kind's share of the traced op time and the largest single operations. The
full trace (TensorBoard / Perfetto) stays in ``--trace_dir``.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import sys
import tempfile
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console


def op_times(trace_dir: str) -> dict[str, float]:
    """Total microseconds per XLA operation name in the Perfetto trace under ``trace_dir``."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise common.Failed(f"--trace_dir={trace_dir}: the profiler wrote no .trace.json.gz")
    with gzip.open(max(paths, key=os.path.getmtime)) as f:
        events = json.load(f)["traceEvents"]
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
               for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        name = event.get("name", "")
        thread = threads.get((event.get("pid"), event.get("tid")), "")
        python_side = "python" in thread.lower() or name.startswith(("$", "Pjit", "PjRt"))
        if python_side or " " in name or "::" in name:
            continue  # Python/runtime spans; keep the XLA operations
        totals[name] += float(event["dur"])
    return totals


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's "
                         "train.batch_size).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("steps", 2, "Traced steps.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("trace_dir", None, "Where the trace goes (default: a new temporary "
                        "folder).", flag_values=fv)
    flags.DEFINE_enum("what", "train", ["train", "forward"], "Profile the train step or the "
                      "sampler's network forward.", flag_values=fv)
    flags.DEFINE_integer("top", 15, "Rows of each table.", lower_bound=1, flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    from benchmarks.train_throughput import BareStep, bare_run

    config = fv.config
    if fv.batch_size is not None:
        config.train.batch_size = fv.batch_size
    run = bare_run(config)

    import jax

    batch = jax.random.uniform(jax.random.key(0), (config.train.batch_size, *run.image_shape),
                               minval=-1.0, maxval=1.0)
    if fv.what == "train":
        calls = BareStep(run, batch).run
    else:
        import jax.numpy as jnp

        eps_fn = run.eps_fn(run.init_state(common.default_mesh()).ema_params)
        forward = jax.jit(lambda f, x, t: f(x, t))
        t = jnp.full((batch.shape[0],), 0.5)
        jax.block_until_ready(forward(eps_fn, batch, t))  # compile and warm up

        def calls(n: int) -> list[float]:
            return common.timed(lambda: forward(eps_fn, batch, t), n)
    trace_dir = fv.trace_dir or tempfile.mkdtemp(prefix="sagd-trace-")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        wall = sum(calls(fv.steps))
    totals = op_times(trace_dir)
    traced = sum(totals.values())
    kinds: dict[str, float] = collections.defaultdict(float)
    for name, micros in totals.items():
        kinds[name.split(".")[0]] += micros
    rows = [{"kind": kind, "ms_per_step": micros / 1e3 / fv.steps, "share": micros / traced}
            for kind, micros in sorted(kinds.items(), key=lambda kv: -kv[1])]
    print(f"{fv.steps} steps: {wall:.3g} s wall, {traced / 1e6:.3g} s of traced XLA ops "
          f"(ops on parallel threads add up beyond wall time); trace in {trace_dir}")
    print(console.table(rows[:fv.top], ["kind", "ms_per_step", "share"]))
    top_ops = [{"op": name, "ms_per_step": micros / 1e3 / fv.steps, "share": micros / traced}
               for name, micros in sorted(totals.items(), key=lambda kv: -kv[1])[:fv.top]]
    print(console.table(top_ops, ["op", "ms_per_step", "share"]))
    return {"what": fv.what, "batch_size": config.train.batch_size,
            "wall_s_per_step": wall / fv.steps,
            "kinds": rows, "top_ops": top_ops}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
