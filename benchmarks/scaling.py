"""Data-parallel scaling of the train step over 1, 2, 4, 8 devices (weak scaling).

    python benchmarks/scaling.py                                 # quickstart model
    python benchmarks/scaling.py --config=configs/cifar10_ddpmpp.py:cpu --per_device_batch=8

Each device count runs in its own process with the trainer's step and sharding
(``Run.train_step``): a ``data`` mesh over the first N devices, the batch
(``--per_device_batch`` x N) split over it, the state replicated, gradients all-reduced by
XLA. Reports img/s, ``speedup`` (img/s over that of the first count, one device by default)
and ``per_device_efficiency`` (speedup / N). On a CPU the devices are fake
(``jax_num_cpu_devices``): they share the same cores, so perfect scaling there is a *flat*
img/s (speedup 1) and the figure measures what partitioning and the collectives cost; on
GPUs/TPUs the devices are real and perfect scaling is speedup N.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console


def measure_devices(config: Any, devices: int, per_device_batch: int,
                    steps: int) -> dict[str, Any]:
    """img/s of the trainer's step (``Run.train_step``) on the first ``devices`` devices (this
    process), the batch split over them."""
    import jax

    from sagd_jax.run import Run
    from sagd_jax.sharding import batch_sharding, make_mesh

    if jax.device_count() < devices:
        raise ValueError(f"--child={devices}: {devices} devices asked, {jax.device_count()} "
                         "present")
    batch_size = per_device_batch * devices
    config.train.batch_size = batch_size
    run = Run.from_config(config, load_data=False, device_count=devices)
    mesh = make_mesh(jax.devices()[:devices])
    batch = jax.device_put(
        jax.random.uniform(jax.random.key(0), (batch_size, *run.image_shape), minval=-1,
                           maxval=1), batch_sharding(mesh))
    step = run.train_step(mesh)
    holder = {"state": run.init_state(mesh)}

    def one() -> Any:
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    common.timed(one, 2)  # compile and warm up
    seconds = common.median(common.timed(one, steps))
    return {"devices": devices, "batch_size": batch_size, "step_time_s": seconds,
            "img_per_s": batch_size / seconds, "platform": jax.devices()[0].platform}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to run.", flag_values=fv)
    flags.DEFINE_integer("per_device_batch", 8, "Batch per device.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("steps", 5, "Timed steps per device count.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("child", None, "Internal: measure this device count in this process "
                         "and print it as JSON.", lower_bound=1, flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any] | None:
    config = fv.config
    if fv.child is not None:
        import jax

        # Fake CPU devices (only the CPU backend reads this; accelerators are left as they are).
        jax.config.update("jax_num_cpu_devices", fv.child)
        print(json.dumps(measure_devices(config, fv.child, fv.per_device_batch, fv.steps)))
        return None
    try:
        counts = [int(v) for v in fv.devices]
    except ValueError:
        raise ValueError(f"--devices={','.join(fv.devices)}: expected comma-separated "
                         "integers") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--devices={','.join(fv.devices)}: counts must be >= 1")
    from sagd_jax.run import Run

    for count in counts:  # bad input stops here, before any process starts
        checked = copy.deepcopy(config)
        checked.train.batch_size = fv.per_device_batch * count
        Run.from_config(checked, load_data=False, device_count=count)
    rows = []
    for count in counts:
        child = [sys.executable, os.path.abspath(__file__), *command.config_flags(),
                 f"--child={count}", f"--per_device_batch={fv.per_device_batch}",
                 f"--steps={fv.steps}", f"--verbosity={fv.verbosity}"]
        done = subprocess.run(child, cwd=common.REPO, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-2000:])
            raise common.Failed(f"{count} devices: the measuring process stopped with exit "
                                f"status {done.returncode}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        base = rows[0]["img_per_s"]
        rows[-1] |= {"speedup": rows[-1]["img_per_s"] / base,
                     "per_device_efficiency": rows[-1]["img_per_s"] / base / count}
        print(f"{count} device(s): {rows[-1]['img_per_s']:.4g} img/s", flush=True)
    print(console.table(rows, ["devices", "platform", "batch_size", "step_time_s", "img_per_s",
                               "speedup", "per_device_efficiency"]))
    return {"per_device_batch": fv.per_device_batch, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv, "configs/quickstart.py")


if __name__ == "__main__":
    sys.exit(main())
