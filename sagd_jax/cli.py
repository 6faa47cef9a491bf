"""The one flag system of every command-line tool: absl flags (with ``ml_collections``'
``config_flags`` where a config is taken), one-line errors, exit statuses, a quiet console.

A tool defines its flags in a function and hands it, with its body, to ``run``:

    def define_flags(fv: flags.FlagValues) -> None:
        cli.define_config(fv)
        flags.DEFINE_integer("steps", 250, "Sampler iterations.", flag_values=fv)

    def main(argv: list[str] | None = None) -> int:
        return cli.run(__doc__, define_flags, body, argv)

Each call parses into a fresh ``FlagValues``, so a tool can run many times in one process
(tests, drivers). Exit statuses (``EXIT_STATUSES``): 0 done, 1 a run that failed for a reason
outside its input (``errors.RunError``: a checkpoint that could not be written; any OS, storage
or memory error reaching the top: a full disk or quota, a permission, storage that cannot be
reached, out of host or device memory), 2 bad input (flags, config keys, files, a path that is
missing or a file where a folder is needed: one line ``error: ...``, nothing written), 3 a run
stopped by a non-finite loss, 75 a run stopped by a signal after saving its state (resumable:
run the same command again), 130 Ctrl-C where no handler saves (start-up, the sampler: finished
work such as the sampler's chunks is kept) or the trainer's second Ctrl-C (stopped at once).
Every failure is one line naming the file and the cause; ``--verbosity=1`` (debug) prints the
traceback of an OS, storage or memory error above it.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from sagd_jax import console
from sagd_jax.errors import RunError, StoppedAtOnce, environment_error

FlagValues = flags.FlagValues
FAILED, BAD_INPUT, NONFINITE, STOPPED, INTERRUPTED = 1, 2, 3, 75, 130  # 75: EX_TEMPFAIL
EXIT_STATUSES = {0: "finished", FAILED: "failed", BAD_INPUT: "bad input",
                 NONFINITE: "non-finite loss",
                 STOPPED: "stopped by a signal, resumable", INTERRUPTED: "interrupted"}


def define_config(fv: FlagValues, required: bool = True, help_text: str | None = None,
                  default: str | None = None) -> None:
    """``--config=configs/NAME.py[:VARIANT]`` (or a built-in config's name, ``NAME[:VARIANT]``:
    ``config.resolve_config_spec``) with ``--config.KEY=VALUE`` overrides; ``default``: the
    spec used when ``--config`` is not given (an absolute path, one relative to the working
    directory, or a built-in config's name)."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(  # the default goes in as --config=default (``parse``)
        "config", None, help_text or "Config file (configs/*.py[:variant], or a built-in "
        "config's name: quickstart, cifar10_ddpmpp[:cpu], ...); override values with "
        "--config.KEY=VALUE." + (f" Default: {default}" if default else ""),
        flag_values=fv, lock_config=True)
    fv["config"].sagd_default_spec = default
    if required and default is None:
        flags.mark_flag_as_required("config", flag_values=fv)


def define_distributed(fv: FlagValues) -> None:
    """``--coordinator_address``, ``--num_processes``, ``--process_id`` (multi-process)."""
    flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of "
                        "process 0 (else $SAGD_COORDINATOR_ADDRESS, else auto-detected on TPU "
                        "pods and SLURM).", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: total number of "
                         "processes.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.",
                         flag_values=fv)


def initialize_distributed(fv: FlagValues) -> None:
    """Join the multi-process run the flags (or the environment) describe, if any."""
    from sagd_jax import distributed

    distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)


def config_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The ``--config=SPEC`` (or ``--config SPEC``) value and the ``KEY=VALUE`` of every
    ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) in ``argv`` (without the program)."""
    spec, overrides = None, []
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        name, equals, value = arg.lstrip("-").partition("=")
        if not equals and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value = argv[i + 1]
        if name == "config":
            spec = value or None
        elif name.startswith(("config.", "noconfig.")):
            overrides.append(f"{name.split('.', 1)[1]}={value}")
    return spec, overrides


def _last_overrides(argv: list[str]) -> list[str]:
    """``argv`` (program first) with every ``--config.KEY`` (``--noconfig.KEY``) but the last
    of each key dropped, with its value: a repeated override takes its last value, like every
    absl flag (``config_flags`` would append a tuple's values to the earlier ones)."""
    spans, seen, i = [], set(), 1
    while i < len(argv):  # (start, end, key) of each override, as ``config_args`` reads them
        name, equals, _ = argv[i].lstrip("-").partition("=")
        end = i + 1
        if not equals and end < len(argv) and not argv[end].startswith("-"):
            end += 1
        if argv[i].startswith("-") and name.startswith(("config.", "noconfig.")):
            spans.append((i, end, name.split(".", 1)[1]))
        i = end if argv[i].startswith("-") else i + 1
    drop = set()
    for start, end, key in reversed(spans):
        if key in seen:
            drop.update(range(start, end))
        seen.add(key)
    return [arg for j, arg in enumerate(argv) if j not in drop]


def _with_default_config(fv: FlagValues, argv: list[str]) -> list[str]:
    """``argv`` with ``--config=<default>`` inserted when the tool has a default config and
    ``argv`` names none (so the default is loaded, and checked, like a given one)."""
    default = getattr(fv["config"], "sagd_default_spec", None) if "config" in fv else None
    if default is None or config_args(argv[1:])[0] is not None:
        return argv
    return [argv[0], f"--config={default}", *argv[1:]]


def _check_config(argv: Sequence[str]) -> None:
    """Refuse a config file that is missing or does not load (syntax error, failing
    ``get_config``, unknown variant: ``load_config_file``), and an override of a key the config
    does not have, naming the closest ones (``config_flags`` would fail later, with a
    traceback)."""
    spec, overrides = config_args(argv)
    if spec is None:
        return
    from sagd_jax.config import check_keys, load_config_file

    check_keys([item.split("=", 1)[0] for item in overrides], load_config_file(spec))


def _resolve_config(argv: list[str]) -> list[str]:
    """``argv`` (program first) with a built-in config's name in ``--config=NAME[:VARIANT]``
    (or ``--config NAME``) replaced by its file, which ``config_flags`` then loads
    (``config.resolve_config_spec``: an existing file of that name wins)."""
    from sagd_jax.config import resolve_config_spec

    out = list(argv)
    for i, arg in enumerate(out[1:], 1):
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name != "config":
            continue
        if equals:
            out[i] = f"{arg.partition('=')[0]}={resolve_config_spec(value)}"
        elif i + 1 < len(out) and not out[i + 1].startswith("-"):
            out[i + 1] = resolve_config_spec(out[i + 1])
    return out


@contextlib.contextmanager
def _argv(argv: list[str]) -> Any:
    """``config_flags`` reads the overrides from ``sys.argv``: point it at ``argv``."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _flag_values(define_flags: Callable[[FlagValues], None]) -> FlagValues:
    """A fresh ``FlagValues`` with the tool's flags and ``--verbosity``."""
    fv = flags.FlagValues()
    define_flags(fv)
    flags.DEFINE_integer("verbosity", console.QUIET, "-1: this tool's progress and warnings "
                         "only; 0: also the libraries' INFO logs (Orbax, absl, TensorFlow); "
                         "1: debug.", flag_values=fv)
    return fv


def parse(define_flags: Callable[[FlagValues], None], argv: Sequence[str]) -> FlagValues:
    """``argv`` (program name first) parsed into a fresh ``FlagValues`` with the tool's flags
    and ``--verbosity``; bad input raises a one-line ``ValueError``."""
    fv = _flag_values(define_flags)
    argv = _with_default_config(fv, list(argv))
    _check_config(argv[1:])  # errors name the spec as given
    argv = _last_overrides(_resolve_config(argv))
    with _argv(argv):  # config_flags reads the overrides from sys.argv
        try:
            rest = fv(argv)
        except flags.Error as err:
            raise ValueError(str(err).splitlines()[0]) from None
        except SystemExit as err:  # the config file exits when config_flags loads it
            raise ValueError(f"--config: loading the config called sys.exit({err.code!r})"
                             ) from None
        except (OSError, AttributeError, KeyError, TypeError) as err:  # config or override
            message = str(err).strip().splitlines()
            raise ValueError(f"--config: {message[0] if message else type(err).__name__}"
                             ) from None
    if len(rest) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(rest[1:])}")
    if not flags.FLAGS.is_parsed():  # absl's own logging asks for parsed global flags
        flags.FLAGS.mark_as_parsed()
    return fv


def run(doc: str | None, define_flags: Callable[[FlagValues], None],
        body: Callable[[FlagValues], int | None], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv``), set the console up, run ``body(flags)``; returns
    the exit status. ``ValueError`` -> ``error: ...`` and 2; ``FloatingPointError`` -> 3; an
    OS, storage or memory error -> one line (``errors.environment_error``) and 1, or 2 for a
    path missing or of the wrong kind."""
    argv = list(sys.argv if argv is None else argv)
    console.quiet_native_logs(_early_verbosity(argv))
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        fv = _flag_values(define_flags)
        with contextlib.suppress(BrokenPipeError):  # ``--help | head``
            print((doc or "").strip() + "\n\nflags:\n" + fv.get_help(), flush=True)
        return 0
    try:
        fv = parse(define_flags, argv)
    except ValueError as err:
        return _fail(err, BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted: stopped before any work", INTERRUPTED)
    console.setup(fv.verbosity)
    try:
        status = body(fv)
    except ValueError as err:
        return _fail(err, BAD_INPUT)
    except FloatingPointError as err:
        return _fail(err, NONFINITE)
    except RunError as err:
        return _fail(err, FAILED)
    except KeyboardInterrupt as err:
        return _fail("interrupted (a second Ctrl-C): stopped without saving the current step; "
                     "run the same command to resume from the last checkpoint"
                     if isinstance(err, StoppedAtOnce) else "interrupted: stopped; finished "
                     "work is kept (run the same command to continue)", INTERRUPTED)
    except Exception as err:  # OS, storage, memory: one line (a traceback with --verbosity=1)
        found = environment_error(err)
        if found is None:
            raise
        return _fail(found[0], BAD_INPUT if found[1] else FAILED, err, fv.verbosity > 0)
    return 0 if status is None else int(status)


def _early_verbosity(argv: Sequence[str]) -> int:
    """``--verbosity`` read before parsing: TensorFlow's C++ logging is set at its import,
    which a config file may trigger."""
    for arg in argv:
        name, _, value = arg.lstrip("-").partition("=")
        if name == "verbosity" and value.lstrip("-").isdigit():
            return int(value)
    return console.QUIET


def _fail(err: Exception | str, status: int, cause: BaseException | None = None,
          trace: bool = False) -> int:
    """``error: err`` on stderr (after ``cause``'s traceback when ``trace``); returns
    ``status``."""
    sys.stdout.flush()
    if trace and cause is not None:
        traceback.print_exception(cause, file=sys.stderr)
    print(f"error: {err}", file=sys.stderr, flush=True)
    return status
