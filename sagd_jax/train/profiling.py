"""``train.profile_steps=(first, last)``: a jax profiler trace of those training steps.

Step ``s`` is the update from ``state.step == s`` to ``s + 1`` (0-based: step 0 compiles). The
trace starts before step ``first`` fetches its batch and stops once step ``last``'s state is
ready on the device, so it holds the steps' device work; a run that starts (resumes) inside
the range traces from its start, one that ends or stops inside it up to there. Only process 0
traces (each process would trace only its own devices), into ``WORKDIR/profile/``: TensorBoard
(``tensorboard --logdir WORKDIR/profile``, Profile tab) reads the ``.xplane.pb``, Perfetto
(ui.perfetto.dev) the ``.trace.json.gz`` beside it. A later start that traces again adds a new
timestamped folder there; none is overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from sagd_jax import console, files


class StepProfiler:
    """Traces steps ``first..last`` of a loop over ``range(start, stop)`` into ``directory``;
    a no-op for ``steps == ()`` or where ``enabled`` is false (processes other than 0)."""

    def __init__(self, steps: Sequence[int], directory: str, start: int, stop: int,
                 enabled: bool = True):
        self.directory = directory
        self.first = self.last = -1
        if enabled and len(steps) == 2:
            first, last = max(int(steps[0]), start), min(int(steps[1]), stop - 1)
            if first <= last:
                self.first, self.last = first, last
        self.active = False
        self.done: int | None = None  # the last step traced so far

    def before(self, step: int) -> None:
        """Call at the top of step ``step``."""
        if step == self.first:
            try:
                jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            except RuntimeError as err:  # a trace of the caller's is running: train on
                console.warning("train.profile_steps: no trace from step %d: %s", step, err)
                return
            self.active = True

    def after(self, step: int, state: Any) -> None:
        """Call once step ``step`` is dispatched, with its new state."""
        if self.active:
            self.done = step
            if step == self.last:
                jax.block_until_ready(state)
                self._stop()

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:  # stopped or failed inside the range: keep what was traced
            self._stop()

    def _stop(self) -> None:
        self.active = False
        jax.profiler.stop_trace()
        runs = files.glob(files.join(self.directory, "plugins", "profile", "*"))
        where = max(runs, key=files.mtime) if runs else self.directory
        done = self.first - 1 if self.done is None else self.done
        steps = f"step {self.first}" if done <= self.first else f"steps {self.first}-{done}"
        console.info("profile of %s in %s (TensorBoard: tensorboard --logdir %s; Perfetto: "
                     "its .trace.json.gz)", steps, where, self.directory)
