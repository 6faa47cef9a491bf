"""Where the train step spends its time: a jax profiler trace of a few steps, summarised.

    python benchmarks/profile_step.py --batch_size 32              # DDPM++ 64 ch
    python benchmarks/profile_step.py --config configs/quickstart.py --trace_dir /tmp/trace

Traces ``--steps`` calls of the bare jitted train step (after a warm-up) with
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check_args, make_parser, print_table, write_json  # noqa: E402


def op_times(trace_dir: str) -> dict[str, float]:
    """Total microseconds per XLA operation name in the Perfetto trace under ``trace_dir``."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit(f"--trace_dir={trace_dir}: the profiler wrote no .trace.json.gz")
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


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, "configs/cifar10_ddpmpp.py:cpu")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--trace_dir", default=None, help="where the trace goes (default: temp)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    config = check_args(args)
    if args.batch_size is not None:
        config.train.batch_size = args.batch_size

    import jax
    from train_throughput import BareStep, step_parts

    try:
        _, _, _, shape = step_parts(config)
    except ValueError as err:
        raise SystemExit(f"--config={args.config}: {err}") from None
    batch = jax.random.uniform(jax.random.key(0), (config.train.batch_size, *shape),
                               minval=-1.0, maxval=1.0)
    step = BareStep(config, batch)
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="sagd-trace-")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        wall = sum(step.run(args.steps))
    totals = op_times(trace_dir)
    traced = sum(totals.values())
    kinds: dict[str, float] = collections.defaultdict(float)
    for name, micros in totals.items():
        kinds[name.split(".")[0]] += micros
    rows = [{"kind": kind, "ms_per_step": micros / 1e3 / args.steps, "share": micros / traced}
            for kind, micros in sorted(kinds.items(), key=lambda kv: -kv[1])]
    print(f"{args.steps} steps: {wall:.3g} s wall, {traced / 1e6:.3g} s of traced XLA ops "
          f"(ops on parallel threads add up beyond wall time); trace in {trace_dir}")
    print_table(rows[:args.top], ["kind", "ms_per_step", "share"])
    top_ops = [{"op": name, "ms_per_step": micros / 1e3 / args.steps, "share": micros / traced}
               for name, micros in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]]
    print_table(top_ops, ["op", "ms_per_step", "share"])
    write_json(args, {"batch_size": config.train.batch_size,
                      "wall_s_per_step": wall / args.steps, "kinds": rows, "top_ops": top_ops},
               __file__, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
