"""The trainer as a resumable child process: ``python -m sagd_jax.main`` in its own session,
its output appended to a log, stop signals passed on to it once.

Used by the sweep (``launch/sweep.py``) and the experiment driver (``experiments/run.py``): one
process per run, as users run it. The trainer resumes from its workdir's last checkpoint; on
SIGTERM or SIGINT it saves its current step and exits ``cli.STOPPED`` (75), so running the
caller's command again picks up where it stopped.

    with StopSignals().installed() as stops, follow_log("q.log", print):
        code = train(trainer_command("configs/quickstart.py", "workdirs/q"), "q.log", stops)

``follow_log`` relays the lines appended to the log while the trainer runs (its progress).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sagd_jax import files

PARENT_ENV = "SAGD_JAX_PARENT_PID"  # set by ``train`` for its child: the caller's pid


def die_with_parent() -> None:
    """In a trainer started by ``train``: SIGTERM when the caller dies (a sweep killed by
    SIGKILL leaves no orphan; the trainer saves and stops as on any SIGTERM). Linux only
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and outside ``train``, nothing."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the caller died before prctl: stop as it would have
        os.kill(os.getpid(), signal.SIGTERM)


def running_holder(workdir: str) -> dict[str, Any] | None:
    """The lock record of a trainer on this host that still runs in ``workdir`` (started by
    an earlier sweep, say), else None."""
    import socket

    try:
        record = files.read_json(files.join(workdir, "lock"))
        pid, host = int(record["pid"]), str(record["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return record


def trainer_command(config_spec: str, workdir: str,
                    overrides: Iterable[tuple[str, str]] = ()) -> list[str]:
    """``python -m sagd_jax.main --config=SPEC --workdir=DIR --config.KEY=TEXT...`` as an argv
    list (this interpreter's ``python``)."""
    return [sys.executable, "-m", "sagd_jax.main", f"--config={config_spec}",
            f"--workdir={workdir}", *(f"--config.{key}={text}" for key, text in overrides)]


class StopSignals:
    """SIGTERM and SIGINT received by the caller while it trains: remembered in ``received``
    (the first one; the caller then starts no further run) and passed on, each once, to the
    running trainer (which saves and stops). A signal that arrives while no trainer runs is
    passed on to the next one as soon as it starts."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal
        self._child: subprocess.Popen | None = None
        self._pending: int | None = None  # arrived while no trainer ran

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)
        else:
            self._pending = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the signals while the block runs, then restore the previous handlers (main
        thread only; elsewhere the handlers stay as they are); yields ``self``."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self, child: subprocess.Popen) -> int:
        """``child``'s exit status; a signal received meanwhile is passed on to it."""
        self._child = child
        try:
            pending, self._pending = self._pending, None  # arrived while it started
            if pending is not None and child.poll() is None:
                child.send_signal(pending)
            return child.wait()
        finally:
            self._child = None


def train(command: Sequence[str], log_path: str, stops: StopSignals, *,
          cwd: str | None = None, wall_time_path: str | None = None) -> int:
    """Run the trainer ``command`` (``trainer_command``) to its end and return its exit status
    (0 finished, ``cli.STOPPED`` stopped after saving, negative: killed by that signal).

    Its stdout and stderr are appended to ``log_path`` (its folder created). It runs in its own
    session, so a terminal's Ctrl-C reaches it once, through ``stops`` (installed by the
    caller). Should the wait itself be interrupted (an exception in the caller's process), the
    trainer is sent SIGTERM and waited for: it saves before the exception goes on.
    ``wall_time_path``: a JSONL file that gets ``{"seconds": ..., "exit": status}`` for this
    call, also when it was stopped or interrupted. ``cwd``: the trainer's working directory
    (default: the caller's)."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        child = subprocess.Popen(list(command), cwd=cwd, stdout=log, stderr=log,
                                 start_new_session=True,
                                 env={**os.environ, PARENT_ENV: str(os.getpid())})
        try:
            stops.wait(child)
        finally:
            if child.poll() is None:  # interrupted: the trainer checkpoints and exits
                child.terminate()
            code = child.wait()
            if wall_time_path is not None:
                files.append_jsonl(wall_time_path,
                                   {"seconds": time.perf_counter() - start, "exit": code})
    return code


@contextlib.contextmanager
def follow_log(path: str, emit: Callable[[str], None], poll: float = 0.5) -> Iterator[None]:
    """While the block runs, ``emit(line)`` each non-empty line appended to the file ``path``
    (which may not exist yet) from a background thread, within ``poll`` seconds; the lines
    still unread when the block ends are emitted before it returns."""
    offset = os.path.getsize(path) if os.path.exists(path) else 0
    done = threading.Event()

    def relay() -> None:
        log, pending = None, b""
        try:
            while True:
                ending = done.is_set()  # read once more after the block ended
                if log is None and os.path.exists(path):
                    log = open(path, "rb")  # closed below
                    log.seek(offset)
                if log is not None:
                    *lines, pending = (pending + log.read()).split(b"\n")
                    for line in lines:
                        text = line.decode(errors="replace").rstrip()
                        if text:
                            emit(text)
                if ending:
                    break
                done.wait(poll)
            if pending.strip():
                emit(pending.decode(errors="replace").rstrip())
        finally:
            if log is not None:
                log.close()

    thread = threading.Thread(target=relay, name=f"follow {path}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=30)
