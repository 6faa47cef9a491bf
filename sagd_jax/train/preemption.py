"""Stopping on a signal without losing work: SIGTERM (preemption, a scheduler's time limit),
SIGHUP (a closed terminal, a dropped ssh session) and SIGINT (Ctrl-C) set a flag that the loop
checks after each step; it then checkpoints the current step and returns. A second SIGINT stops
at once (``errors.StoppedAtOnce``, a ``KeyboardInterrupt``)."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from sagd_jax.errors import StoppedAtOnce


class PreemptionFlag:
    """Context manager: while active, SIGTERM, SIGHUP and SIGINT set ``requested`` (and
    ``signal_name``) instead of killing the process; a second SIGINT raises ``StoppedAtOnce`` (a
    ``KeyboardInterrupt``).

    Only the main thread can install signal handlers; elsewhere the flag stays inert.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP,
                                                   signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise StoppedAtOnce
        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
