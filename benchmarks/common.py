"""What every benchmark script shares: flags, timing, reference rates, the machine, JSON out.

Flags (absl, through ``sagd_jax.cli``): ``--config=FILE[:VARIANT]`` (a ``configs/*.py``; each
script that takes a config has its own default) with ``--config.KEY=VALUE`` overrides, and
``--json=FILE`` (a new file: an existing one is refused before anything runs). Every script
runs as ``python benchmarks/NAME.py`` from any working directory (it puts the repository on
``sys.path`` first) and imports as ``benchmarks.NAME``. A script is

    def define_flags(fv): flags.DEFINE_integer("steps", 4, "...", flag_values=fv)
    def measure(fv, command) -> dict | None: ...   # fv.config: the config; returns the result
    def main(argv=None) -> int:
        return common.main(__doc__, __file__, define_flags, measure, argv, "configs/X.py")

Bad input stops with ``error: ...`` and exit status 2 before anything is measured; a failed
measurement (``Failed``) with exit status 1.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from sagd_jax import cli, files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Measure = Callable[[flags.FlagValues, "Command"], "dict[str, Any] | None"]


def int_list(values: list[str], flag: str, distinct: bool = False) -> list[int]:
    """``--flag=1,2,3`` (absl's list) as integers >= 1 (``distinct``: no repeats); a one-line
    ``ValueError`` else."""
    text = ",".join(values)
    try:
        ints = [int(v) for v in values]
    except ValueError:
        raise ValueError(f"{flag}={text}: expected comma-separated integers") from None
    if not ints or min(ints) < 1 or (distinct and len(set(ints)) != len(ints)):
        raise ValueError(f"{flag}={text}: values must be {'distinct and ' if distinct else ''}"
                         ">= 1")
    return ints


class Failed(Exception):
    """A measurement that could not be made (not bad input): ``error: ...``, exit status 1."""


@dataclasses.dataclass(frozen=True)
class Command:
    """How a script was called: its file, ``argv`` (program first) and its default config
    spec (repository-relative; None: the script takes no config)."""

    script: str
    argv: tuple[str, ...]
    default_config: str | None

    @property
    def config_spec(self) -> str | None:
        """The ``--config`` value given, else the default (absolute: any working directory)."""
        spec = cli.config_args(self.argv[1:])[0]
        if spec is None and self.default_config is not None:
            spec = os.path.join(REPO, self.default_config)
        return spec

    @property
    def overrides(self) -> list[str]:
        """``KEY=VALUE`` of every ``--config.KEY=VALUE``, in order."""
        return cli.config_args(self.argv[1:])[1]

    def config_flags(self) -> list[str]:
        """``--config=SPEC`` and the overrides, for another tool or process given the same
        config."""
        return [f"--config={self.config_spec}", *(f"--config.{item}" for item in self.overrides)]

    def text(self) -> str:
        """The command line, as ``python benchmarks/NAME.py ARGS``."""
        path = os.path.relpath(os.path.abspath(self.script), REPO)
        return " ".join(["python", path, *self.argv[1:]])


def main(doc: str | None, script: str, define_flags: Callable[[flags.FlagValues], None],
         measure: Measure, argv: Sequence[str] | None = None,
         default_config: str | None = None) -> int:
    """Run a benchmark through ``cli.run``: the shared flags plus ``define_flags``, then
    ``measure(flags, command)``; its result goes to ``--json`` with the command, the machine and
    the config. ``default_config``: repository-relative spec (None: the script takes no config).
    Returns the exit status."""
    command = Command(script, tuple(sys.argv if argv is None else argv), default_config)

    def define(fv: flags.FlagValues) -> None:
        if default_config is not None:
            cli.define_config(fv, default=os.path.join(REPO, default_config))
        flags.DEFINE_string("json", None, "Also write the results to this new JSON file (an "
                            "existing one is refused).", flag_values=fv)
        define_flags(fv)

    def body(fv: flags.FlagValues) -> int | None:
        files.refuse_existing("--json", fv.json)
        try:
            result = measure(fv, command)
        except Failed as err:
            sys.stdout.flush()
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 1
        if result is not None and fv.json:
            write_json(fv.json, result, command)
        return None

    return cli.run(doc, define, body, command.argv)


def write_json(path: str, result: dict[str, Any], command: Command) -> None:
    """``result`` in the new file ``path`` with the command that made it, the machine and (for
    a script with a config) the config spec and overrides."""
    record: dict[str, Any] = {"command": command.text(), "machine": machine()}
    if command.default_config is not None:
        record |= {"config": command.config_spec, "overrides": command.overrides}
    files.write_new_json("--json", path, record | result)
    print(f"wrote {path}")


def scalars(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The numeric entries of a result as ``console.table`` rows (``key``, ``value``)."""
    return [{"key": key, "value": value} for key, value in result.items()
            if isinstance(value, (int, float))]


def machine() -> dict[str, Any]:
    """The device and software a figure was measured on."""
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def default_mesh() -> Any:
    """A one-device mesh on the default device: where the single-device figures are measured."""
    import jax

    from sagd_jax.sharding import make_mesh

    return make_mesh(jax.devices()[:1])


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` (each waited for with ``block_until_ready``)."""
    import jax

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def counted_flops(build: Callable[[], Any], *args: Any) -> float:
    """XLA's FLOP count of the jitted function ``build()`` returns, on ``args``; built and
    traced afresh with the kernel gradients' taps unrolled (cost analysis counts a loop body
    once: ``unrolled_taps``). ``build`` must make a new function: a cached trace would not
    have the taps unrolled."""
    from sagd_jax.models.conv import unrolled_taps

    with unrolled_taps():
        cost = build().lower(*args).cost_analysis()
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

