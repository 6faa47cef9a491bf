"""Time to the first step of a training run, without and with JAX's persistent compilation cache.

    python benchmarks/compile_cache.py                          # DDPM++ 64 ch, batch 8
    python benchmarks/compile_cache.py --config=configs/quickstart.py --json=out.json

Starts the trainer (``python -m sagd_jax.main``) in fresh processes on one new workdir and a new,
empty ``train.compilation_cache_dir``, and stops each start with SIGTERM once its first step is
done (it checkpoints and exits 75, so no sampler is compiled):

1. ``cold``: the run's first start, on the empty cache (fills it);
2. ``warm``: the second start of the same run (it resumes), on the filled cache;
3. ``uncached`` (``--control``): a third start with the cache off, to tell the cache's effect
   from the difference between starting and resuming.

Each start reports ``first_step_s`` (the trainer's own figure: from the start of training,
after imports and flag parsing, to the first step's state ready), ``process_s`` (from launching
the process to that line), and the programs XLA compiled and loaded from the cache. The
environment's ``JAX_COMPILATION_CACHE_DIR`` and ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``
are removed from the trainer's, so the project's own settings are measured
(``--min_compile_seconds`` sets the second). If the config's
dataset is not available offline, the runs read ``natural_patches`` of the same size instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console

FIRST_STEP = re.compile(r"first step ([\d.]+) s after the start: the train step (.+?) \((.*)\)$")
CACHED = re.compile(r"programs: (\d+) loaded in ([\d.]+) s, (\d+) compiled in ([\d.]+) s")
UNCACHED = re.compile(r"programs: (\d+) compiled in ([\d.]+) s")


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", 8, "Global batch of the runs (the config's own is "
                         "replaced: the first step's run time is not what is measured).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("control", True, "Also time a third start with the cache off.",
                      flag_values=fv)
    flags.DEFINE_float("min_compile_seconds", None, "Cache programs that took this long to "
                       "compile (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS for the trainer; "
                       "default: the trainer's own setting).", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("timeout", 900, "Seconds one start may take to its first step.",
                         lower_bound=1, flag_values=fv)


def parse(line: str) -> dict[str, Any] | None:
    """The figures of the trainer's first-step line (None: not that line)."""
    found = FIRST_STEP.search(line)
    if found is None:
        return None
    out: dict[str, Any] = {"first_step_s": float(found[1]), "train_step": found[2]}
    if cached := CACHED.search(found[3]):
        out |= {"loaded": int(cached[1]), "load_s": float(cached[2]),
                "compiled": int(cached[3]), "compile_s": float(cached[4])}
    elif uncached := UNCACHED.search(found[3]):
        out |= {"loaded": 0, "load_s": 0.0, "compiled": int(uncached[1]),
                "compile_s": float(uncached[2])}
    return out


def start(args: list[str], env: dict[str, str], timeout: float, log: str) -> dict[str, Any]:
    """One trainer process, stopped by SIGTERM after its first step; its figures."""
    launched = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "sagd_jax.main", *args],
                                   cwd=common.REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        result = None
        try:
            assert process.stderr is not None
            for line in process.stderr:
                out.write(line)
                if result is None and (result := parse(line.strip())) is not None:
                    result["process_s"] = time.perf_counter() - launched
                    process.send_signal(signal.SIGTERM)  # checkpoint and stop (exit 75)
            status = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
    if result is None or status not in (0, 75):
        raise common.Failed(f"the trainer stopped with exit status {status} before its first "
                            f"step's line (or after {timeout} s); its output: {log}")
    return result


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    from sagd_jax.data import get_source

    dataset = fv.config.data.name
    try:
        get_source(fv.config.data)
    except ValueError as err:
        console.warning("%s unavailable (%s); reading natural_patches instead", dataset, err)
        dataset = "natural_patches"
    env = {key: value for key, value in os.environ.items() if key not in (
        "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    if fv.min_compile_seconds is not None:
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(fv.min_compile_seconds)
    root = tempfile.mkdtemp(prefix="sagd-compile-cache-")
    cache = os.path.join(root, "xla")
    base = [*command.config_flags(), f"--config.data.name={dataset}",
            f"--config.train.batch_size={fv.batch_size}", "--config.train.num_steps=1000000",
            "--config.train.log_every=1000000", "--config.train.checkpoint_every=1000000",
            "--config.train.sample_every=1000000", f"--workdir={os.path.join(root, 'run')}"]
    starts = [("cold", cache), ("warm", cache)] + ([("uncached", "")] if fv.control else [])
    rows = []
    for name, cache_dir in starts:
        row = {"start": name, **start([*base, f"--config.train.compilation_cache_dir={cache_dir}"],
                                      env, fv.timeout, os.path.join(root, f"{name}.log"))}
        rows.append(row)
        print(f"{name}: first step {row['first_step_s']:.1f} s after the start "
              f"({row['process_s']:.1f} s after launch): the train step {row['train_step']}",
              flush=True)
    entries = sorted(os.listdir(cache))
    by = {row["start"]: row for row in rows}
    result: dict[str, Any] = {
        "dataset": dataset, "batch_size": fv.batch_size, "starts": rows,
        "min_compile_seconds": fv.min_compile_seconds,
        "cold_first_step_s": by["cold"]["first_step_s"],
        "warm_first_step_s": by["warm"]["first_step_s"],
        "warm_over_cold": by["warm"]["first_step_s"] / by["cold"]["first_step_s"],
        "warm_over_cold_process": by["warm"]["process_s"] / by["cold"]["process_s"],
        "cache_entries": len(entries),
        "cache_bytes": sum(os.path.getsize(os.path.join(cache, e)) for e in entries)}
    if fv.control:
        result["warm_over_uncached"] = (by["warm"]["first_step_s"]
                                        / by["uncached"]["first_step_s"])
    print(console.table(rows, ["start", "first_step_s", "process_s", "train_step", "loaded",
                               "load_s", "compiled", "compile_s"]))
    print(console.table(common.scalars(result)))
    shutil.rmtree(root)  # kept where a start failed: its log is there
    return result


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
