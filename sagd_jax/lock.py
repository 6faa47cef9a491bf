"""Exclusive lock files: one writer per workdir (a trainer) or per sample set (a sampler).

A lock is a JSON file ``{"host", "pid", "started", "holder"}`` created exclusively; while
held, a daemon thread touches it every ``HEARTBEAT_S`` seconds. A lock is stale, and taken over
with a warning line, when its process is gone (same host: the pid is not running) or, for a
holder on another host, when its heartbeat is older than ``STALE_AFTER_S``. Any other lock
refuses the second writer with one line saying who holds it and how to clear it. A lock file
without a record (empty or garbled, which a failed write of an older version left) is stale
once ``UNREADABLE_STALE_S`` old; the record is written under a temporary name and linked into
place, so a failed write (a full disk) leaves no lock file.

On an object store (a ``gs://`` workdir) there is no ``O_EXCL`` and no inode: the lock is best
effort. It is created if absent (``files.atomic_open(exclusive=True)``: a check before and
after the write) and read back, so of two starts racing the one whose record did not stay
backs off; the heartbeat rewrites the file while it still holds this lock's record, and a stale
lock is removed if its content is still what was judged.

    with Lock(files.join(workdir, "lock"), "--workdir=" + workdir, "trainer"):
        ...  # nobody else writes here
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from typing import Any

from sagd_jax import console, files
from sagd_jax.errors import one_line

HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0  # heartbeat age after which a lock of another host counts as stale
UNREADABLE_STALE_S = 5.0  # age after which an empty or garbled lock file counts as stale


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lock:
    """The lock file ``path``; ``what`` names the flag in messages (``--workdir=DIR``),
    ``holder`` says what holds it (``trainer``, ``sampler``)."""

    def __init__(self, path: str, what: str, holder: str):
        self.path, self.what, self.holder = path, what, holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict[str, Any] | None = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._record is not None

    def acquire(self) -> None:
        """Take the lock, or raise a one-line ``ValueError`` naming its holder."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "holder": self.holder,
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        files.makedirs(files.dirname(files.absolute(self.path)))
        for _ in range(2):  # a second try after clearing a stale lock
            if not self._create(record):
                self._clear_if_stale()
                continue
            self._record = record
            self._stop.clear()
            self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                            name=f"lock-heartbeat:{self.path}")
            self._thread.start()
            return
        raise ValueError(f"{self.what}: could not take the lock {self.path}")

    def _create(self, record: dict[str, Any]) -> bool:
        """Write ``record`` as the lock file if there is none; whether it is ours now. Written
        under a temporary name and linked into place, so a failed write (a full disk) leaves
        no lock file; an ``OSError`` other than the lock's existence is raised."""
        if files.is_local(self.path):
            try:
                with files.atomic_open(self.path, "w", exclusive=True) as f:
                    json.dump(record, f)
            except FileExistsError:
                return False
            except OSError as err:  # a failed write names no file: this one
                if err.filename is not None or err.errno is None:
                    raise
                raise OSError(err.errno, err.strerror, self.path) from err
            return True
        try:  # an object store: create if absent, then read back (best effort)
            with files.atomic_open(self.path, "w", exclusive=True) as f:
                json.dump(record, f)
            return files.read_json(self.path) == record
        except (OSError, ValueError):
            return False

    def _identity(self) -> Any:
        """What tells this lock file from a later one: its inode (local), its content."""
        if files.is_local(self.path):
            return os.stat(files.normalize(self.path)).st_ino
        return files.read_bytes(self.path)

    def _clear_if_stale(self) -> None:
        """Remove the existing lock if its holder is gone, else refuse in one line."""
        try:
            mark, age = self._identity(), time.time() - files.mtime(self.path)
            other = files.read_json(self.path)
            host, pid = str(other["host"]), int(other["pid"])
        except FileNotFoundError:  # released meanwhile
            return
        except (OSError, ValueError, KeyError, TypeError) as err:
            self._clear_if_unreadable(err)
            return
        same_host = host == socket.gethostname()
        gone = (not _running(pid)) if same_host else age > STALE_AFTER_S
        who = (f"{other.get('holder', 'a process')} pid {pid} on {host}, started "
               f"{other.get('started', '?')}")
        if not gone:
            raise ValueError(
                f"{self.what}: in use by {who} (lock {self.path}, heartbeat "
                f"{age:.0f} s ago); wait for it to end, or if that process is gone, remove "
                "the lock file")
        reason = "not running" if same_host else f"no heartbeat for {age:.0f} s"
        with contextlib.suppress(FileNotFoundError):
            if self._identity() == mark:  # still the lock we judged
                files.remove(self.path)
        console.warning("%s: removed the stale lock of %s (%s)", self.what, who, reason)

    def _clear_if_unreadable(self, err: BaseException) -> None:
        """Remove a lock file that does not hold a lock record (empty or garbled: a write that
        failed) once it is ``UNREADABLE_STALE_S`` old, with one warning line; refuse a younger
        one (a writer of an older version may still be writing it)."""
        try:
            mark, age = self._identity(), time.time() - files.mtime(self.path)
        except FileNotFoundError:
            return
        except OSError as stat_err:
            raise ValueError(f"{self.what}: unreadable lock file {self.path} "
                             f"({one_line(stat_err)})") from None
        if age < UNREADABLE_STALE_S:
            raise ValueError(f"{self.what}: unreadable lock file {self.path} ({one_line(err)}, "
                             f"written {age:.0f} s ago); run again in a few seconds")
        with contextlib.suppress(FileNotFoundError):
            if self._identity() == mark:  # still the file we judged
                files.remove(self.path)
        console.warning("%s: removed the unreadable lock file %s (%s, %.0f s old)", self.what,
                        self.path, one_line(err), age)

    def _heartbeat(self) -> None:
        local = files.is_local(self.path)
        while not self._stop.wait(HEARTBEAT_S):
            if local:
                with contextlib.suppress(OSError):
                    os.utime(files.normalize(self.path))
                continue
            with contextlib.suppress(Exception):  # a new mtime: rewritten while still ours
                if files.read_json(self.path) == self._record:
                    with files.atomic_open(self.path) as f:
                        json.dump(self._record, f)

    def release(self) -> None:
        """Give the lock back (a no-op if not held); removes the file if it is still ours."""
        if self._record is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError, ValueError):
            if files.read_json(self.path) == self._record:
                files.remove(self.path)
        self._record = None
