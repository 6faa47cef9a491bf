"""Config sweeps from the command line: one resumable training run per grid point.

    python -m launch.sweep --config=configs/fashion_mnist.py \\
        --sweep=noise.gamma=0,0.5,1,2 --sweep=seed=0,1 [--set=train.num_steps=2000] \\
        [--root=workdirs/sweeps/NAME] [--index=I | --emit=slurm | --emit=commands] [--dry_run] \\
        [--json=FILE]

Every point (the Cartesian product of the ``--sweep`` lists, with the ``--set`` values fixed)
trains in ``ROOT/<key-value name>``, e.g. ``ROOT/noise.gamma-0.5_seed-1``, through
``python -m sagd_jax.main`` (``sagd_jax.train_subprocess``: one process per run in its own
session, its output in ``ROOT/logs/<name>.log`` and relayed to the sweep's console as it comes,
each line prefixed ``[I/N] <name> |``); running the sweep again resumes unfinished
runs and skips finished ones, then prints a table of each run's last logged metrics and
sample-spectrum error (``--json``: also to a new file).
``--index=I`` runs point I only (one task of a job array); ``--emit=slurm`` prints an sbatch
job-array script running one point per task (a task whose point was stopped requeues itself);
``--emit=commands`` prints one trainer command per line (for any other scheduler). Every point's
config is validated before any run starts: an unknown key or a bad value stops the sweep with a
one-line error and exit status 2, nothing written.

A trainer that exits 75 (stopped by a signal after saving) leaves its point "stopped
(resumable)" and no further point starts. SIGTERM or SIGINT (Ctrl-C) to the sweep goes on to
the running trainer, which saves and stops; the sweep waits for it and starts no further point.
A trainer started by the sweep stops (saving, as on SIGTERM) when the sweep dies, even by
SIGKILL (Linux); a point whose workdir a live trainer still holds (one of an earlier sweep) is
reported ``running (pid N)`` and not started again.
Exit status: 0 every point finished, 75 stopped (run the same command again to resume), 1 a run
failed or still runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

from sagd_jax import cli, console, files
from sagd_jax.config import check_keys, load_config_file
from sagd_jax.train_subprocess import (
    StopSignals,
    follow_log,
    running_holder,
    train,
    trainer_command,
)


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: its overrides (key, text) and its workdir."""

    index: int
    overrides: tuple[tuple[str, str], ...]  # the --set values, then the swept ones
    swept: tuple[tuple[str, str], ...]
    workdir: str

    def trainer_command(self, config_spec: str) -> list[str]:
        return trainer_command(config_spec, self.workdir, self.overrides)


def split_values(text: str) -> list[str]:
    """``a,b,(1,2)`` -> ``['a', 'b', '(1,2)']``: commas inside brackets do not split."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "([" and 1 or 0
        depth -= char in ")]" and 1 or 0
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [v.strip() for v in values]


def parse_assignment(flag: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{flag}={text}: expected KEY=VALUE[,VALUE...]")
    return key.strip(), value


def run_name(overrides: tuple[tuple[str, str], ...]) -> str:
    """A readable directory name: ``noise.gamma-0.5_seed-1``; odd characters become ``~``."""
    parts = [f"{key}-{text}" for key, text in overrides]
    return re.sub(r"[^A-Za-z0-9._-]", "~", "_".join(parts)) or "default"


def make_points(root: str, sweeps: list[str], sets: list[str]) -> list[Point]:
    """The grid's points, in row-major order of the ``--sweep`` flags."""
    axes = []
    for text in sweeps:
        key, values = parse_assignment("--sweep", text)
        axes.append([(key, v) for v in split_values(values)])
    fixed = tuple(parse_assignment("--set", text) for text in sets)
    points, names = [], set()
    for index, combo in enumerate(itertools.product(*axes)):
        name = run_name(tuple(combo))
        if name in names:
            raise ValueError(f"--sweep: two points share the workdir name {name!r}")
        names.add(name)
        points.append(Point(index, fixed + tuple(combo), tuple(combo), os.path.join(root, name)))
    return points


def check_known_keys(config_spec: str, sweeps: Sequence[str], sets: Sequence[str]) -> None:
    """Refuse a ``--sweep`` / ``--set`` key the config does not have, naming the closest."""
    base = load_config_file(config_spec)
    for flag, texts in (("--set", sets), ("--sweep", sweeps)):
        for text in texts:
            check_keys([parse_assignment(flag, text)[0]], base, flag=f"{flag}=")


def validate_points(config_spec: str, points: list[Point]) -> list[Any]:
    """Each point's config, fully validated (keys, types, values, data) by ``Run.from_config``;
    one-line errors naming the point."""
    from sagd_jax.run import Run

    configs = []
    for point in points:
        try:
            config = Run.from_config(load_config_file(config_spec, point.overrides)).config
        except ValueError as err:
            raise ValueError(f"point {point.index} ({run_name(point.swept)}): {err}") from None
        configs.append(config)
    return configs


def summary_rows(points: list[Point], statuses: dict[int, str]) -> list[dict[str, Any]]:
    """One row per point: its swept values, status, and the run's last logged metrics and
    sample-spectrum error."""
    from sagd_jax.workdir import Workdir

    rows = []
    for point in points:
        workdir = Workdir(point.workdir)
        record = workdir.last_metrics()
        rows.append({**dict(point.swept), "status": statuses.get(point.index, "-"),
                     "step": record.get("step"), "loss": record.get("loss"),
                     **{k: v for k, v in record.items() if k.startswith("loss_t")},
                     "img_per_sec": record.get("img_per_sec"),
                     "spectrum_error": workdir.last_spectrum_error()})
    return rows


def sweep_argv(fv: flags.FlagValues, root: str) -> list[str]:
    """The flags that define the sweep's points: config, grid, fixed values, root."""
    return [f"--config={fv.config}", *(f"--sweep={text}" for text in fv.sweep),
            *(f"--set={text}" for text in fv.set), f"--root={root}"]


def slurm_script(fv: flags.FlagValues, root: str, count: int) -> str:
    """An sbatch job array with one sweep point per task (edit the resources to taste). Before
    the time limit SLURM sends SIGTERM to the task's shell, which passes it on to the sweep (and
    the sweep to its trainer); a point stopped that way (exit 75) requeues its task, which then
    resumes from the checkpoint."""
    command = (shlex.join(["python", "-m", "launch.sweep", *sweep_argv(fv, root)])
               + ' --index="$SLURM_ARRAY_TASK_ID" &')
    return "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=sagd-sweep",
        f"#SBATCH --array=0-{count - 1}",
        "#SBATCH --nodes=1",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --signal=B:TERM@120",
        "#SBATCH --requeue",
        f"#SBATCH --output={os.path.join(root, 'logs', 'slurm-%A_%a.log')}",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        command,
        "pid=$!",
        "trap 'kill -TERM \"$pid\" 2>/dev/null || true' TERM INT  # on to the sweep's trainer",
        "status=0",
        "wait \"$pid\" || status=$?",
        'while kill -0 "$pid" 2>/dev/null; do status=0; wait "$pid" || status=$?; done',
        f"if [[ $status -eq {cli.STOPPED} ]]; then  # stopped after saving: resume later",
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" ||',
        '    echo "could not requeue; submit the task again to resume" >&2',
        "fi",
        'exit "$status"',
        "",
    ])


def default_root(config_spec: str) -> str:
    """``workdirs/sweeps/<config name>[-<variant>]``."""
    path, _, variant = config_spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("workdirs", "sweeps", name + (f"-{variant}" if variant else ""))


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("config", None, "configs/NAME.py[:VARIANT] (passed on to the trainer).",
                        flag_values=fv, required=True)
    flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,... (repeat for a grid).",
                              flag_values=fv)
    flags.DEFINE_multi_string("set", [], "KEY=VALUE fixed for every point (repeatable).",
                              flag_values=fv)
    flags.DEFINE_string("root", None, "Parent of the runs' workdirs (default "
                        "workdirs/sweeps/<config>).", flag_values=fv)
    flags.DEFINE_integer("index", None, "Run point INDEX only.", flag_values=fv)
    flags.DEFINE_enum("emit", None, ["slurm", "commands"], "Print a job-array script or the "
                      "trainer commands instead of running.", flag_values=fv)
    flags.DEFINE_boolean("dry_run", False, "Validate and list the points.", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the summary rows to this new file.",
                        flag_values=fv)


def relay_line(tag: str, line: str) -> None:
    """A line of a point's trainer on the sweep's console: ``[1/8] seed-0 | step 25/450 ...``."""
    console.info("%s %s", tag, line, all_processes=True)


def point_status(code: int) -> str:
    """A trainer's exit status in words: ``finished``, ``stopped (resumable)``,
    ``failed (3: non-finite loss)``, ``failed (killed by SIGKILL)``."""
    if code == 0:
        return "finished"
    if code == cli.STOPPED:
        return "stopped (resumable)"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"failed (killed by {signal.Signals(-code).name})"
    word = cli.EXIT_STATUSES.get(code)
    return f"failed ({code}: {word})" if word else f"failed ({code})"


def sweep(fv: flags.FlagValues) -> int:
    from sagd_jax.workdir import Workdir

    root = default_root(fv.config) if fv.root is None else fv.root
    points = make_points(root, fv.sweep, fv.set)
    if fv.index is not None and not 0 <= fv.index < len(points):
        raise ValueError(f"--index={fv.index}: the sweep has {len(points)} points")
    files.refuse_existing("--json", fv.json)
    check_known_keys(fv.config, fv.sweep, fv.set)
    configs = validate_points(fv.config, points)
    console.info("sweep: %d valid point(s) under %s", len(points), root)
    if fv.emit == "slurm":
        print(slurm_script(fv, root, len(points)), end="")
        return 0
    if fv.emit == "commands":
        for point in points:
            print(shlex.join(point.trainer_command(fv.config)))
        return 0
    chosen = points if fv.index is None else [points[fv.index]]
    statuses: dict[int, str] = {}
    stopped = False
    with StopSignals().installed() as stops:
        for point in chosen:
            finished = Workdir(point.workdir).is_finished(configs[point.index].train.num_steps)
            where = f"[{point.index + 1}/{len(points)}] {point.workdir}"
            if fv.dry_run or finished or stopped or stops.received is not None:
                statuses[point.index] = "finished" if finished else "todo"
                if finished and not fv.dry_run:
                    console.info("%s: finished, skipped", where)
                continue
            holder = running_holder(point.workdir)
            if holder is not None:  # a trainer of an earlier sweep still at work there
                statuses[point.index] = f"running (pid {holder['pid']})"
                console.warning("%s: its trainer pid %s (started %s) is still running; not "
                                "started again", where, holder["pid"], holder.get("started", "?"))
                continue
            name = os.path.basename(point.workdir)
            log_path = os.path.join(root, "logs", f"{name}.log")
            console.info("%s: training (log %s)", where, log_path)
            start = time.perf_counter()
            tag = f"[{point.index + 1}/{len(points)}] {name} |"
            # The trainer in its own session: a terminal's Ctrl-C reaches it once, via stops;
            # its lines (progress, errors) are relayed from its log as they come.
            with follow_log(log_path, functools.partial(relay_line, tag)):
                code = train(point.trainer_command(fv.config), log_path, stops)
            statuses[point.index] = point_status(code)
            stopped = stopped or code == cli.STOPPED
            console.info("%s: %s after %s", where, statuses[point.index],
                         console.duration(time.perf_counter() - start))
    stopped = stopped or stops.received is not None
    if stopped:
        how = (f"stopped by {signal.Signals(stops.received).name}" if stops.received
               else "a run was stopped by a signal")
        console.warning("sweep: %s; %d point(s) not started; run the same command again to "
                        "resume", how, sum(s == "todo" for s in statuses.values()))
    rows = summary_rows(chosen, statuses)
    print(console.table(rows))
    if fv.json is not None:
        files.write_new_json("--json", fv.json, rows)
    if stopped:
        return cli.STOPPED
    return 0 if all(s == "finished" or fv.dry_run for s in statuses.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, sweep, argv)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
