"""What every benchmark script shares: flags, timing, reference rates, the machine, JSON out.

Flags: ``--config FILE[:VARIANT]`` (a ``configs/*.py``), ``--set KEY=VALUE`` (repeatable config
overrides, parsed like ``--config.KEY=VALUE`` of the trainer) and ``--json FILE`` (a new file:
an existing one is refused before anything runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, REPO)


def make_parser(doc: str, default_config: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config,
                        help=f"a configs/*.py file, optionally :VARIANT (default {default_config})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.ch=32 (repeatable)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the results to this new JSON file")
    return parser


def check_args(args: argparse.Namespace) -> Any:
    """The config of ``--config`` and ``--set``; refuses an existing ``--json`` file. Raises
    ``SystemExit`` with one line naming the flag on bad input, before anything is compiled."""
    from sagd_jax.config import load_config_file

    if args.json and os.path.exists(args.json):
        raise SystemExit(f"--json={args.json}: exists; results are never overwritten")
    pairs = []
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set {item}: expected KEY=VALUE")
        pairs.append(tuple(item.split("=", 1)))
    path = args.config if os.path.isabs(args.config) else os.path.join(REPO, args.config)
    try:
        return load_config_file(path, pairs)
    except ValueError as err:
        raise SystemExit(f"--config={args.config}: {err}") from None


def machine() -> dict[str, Any]:
    """The device and software a figure was measured on."""
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` (each waited for with ``block_until_ready``)."""
    import jax

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def counted_flops(fn: Callable[..., Any], *args: Any) -> float:
    """XLA's FLOP count of ``fn(*args)`` (``fn`` not jitted), traced afresh with the kernel
    gradients' taps unrolled: cost analysis counts a loop body once (``unrolled_taps``)."""
    import functools

    import jax

    from sagd_jax.models.conv import unrolled_taps

    with unrolled_taps():  # a new partial: never a trace cached without the unrolling
        cost = jax.jit(functools.partial(fn)).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def matmul_gflops(size: int = 2048, dtype: str = "float32", repeats: int = 10) -> float:
    """The f32 (or ``dtype``) matmul rate of the default device, GFLOP/s (median of repeats)."""
    import jax

    a = jax.random.normal(jax.random.key(0), (size, size)).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (size, size)).astype(dtype)
    mm = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(mm(a, b))
    return 2 * size**3 / median(timed(lambda: mm(a, b), repeats)) / 1e9


def peak_memory_bytes() -> tuple[int, str]:
    """Peak device memory in use (accelerators) or the process's peak RSS (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    widths = [max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(cell(row.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)))


def print_scalars(result: dict[str, Any]) -> None:
    """One ``key  value`` line per numeric entry of a benchmark's result."""
    width = max(len(key) for key in result)
    for key, value in result.items():
        if isinstance(value, (int, float)):
            print(f"{key:>{width}s}  {value:.4g}")


def write_json(args: argparse.Namespace, result: dict[str, Any], script: str,
               argv: Sequence[str] | None) -> None:
    """Write ``result`` to the new file ``args.json`` (if given) with the command that made it
    (``script`` and ``argv``, or this process's own arguments), the machine and the config."""
    if not args.json:
        return
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = f"python benchmarks/{os.path.basename(script)} " + " ".join(arguments)
    record = {"command": command, "machine": machine(), "config": args.config,
              "overrides": args.set, **result}
    with open(args.json, "x") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.json}")
