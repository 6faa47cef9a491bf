"""Data-parallel scaling of the train step over 1, 2, 4, 8 devices (weak scaling).

    python benchmarks/scaling.py                                 # quickstart model
    python benchmarks/scaling.py --config configs/cifar10_ddpmpp.py:cpu --per_device_batch 8

Each device count runs in its own process with the trainer's sharding: a ``data`` mesh over
the first N devices, the batch (``--per_device_batch`` x N) split over it, the state
replicated, gradients all-reduced by XLA. Reports img/s, ``speedup`` (img/s over that of
the first count, one device by default) and ``per_device_efficiency`` (speedup / N). On a CPU
the devices are fake (``jax_num_cpu_devices``): they share the same cores, so perfect scaling
there is a *flat* img/s (speedup 1) and the figure measures what partitioning and the
collectives cost; on GPUs/TPUs the devices are real and perfect scaling is speedup N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    REPO,
    check_args,
    make_parser,
    median,
    print_table,
    timed,
    write_json,
)


def measure(config: Any, devices: int, per_device_batch: int, steps: int) -> dict[str, Any]:
    """img/s of the sharded train step on the first ``devices`` devices (this process)."""
    import functools

    import jax
    from train_throughput import step_parts

    from sagd_jax.sharding import batch_sharding, make_mesh, replicate, replicated
    from sagd_jax.train.state import create_train_state, init_key
    from sagd_jax.train.step import INIT_STREAM, TRAIN_STREAM, stream_key, train_step

    if jax.device_count() < devices:
        raise SystemExit(f"{devices} devices asked, {jax.device_count()} present")
    mesh = make_mesh(jax.devices()[:devices])
    model, tx, process, shape = step_parts(config)
    batch_size = per_device_batch * devices
    state = replicate(create_train_state(model, tx, init_key(config.seed, INIT_STREAM), shape),
                      mesh)
    batch = jax.device_put(
        jax.random.uniform(jax.random.key(0), (batch_size, *shape), minval=-1, maxval=1),
        batch_sharding(mesh))
    key = stream_key(config.seed, TRAIN_STREAM)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, process=process,
                                     ema_decay=config.optim.ema_decay),
                   in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)
    holder = {"state": state}

    def one() -> Any:
        holder["state"], metrics = step(holder["state"], batch, key)
        return metrics["loss"]

    timed(one, 2)  # compile and warm up
    seconds = median(timed(one, steps))
    return {"devices": devices, "batch_size": batch_size, "step_time_s": seconds,
            "img_per_s": batch_size / seconds, "platform": jax.devices()[0].platform}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, "configs/quickstart.py")
    parser.add_argument("--devices", default="1,2,4,8", help="device counts to run")
    parser.add_argument("--per_device_batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per device count")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = check_args(args)
    if args.child is not None:
        import jax

        # Fake CPU devices (only the CPU backend reads this; accelerators are left as they are).
        jax.config.update("jax_num_cpu_devices", args.child)
        print(json.dumps(measure(config, args.child, args.per_device_batch, args.steps)))
        return 0
    try:
        counts = [int(v) for v in args.devices.split(",")]
    except ValueError:
        raise SystemExit(f"--devices={args.devices}: expected comma-separated integers") from None
    rows = []
    for count in counts:
        command = [sys.executable, os.path.abspath(__file__), f"--config={args.config}",
                   *(f"--set={s}" for s in args.set), f"--child={count}",
                   f"--per_device_batch={args.per_device_batch}", f"--steps={args.steps}"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{count} devices failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        base = rows[0]["img_per_s"]
        rows[-1] |= {"speedup": rows[-1]["img_per_s"] / base,
                     "per_device_efficiency": rows[-1]["img_per_s"] / base / count}
        print(f"{count} device(s): {rows[-1]['img_per_s']:.4g} img/s", flush=True)
    print_table(rows, ["devices", "platform", "batch_size", "step_time_s", "img_per_s",
                       "speedup", "per_device_efficiency"])
    write_json(args, {"per_device_batch": args.per_device_batch, "rows": rows}, __file__, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
