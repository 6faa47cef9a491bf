"""Config sweeps from the command line: one resumable training run per grid point.

    python -m launch.sweep --config=configs/fashion_mnist.py \\
        --sweep noise.gamma=0,0.5,1,2 --sweep seed=0,1 [--set train.num_steps=2000] \\
        [--root=workdirs/sweeps/NAME] [--index=I | --emit=slurm | --emit=commands] [--dry_run]

Every point (the Cartesian product of the ``--sweep`` lists, with the ``--set`` values fixed)
trains in ``ROOT/<key-value name>``, e.g. ``ROOT/noise.gamma-0.5_seed-1``, through
``python -m sagd_jax.main``; running the sweep again resumes unfinished runs and skips finished
ones, then prints a table of each run's last logged metrics and sample-spectrum error.
``--index=I`` runs point I only (one task of a job array); ``--emit=slurm`` prints an sbatch
job-array script running one point per task; ``--emit=commands`` prints one trainer command per
line (for any other scheduler). Every point's config is validated before any run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any

from sagd_jax.config import load_config_file


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: its overrides (key, text) and its workdir."""

    index: int
    overrides: tuple[tuple[str, str], ...]  # the --set values, then the swept ones
    swept: tuple[tuple[str, str], ...]
    workdir: str

    def trainer_command(self, config_spec: str) -> list[str]:
        return [sys.executable, "-m", "sagd_jax.main", f"--config={config_spec}",
                f"--workdir={self.workdir}",
                *(f"--config.{key}={text}" for key, text in self.overrides)]


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
        raise ValueError(f"{flag} {text}: expected KEY=VALUE[,VALUE...]")
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


def validate_points(config_spec: str, points: list[Point]) -> list[Any]:
    """Each point's config, fully validated (keys, types, values); one-line errors."""
    from sagd_jax.train.loop import build_run

    configs = []
    for point in points:
        config = load_config_file(config_spec, point.overrides)
        try:
            build_run(config)
        except ValueError as err:
            raise ValueError(f"point {point.index} ({run_name(point.swept)}): {err}") from None
        configs.append(config)
    return configs


def is_finished(workdir: str, num_steps: int) -> bool:
    return os.path.isdir(os.path.join(workdir, "checkpoints", str(num_steps)))


def last_record(workdir: str) -> dict[str, Any]:
    """The last logged metrics of a run and its latest sample-spectrum error (if any)."""
    record: dict[str, Any] = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        if lines:
            record = json.loads(lines[-1])
    spectra = sorted(glob.glob(os.path.join(workdir, "samples", "spectrum_*.json")))
    if spectra:
        with open(spectra[-1]) as f:
            record["spectrum_error"] = json.load(f)["mean_abs_log_ratio"]
    return record


def summary_table(points: list[Point], statuses: dict[int, str]) -> tuple[str, list[dict]]:
    """A text table (one row per point) and the same rows as dicts."""
    rows = []
    for point in points:
        record = last_record(point.workdir)
        rows.append({**dict(point.swept), "status": statuses.get(point.index, "-"),
                     "step": record.get("step"), "loss": record.get("loss"),
                     **{k: v for k, v in record.items() if k.startswith("loss_t")},
                     "img_per_sec": record.get("img_per_sec"),
                     "spectrum_error": record.get("spectrum_error")})
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    text = "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True))
                     for line in table)
    return text, rows


def slurm_script(args: argparse.Namespace, count: int) -> str:
    """An sbatch job array with one sweep point per task (edit the resources to taste)."""
    argv = [a for a in sys.argv[1:] if not a.startswith("--emit")]
    command = shlex.join(["python", "-m", "launch.sweep", *argv]) + " --index=$SLURM_ARRAY_TASK_ID"
    return "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=sagd-sweep",
        f"#SBATCH --array=0-{count - 1}",
        "#SBATCH --nodes=1",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        f"#SBATCH --output={os.path.join(args.root, 'logs', 'slurm-%A_%a.log')}",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        command,
        "",
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launch.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/NAME.py[:VARIANT]")
    parser.add_argument("--sweep", action="append", default=[],
                        help="KEY=V1,V2,... (repeat for a grid)")
    parser.add_argument("--set", action="append", default=[],
                        help="KEY=VALUE fixed for every point (repeatable)")
    parser.add_argument("--root", default=None,
                        help="parent of the runs' workdirs (default workdirs/sweeps/<config>)")
    parser.add_argument("--index", type=int, default=None, help="run point INDEX only")
    parser.add_argument("--emit", choices=("slurm", "commands"), default=None,
                        help="print a job-array script or the commands instead of running")
    parser.add_argument("--dry_run", action="store_true", help="validate and list the points")
    parser.add_argument("--json", default=None, help="also write the summary rows to FILE")
    args = parser.parse_args(argv)
    if args.root is None:
        name = os.path.splitext(os.path.basename(args.config.partition(":")[0]))[0]
        variant = args.config.partition(":")[2]
        args.root = os.path.join("workdirs", "sweeps", name + (f"-{variant}" if variant else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        points = make_points(args.root, args.sweep, args.set)
        if args.index is not None and not 0 <= args.index < len(points):
            raise ValueError(f"--index={args.index}: the sweep has {len(points)} points")
        configs = validate_points(args.config, points)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.emit == "slurm":
        print(slurm_script(args, len(points)), end="")
        return 0
    if args.emit == "commands":
        for point in points:
            print(shlex.join(point.trainer_command(args.config)))
        return 0
    chosen = points if args.index is None else [points[args.index]]
    statuses: dict[int, str] = {}
    for point in chosen:
        num_steps = configs[point.index].train.num_steps
        if args.dry_run:
            statuses[point.index] = "finished" if is_finished(point.workdir, num_steps) else "todo"
            continue
        if is_finished(point.workdir, num_steps):
            statuses[point.index] = "finished"
            print(f"[{point.index + 1}/{len(points)}] {point.workdir}: finished, skipped",
                  flush=True)
            continue
        log_dir = os.path.join(args.root, "logs")
        os.makedirs(log_dir, exist_ok=True)
        log_path = os.path.join(log_dir, f"{os.path.basename(point.workdir)}.log")
        print(f"[{point.index + 1}/{len(points)}] {point.workdir}: training (log {log_path})",
              flush=True)
        start = time.perf_counter()
        with open(log_path, "a") as log:
            code = subprocess.call(point.trainer_command(args.config), stdout=log, stderr=log)
        took = time.perf_counter() - start
        statuses[point.index] = "finished" if code == 0 else f"failed ({code})"
        print(f"    {statuses[point.index]} after {took:.0f} s", flush=True)
    text, rows = summary_table(chosen, statuses)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(s == "finished" or args.dry_run for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
