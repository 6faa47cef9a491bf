"""Writing files so that a reader never sees half of one, and logs that are only appended to.

Every file of a workdir, a sample set or a cache goes through these helpers: a write lands
under a temporary name in the same folder and is renamed into place once complete (atomic on
POSIX filesystems), so a process killed mid-write leaves the previous file, or none.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", *, exclusive: bool = False) -> Iterator[IO[Any]]:
    """A file object whose content appears at ``path`` only when the block ends without error.

    ``mode``: ``"w"`` (text) or ``"wb"``. ``exclusive``: refuse (``FileExistsError``) when
    ``path`` already exists, checked again at the rename, so nothing written is overwritten.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if exclusive and os.path.exists(path):
        raise FileExistsError(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        if exclusive:
            os.link(tmp, path)  # fails if another writer got there first
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str, value: Any, *, exclusive: bool = False) -> None:
    """``value`` as indented JSON at ``path``, atomically."""
    with atomic_open(path, "w", exclusive=exclusive) as f:
        json.dump(value, f, indent=2)


def write_npz(path: str, *, exclusive: bool = False, **arrays: np.ndarray) -> None:
    """``arrays`` as an uncompressed ``.npz`` at ``path``, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_open(path, "wb", exclusive=exclusive) as f:
        f.write(buffer.getvalue())


def unwritable(path: str) -> str | None:
    """Why a folder at ``path`` cannot be created or written (None: it can). Probes the
    nearest existing ancestor with a temporary file removed at once (works for root too, for
    whom permission bits say nothing)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} exists and is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"not writable ({existing}: {err.strerror})"
    return None


def set_aside(path: str, suffix: str = ".damaged") -> str:
    """Rename the file or folder ``path`` to ``<path><suffix>`` (``.1``, ``.2``, ... added
    when taken): kept for inspection, never deleted; returns the new path."""
    target, n = f"{path}{suffix}", 0
    while os.path.exists(target):
        n += 1
        target = f"{path}{suffix}.{n}"
    os.rename(path, target)
    return target


def exists(path: str) -> bool:
    return os.path.exists(path)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Append one JSON record (a line) to ``path``; earlier lines are never rewritten."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` if it does not exist); blank lines skipped, and
    a torn last line (a process killed mid-append) too."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 or line.endswith("\n"):
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return records
