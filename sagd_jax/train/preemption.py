"""SIGTERM (preemption) handling: the loop checks a flag after each step, checkpoints the
current step and returns, instead of dying mid-run."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class PreemptionFlag:
    """Context manager: while active, SIGTERM sets ``requested`` instead of killing the process.

    Only the main thread can install signal handlers; elsewhere the flag stays inert.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
