"""Errors that end a run with one line rather than a traceback (``sagd_jax.cli`` maps them to
exit statuses): ``ValueError`` is bad input (2), ``FloatingPointError`` a non-finite loss (3),
``RunError`` a run that cannot go on for a reason outside its input (1), e.g. a full disk."""

from __future__ import annotations


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
