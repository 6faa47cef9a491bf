"""Errors that end a run with one line rather than a traceback (``sagd_jax.cli`` maps them to
exit statuses): ``ValueError`` is bad input (2), ``FloatingPointError`` a non-finite loss (3),
``RunError`` a run that cannot go on for a reason outside its input (1), e.g. a full disk;
``environment_error`` words any OS, storage or memory error (1; 2 for a path of the wrong
kind), ``StoppedAtOnce`` is the trainer's second Ctrl-C (130)."""

from __future__ import annotations

import errno
import os


class RunError(RuntimeError):
    """The run stopped on a failure of its environment (a save that could not be written);
    the message is one line naming the cause, the step and the file; what was written before
    stays intact."""


class DamagedCheckpoint(ValueError):
    """A checkpoint that cannot be read back as it was saved (a missing, truncated or altered
    file); the message names the step and the file or array."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """``err`` as ``Type: message`` on one line, at most ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class StoppedAtOnce(KeyboardInterrupt):
    """The trainer's second Ctrl-C: stopped at once, without saving the current step
    (``sagd_jax.train.preemption``); a plain ``KeyboardInterrupt`` keeps the work finished."""


_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
                 errno.ELOOP}
_ADVICE = {errno.ENOSPC: "free space, then run the same command again",
           errno.EDQUOT: "free space (quota), then run the same command again",
           errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
           errno.EROFS: "a read-only file system: write elsewhere"}
# Error types of the storage libraries under ``sagd_jax.files`` (TensorFlow's gfile, Google
# auth and API clients), told by name so that none is imported; their input kinds last.
_STORAGE_ERRORS = ("tensorflow.python.framework.errors_impl.OpError",
                   "google.auth.exceptions.GoogleAuthError",
                   "google.api_core.exceptions.GoogleAPIError")
_STORAGE_INPUT = ("NotFoundError", "InvalidArgumentError", "AlreadyExistsError")


def _kinds(err: BaseException) -> set[str]:
    return {f"{t.__module__}.{t.__qualname__}" for t in type(err).__mro__}


def environment_error(err: BaseException) -> tuple[str, bool] | None:
    """The one line for an OS, storage or memory error that reached a tool's top level, and
    whether it is bad input (a path missing or of the wrong kind: a file where a folder is
    needed); None for any other error. The line names the file and the cause."""
    if isinstance(err, OSError) and err.errno is not None:
        names = [os.fsdecode(n) for n in (err.filename, err.filename2) if n is not None]
        cause = err.strerror or os.strerror(err.errno)
        where = " -> ".join(names)
        if err.errno in (errno.EEXIST, errno.ENOTDIR) and names:
            cause = f"{cause} (a file where a folder is needed)"
        advice = _ADVICE.get(err.errno)
        text = f"{where + ': ' if where else ''}{cause}{'; ' + advice if advice else ''}"
        return " ".join(text.split()), err.errno in _INPUT_ERRNOS
    if isinstance(err, MemoryError):
        return f"out of host memory ({one_line(err)})", False
    message = " ".join(str(err).split())
    if type(err).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and (
            "RESOURCE_EXHAUSTED" in message):
        return f"out of device memory ({one_line(err)})", False
    if _kinds(err) & set(_STORAGE_ERRORS) or isinstance(err, OSError):
        return one_line(err, 300), type(err).__name__ in _STORAGE_INPUT
    return None
