"""What the user sees on the terminal: the run's own progress, warnings, and nothing else.

``setup(verbosity)`` silences the INFO chatter of the libraries underneath (Orbax, absl,
TensorFlow, JAX) unless asked for it; ``info`` / ``warning`` print this project's lines (to
stderr, on process 0 for ``info``); ``Progress`` rewrites one line for long CLI work on a
terminal and prints every few items when the output is a file; ``table`` formats rows.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

LOGGER = logging.getLogger("sagd_jax")
QUIET, EVERYTHING = -1, 0  # absl verbosity: -1 = warnings only, 0 = INFO, 1+ = debug levels
_NOISY = ("absl", "orbax", "jax", "tensorflow", "tensorstore", "etils", "h5py", "matplotlib")


_verbosity = QUIET
_silent = False  # quiet(): no progress lines either


def import_quietly(module: str) -> types.ModuleType:
    """Import ``module`` with file descriptor 2 closed to the C++ INFO lines that TensorFlow
    prints at import, whatever ``TF_CPP_MIN_LOG_LEVEL`` says (kept with ``--verbosity>=0``)."""
    if module in sys.modules or _verbosity >= 0:
        return importlib.import_module(module)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                return importlib.import_module(module)
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def quiet_native_logs(verbosity: int = QUIET) -> None:
    """TensorFlow's C++ INFO lines off (unless ``verbosity >= 0`` or the user set
    ``TF_CPP_MIN_LOG_LEVEL``); takes effect only before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbosity < 0 else "0")


def setup(verbosity: int = QUIET) -> None:
    """Route this project's lines to stderr; third-party logging at WARNING unless
    ``verbosity >= 0`` (absl's scale: 0 = INFO, 1 = DEBUG)."""
    global _verbosity
    _verbosity = verbosity
    quiet_native_logs(verbosity)
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    for name in _NOISY:
        logging.getLogger(name).setLevel(level)
    try:
        from absl import logging as absl_logging

        name = "warning" if verbosity < 0 else "info" if verbosity == 0 else "debug"
        absl_logging.set_verbosity(name)
        absl_logging.set_stderrthreshold(name)
        if verbosity >= 0:
            absl_logging.use_absl_handler()
    except ImportError:  # pragma: no cover - absl is a dependency
        pass
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _OrbaxFailures)]:
            logger.removeFilter(old)
        if verbosity < 0:
            logger.addFilter(_OrbaxFailures())
    sys.unraisablehook = _quiet_unraisable if verbosity < 0 else sys.__unraisablehook__
    if not LOGGER.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
    LOGGER.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)


@contextlib.contextmanager
def quiet(silent: bool = False) -> Iterator[None]:
    """The console of a Python API call: this project's lines and progress as the tools print
    them, the libraries' INFO logs off (``setup``, unless already done); ``silent``: warnings
    only."""
    global _silent
    if not LOGGER.handlers:
        setup(QUIET)
    saved = LOGGER.level, _silent
    LOGGER.setLevel(logging.WARNING if silent else logging.INFO)
    _silent = silent
    try:
        yield
    finally:
        LOGGER.setLevel(saved[0])
        _silent = saved[1]


class _OrbaxFailures(logging.Filter):
    """Drops Orbax's own error records (a failed save's tracebacks, logged from each of its
    threads): Orbax raises the failure too, and ``sagd_jax.checkpoint`` names it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            return False
        return not (record.name == "asyncio" and "orbax" in record.getMessage())


def _quiet_unraisable(unraisable: Any) -> None:
    """Drop the "Event loop is closed" of TensorStore callbacks that outlive a failed Orbax
    save or restore (dozens of tracebacks after the one line that names the failure)."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (captured output in tests)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _is_main_process() -> bool:
    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0


def info(message: str, *args: Any, all_processes: bool = False) -> None:
    """A progress line (``%``-formatted), printed by process 0 (every process if asked)."""
    if all_processes or _is_main_process():
        LOGGER.info(message, *args)


def warning(message: str, *args: Any) -> None:
    """A warning line, printed by every process."""
    LOGGER.warning("warning: " + message, *args)


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``done / total`` with rate and ETA for long CLI work (sampling, evaluation, training a
    classifier): one line rewritten on a terminal, else a line every ``every`` items and at
    the end.

    The first update (compilation, warm-up) is timed on its own: ``first chunk 41s (with
    warm-up), ETA ?``; the rate and ETA count only the items after it. The last line gives the
    total time; ``close()`` ends the line of work stopped short of ``total``. ``clock``: the
    time source (tests).

        progress = Progress("sampling", total=8, unit="chunk")
        for i in range(8): ...; progress.update(1)
    """

    def __init__(self, label: str, total: int, unit: str = "item", done: int = 0,
                 every: int = 1, stream: Any = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.label, self.total, self.unit, self.every = label, total, unit, max(1, every)
        self.done = self.start_done = done
        self.stream = sys.stderr if stream is None else stream
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.clock = clock
        self.start = clock()
        self.first: tuple[float, int] | None = None  # (time, done) at the first update
        self.active = _is_main_process()

    def rate(self, now: float | None = None) -> float | None:
        """Items per second since the first update (at ``now``, default the clock's time);
        None until an item after the first update is done."""
        if self.first is None:
            return None
        seconds = (self.clock() if now is None else now) - self.first[0]
        items = self.done - self.first[1]
        return items / seconds if items > 0 and seconds > 0 else None

    def update(self, count: int = 1, note: str = "") -> None:
        self.done += count
        now = self.clock()
        first = self.first is None
        if first:
            self.first = (now, self.done)
        if not self.active or _silent:
            return
        finished, rate = self.done >= self.total, self.rate(now)
        line = f"{self.label}: {self.done}/{self.total} {self.unit}s"
        if rate is not None:
            line += f", {rate:.3g} {self.unit}/s"
        if finished:
            line += f", done in {duration(now - self.start)}"
        elif rate is None:
            items = self.unit if count == 1 else f"{count} {self.unit}s"
            line += f", first {items} {duration(now - self.start)} (with warm-up), ETA ?"
        else:
            line += f", ETA {duration((self.total - self.done) / rate)}"
        self._write(line + (f"  {note}" if note else ""),
                    finished or first or self.done % self.every == 0, finished)

    def close(self, note: str = "") -> None:
        """A closing line for work stopped short of ``total`` (items done, time taken);
        nothing when the last line already said it."""
        if self.active and not _silent and self.done < self.total:
            self._write(f"{self.label}: {self.done}/{self.total} {self.unit}s in "
                        f"{duration(self.clock() - self.start)}" + (f"  {note}" if note else ""),
                        True, True)

    def _write(self, line: str, due: bool, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(79) + ("\n" if final else ""))
        elif due:
            self.stream.write(line + "\n")
        self.stream.flush()


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, *,
          digits: int = 4, markdown: bool = False) -> str:
    """Rows (dicts) as aligned text or a Markdown table; ``columns`` default to every key in
    order of appearance, and a column no row has is left out; ``-`` where a row lacks a value;
    floats with ``digits`` significant digits."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = [c for c in columns if any(c in row for row in rows)]

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in cells]) + "\n"
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in [list(columns), *cells])
