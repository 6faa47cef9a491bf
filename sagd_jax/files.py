"""Every file a run writes or reads, on any path: local paths, ``file://`` URLs, and object
stores (``gs://``, ``s3://``, ``az://``) through ``etils.epath``, the paths Orbax and TensorBoard
accept.

Paths are strings. ``normalize`` turns a ``file://`` URL into its local path (pathlib, Orbax and
TensorStore would read ``file:///x`` as ``file:/x``) and leaves anything else as given;
``absolute`` makes a local path absolute; ``path`` is the ``epath.Path`` of either kind. Local
paths keep the ``os`` calls they always had; remote ones go through ``epath``.

Writes never leave half a file where a reader looks:

* local: a write lands under a temporary name in the same folder and is renamed into place once
  complete (``os.replace``, atomic on POSIX), so a process killed mid-write leaves the previous
  file, or none; an exclusive write is hard-linked into place (``os.link`` fails if the name
  exists), so nothing is overwritten;
* remote: the same temporary name and rename (on an object store a copy and delete: a reader
  sees the old object or the new one, never a part); an exclusive write checks that the name
  is free before writing and again before the rename (two writers racing inside that window
  are not told apart: one writer per workdir is ``sagd_jax.lock``'s job);
* logs (``append_jsonl``): a local file is appended to, earlier lines are never rewritten, a
  record never lands on a torn last line (a writer killed mid-append: it is ended first); an
  object store cannot append, so the file is read and rewritten whole with the new line
  (atomically, as above; O(size) per record: one record per ``train.log_every`` steps).
  ``scan_jsonl`` reads past lines that are not JSON, ``read_jsonl`` only past a torn last one.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import glob as glob_lib
import io
import json
import os
import posixpath
import re
import shutil
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from etils import epath

REMOTE_SCHEMES = ("gs", "s3", "az")  # object stores of etils.epath that Orbax writes to
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


# --- paths ----------------------------------------------------------------------------------
def cache_dir() -> str:
    """The user cache folder of sagd-jax (``$SAGD_JAX_CACHE``, else ``$XDG_CACHE_HOME/sagd-jax``,
    else ``~/.cache/sagd-jax``); created on demand by its writers."""
    if os.environ.get("SAGD_JAX_CACHE"):
        return os.environ["SAGD_JAX_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sagd-jax")


def normalize(p: str | os.PathLike[str]) -> str:
    """``p`` as a string: a ``file://`` URL as its local path (``file:///x`` -> ``/x``), any
    other path or URL unchanged. A ``ValueError`` for a ``file://`` URL of another host."""
    text = os.fspath(p)
    if not text.startswith("file://"):
        return text
    url = urllib.parse.urlsplit(text)
    if url.netloc not in ("", "localhost"):
        raise ValueError(f"{text}: a file:// URL of host {url.netloc!r}; local paths are "
                         "file:///PATH")
    return urllib.parse.unquote(url.path) or "/"


def is_local(p: str | os.PathLike[str]) -> bool:
    """Whether ``p`` is a local path (or a ``file://`` URL), not a remote URL."""
    return _SCHEME.match(normalize(p)) is None


def _remote(p: str | os.PathLike[str]) -> str:
    """A remote URL of a supported scheme (``ValueError`` otherwise)."""
    text = normalize(p)
    scheme = _SCHEME.match(text)
    if scheme is not None and scheme.group(1).lower() not in REMOTE_SCHEMES:
        raise ValueError(f"{text}: unsupported scheme {scheme.group(1)}:// (local paths, "
                         f"file://, {', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    return text


def path(p: str | os.PathLike[str]) -> epath.Path:
    """The ``epath.Path`` of ``p``: an absolute local path, or a remote URL (its backend,
    TensorFlow's gfile where installed, imported without its C++ start-up lines)."""
    from etils import epath

    if not is_local(p) and "tensorflow" not in sys.modules:
        import importlib.util

        from sagd_jax import console

        if importlib.util.find_spec("tensorflow") is not None:
            console.import_quietly("tensorflow")
    return epath.Path(absolute(p))


def absolute(p: str | os.PathLike[str]) -> str:
    """A local path made absolute (a ``file://`` URL: its path); a remote URL unchanged."""
    return os.path.abspath(normalize(p)) if is_local(p) else _remote(p)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base/part/...`` (``os.path.join`` for local paths, ``/`` for URLs)."""
    base = normalize(base)
    return os.path.join(base, *parts) if is_local(base) else posixpath.join(base, *parts)


def dirname(p: str | os.PathLike[str]) -> str:
    """The folder of ``p`` (a URL keeps its scheme and bucket)."""
    return os.path.dirname(normalize(p)) if is_local(p) else posixpath.dirname(_remote(p))


def exists(p: str | os.PathLike[str]) -> bool:
    return os.path.exists(normalize(p)) if is_local(p) else path(p).exists()


def isdir(p: str | os.PathLike[str]) -> bool:
    return os.path.isdir(normalize(p)) if is_local(p) else path(p).is_dir()


def isfile(p: str | os.PathLike[str]) -> bool:
    if is_local(p):
        return os.path.isfile(normalize(p))
    return path(p).exists() and not path(p).is_dir()


def islink(p: str | os.PathLike[str]) -> bool:
    """Whether ``p`` is a symbolic link (never, on an object store)."""
    return is_local(p) and os.path.islink(normalize(p))


def listdir(p: str | os.PathLike[str]) -> list[str]:
    """The names in folder ``p`` (``FileNotFoundError`` if there is none)."""
    if is_local(p):
        return os.listdir(normalize(p))
    return [child.name for child in path(p).iterdir()]


def glob(pattern: str) -> list[str]:
    """The paths matching ``pattern`` (wildcards in its last part only, for URLs)."""
    if is_local(pattern):
        return glob_lib.glob(normalize(pattern))
    folder, name = posixpath.split(_remote(pattern))
    return [str(match) for match in path(folder).glob(name)]


def mtime(p: str | os.PathLike[str]) -> float:
    """Seconds since the epoch of ``p``'s last modification (whole seconds on object
    stores)."""
    return os.path.getmtime(normalize(p)) if is_local(p) else float(path(p).stat().mtime)


def makedirs(p: str | os.PathLike[str]) -> None:
    """Create folder ``p`` and its parents (fine if it exists)."""
    if is_local(p):
        os.makedirs(normalize(p), exist_ok=True)
    else:
        path(p).mkdir(parents=True, exist_ok=True)


def remove(p: str | os.PathLike[str]) -> None:
    """Remove the file ``p`` (``FileNotFoundError`` if absent)."""
    if is_local(p):
        os.unlink(normalize(p))
    else:
        path(p).unlink()


def rmtree(p: str | os.PathLike[str], ignore_errors: bool = False) -> None:
    """Remove folder ``p`` and everything in it."""
    if is_local(p):
        shutil.rmtree(normalize(p), ignore_errors=ignore_errors)
        return
    try:
        path(p).rmtree()
    except Exception:  # noqa: BLE001 (an object store raises its own kinds)
        if not ignore_errors:
            raise


def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` to ``dst`` (a file or a folder; on an object store a copy and delete)."""
    if is_local(src):
        os.rename(normalize(src), normalize(dst))
    else:
        path(src).rename(path(dst))


# --- reading --------------------------------------------------------------------------------
def open_file(p: str | os.PathLike[str], mode: str = "r") -> IO[Any]:
    """``p`` opened for reading (``"r"``, ``"rb"``); writes go through ``atomic_open``."""
    if mode not in ("r", "rb"):
        raise ValueError(f"open_file: mode {mode!r}; write with atomic_open")
    return builtins.open(normalize(p), mode) if is_local(p) else path(p).open(mode)


def read_bytes(p: str | os.PathLike[str]) -> bytes:
    with open_file(p, "rb") as f:
        return f.read()


def read_text(p: str | os.PathLike[str]) -> str:
    with open_file(p) as f:
        return f.read()


def read_json(p: str | os.PathLike[str]) -> Any:
    with open_file(p) as f:
        return json.load(f)


def loadable(p: str | os.PathLike[str]) -> str | IO[bytes]:
    """What ``np.load`` takes for ``p``: a local path itself, a remote file's bytes in a
    buffer."""
    return normalize(p) if is_local(p) else io.BytesIO(read_bytes(p))


@dataclasses.dataclass
class JsonLines:
    """What a JSON-lines file holds: ``records``, each line that is a JSON object, in order;
    ``bad``, the number (from 1) and bytes of each line that is not (a torn write, garbage);
    ``lines``, how many lines it has; ``unterminated``, whether its last line lacks the newline
    (a write cut short, or in progress). A record appended onto a torn one (``{"step": 4,
    "lo{"step": 4, ...}``) is read as that record, its torn start as a bad line."""

    records: list[dict[str, Any]]
    bad: list[tuple[int, bytes]]
    lines: int
    unterminated: bool

    def bad_text(self, most: int = 5) -> str:
        """The bad lines in words: ``line 4 is not a JSON record``, ``lines 4, 9 are ...``."""
        numbers = [str(number) for number, _ in self.bad[:most]]
        if len(self.bad) > most:
            numbers.append(f"... ({len(self.bad)} in all)")
        plural = len(self.bad) > 1
        return (f"line{'s' * plural} {', '.join(numbers)} {'are' if plural else 'is'} not "
                f"{'JSON records' if plural else 'a JSON record'}")


def _json_object(text: bytes) -> dict[str, Any] | None:
    """``text`` as a JSON object, or None if it is not one."""
    try:
        value = json.loads(text.decode("utf-8"))
    except ValueError:  # not UTF-8, not JSON
        return None
    return value if isinstance(value, dict) else None


def scan_jsonl(p: str | os.PathLike[str]) -> JsonLines:
    """Every line of the JSON-lines file ``p`` sorted into records and bad lines, raising for
    none of them (blank lines skipped); an ``OSError`` if ``p`` cannot be read (a folder:
    ``IsADirectoryError``)."""
    if is_local(p) and os.path.isdir(normalize(p)):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), normalize(p))
    lines = read_bytes(p).split(b"\n")
    unterminated = lines[-1] != b""
    if not unterminated:
        lines.pop()
    content = JsonLines([], [], len(lines), unterminated)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record, start = _json_object(line), 0
        while record is None:  # a record appended onto a torn one: the first "{" to parse
            start = line.find(b"{", start + 1)
            if start < 0:
                break
            record = _json_object(line[start:])
        if record is None or start > 0:
            content.bad.append((number, line if record is None else line[:start]))
        if record is not None:
            content.records.append(record)
    return content


def read_jsonl(p: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` if it does not exist); blank lines skipped, and
    a torn last line (a process killed mid-append) too; a ``ValueError`` naming any other line
    that is not a JSON object (``scan_jsonl`` reads past them)."""
    if not exists(p):
        return []
    content = scan_jsonl(p)
    for number, _ in content.bad:
        if number < content.lines or not content.unterminated:
            raise ValueError(f"{normalize(p)}: line {number} is not JSON")
    return content.records


# --- writing --------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_open(p: str | os.PathLike[str], mode: str = "w", *, exclusive: bool = False
                ) -> Iterator[IO[Any]]:
    """A file object whose content appears at ``p`` only when the block ends without error.

    ``mode``: ``"w"`` (text) or ``"wb"``. ``exclusive``: refuse (``FileExistsError``) when
    ``p`` already exists, checked again at the rename, so nothing written is overwritten.
    A local file gets the permissions ``open()`` would give it (``0o666 & ~umask``).
    """
    if not is_local(p):
        with _remote_atomic_open(_remote(p), mode, exclusive) as f:
            yield f
        return
    target = normalize(p)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    if exclusive and os.path.exists(target):
        raise FileExistsError(target)
    fd, tmp = _create_temporary(folder, os.path.basename(target))
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        if exclusive:
            os.link(tmp, target)  # fails if another writer got there first
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, target) from err  # a full disk: name it
        raise


# Flags of a new temporary file as ``tempfile.mkstemp`` sets them, but created with mode 0o666:
# the kernel applies the umask (and a folder's default ACL) as it does for ``open()``, where
# mkstemp's 0o600 would leave every file written unreadable to others on shared storage.
_TEMPORARY_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def _create_temporary(folder: str, name: str) -> tuple[int, str]:
    """A new file ``<folder>/.<name>.<random>`` (descriptor, path) with the permissions
    ``open()`` gives (``0o666 & ~umask``), not mkstemp's 0o600."""
    for _ in range(tempfile.TMP_MAX):
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}")
        try:
            return os.open(tmp, _TEMPORARY_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name for {name}")


@contextlib.contextmanager
def _remote_atomic_open(target: str, mode: str, exclusive: bool) -> Iterator[IO[Any]]:
    """``atomic_open`` on an object store: a temporary object, renamed once complete."""
    final = path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and final.exists():
        raise FileExistsError(target)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}"
    try:
        with tmp.open(mode) as f:
            yield f
        if exclusive:
            if final.exists():  # another writer got there meanwhile
                raise FileExistsError(target)
            tmp.rename(final)
        else:
            tmp.replace(final)
    except BaseException:
        with contextlib.suppress(Exception):
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(p: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> None:
    """``data`` at ``p``, atomically."""
    with atomic_open(p, "wb", exclusive=exclusive) as f:
        f.write(data)


def write_json(p: str | os.PathLike[str], value: Any, *, exclusive: bool = False) -> None:
    """``value`` as indented JSON at ``p``, atomically."""
    with atomic_open(p, "w", exclusive=exclusive) as f:
        json.dump(value, f, indent=2)


def write_npz(p: str | os.PathLike[str], *, exclusive: bool = False, **arrays: np.ndarray
              ) -> None:
    """``arrays`` as an uncompressed ``.npz`` at ``p``, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(p, buffer.getvalue(), exclusive=exclusive)


def append_jsonl(p: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record (a line) to ``p``, on a line of its own (a torn last line gets its
    newline first). Local: earlier lines are never rewritten; object store: the file is
    rewritten whole with the line added, atomically."""
    line = (json.dumps(record) + "\n").encode()
    if is_local(p):
        with builtins.open(normalize(p), "ab+") as f:  # writes go to the end whatever the seek
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":  # never onto a torn last line: it ends first
                    line = b"\n" + line
            f.write(line)
        return
    before = read_bytes(p) if exists(p) else b""
    write_bytes(p, before + (b"\n" if before and not before.endswith(b"\n") else b"") + line)


def unwritable(p: str | os.PathLike[str]) -> str | None:
    """Why a folder at ``p`` cannot be created or written (None: it can). Probes the nearest
    existing ancestor with a temporary file removed at once (works for root too, for whom
    permission bits say nothing; on an object store, a temporary object)."""
    if not is_local(p):
        return _remote_unwritable(_remote(p))
    existing = os.path.abspath(normalize(p))
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


def _remote_unwritable(url: str) -> str | None:
    """``unwritable`` for a URL: the nearest existing prefix (at most the bucket) must not be a
    file, and must take a probe object (written and removed at once)."""
    scheme, rest = url.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    existing = url.rstrip("/")
    try:
        while existing != bucket and not exists(existing):
            existing = posixpath.dirname(existing)
        if existing != bucket and not isdir(existing):
            return f"{existing} exists and is not a directory"
        probe = posixpath.join(existing, f".sagd-write-probe-{uuid.uuid4().hex[:12]}")
        write_bytes(probe, b"")
        remove(probe)
    except Exception as err:  # noqa: BLE001 (an object store raises its own kinds)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return f"not writable ({existing}: {' '.join(reason.split())[:200]})"
    return None


def write_beside(p: str | os.PathLike[str], suffix: str, data: bytes) -> str:
    """``data`` in a new file ``<p><suffix>`` (``.1``, ``.2``, ... added when taken, as in
    ``set_aside``), never overwriting one; returns its path."""
    target, n = f"{normalize(p)}{suffix}", 0
    while True:
        try:
            write_bytes(target, data, exclusive=True)
            return target
        except FileExistsError:
            n += 1
            target = f"{normalize(p)}{suffix}.{n}"


def set_aside(p: str | os.PathLike[str], suffix: str = ".damaged") -> str:
    """Rename the file or folder ``p`` to ``<p><suffix>`` (``.1``, ``.2``, ... added when
    taken): kept for inspection, never deleted; returns the new path."""
    p = normalize(p)
    target, n = f"{p}{suffix}", 0
    while exists(target):
        n += 1
        target = f"{p}{suffix}.{n}"
    rename(p, target)
    return target


def refuse_existing(flag: str, path: str | None) -> None:
    """A one-line ``ValueError`` if the output file of ``flag`` exists: results are written
    once, never overwritten (check before the work, then write with ``write_new_json``)."""
    if path is not None and exists(path):
        raise ValueError(f"{flag}={path}: exists; results are never overwritten")


def write_new_json(flag: str, path: str, value: Any) -> None:
    """``value`` as JSON in the new file ``path`` (atomic; ``refuse_existing`` if another
    writer made it meanwhile)."""
    try:
        write_json(path, value, exclusive=True)
    except FileExistsError:
        refuse_existing(flag, path)
        raise
