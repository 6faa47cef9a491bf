"""JAX's persistent compilation cache for a training run (``train.compilation_cache_dir``), and
what it did: the programs XLA compiled and those it loaded from the cache.

Which folder a run uses, first rule that applies:

1. ``train.compilation_cache_dir=""``: no cache for this run (even where JAX's own
   ``JAX_COMPILATION_CACHE_DIR`` is set);
2. a folder: that folder (over JAX's own setting);
3. ``"auto"`` (the default): the folder JAX was already given (``JAX_COMPILATION_CACHE_DIR`` or
   ``jax.config.update("jax_compilation_cache_dir", ...)`` before the run: a cluster's or the
   test suite's), else ``<cache>/xla`` (``<cache>``: ``$SAGD_JAX_CACHE``, else
   ``$XDG_CACHE_HOME/sagd-jax``, else ``~/.cache/sagd-jax``).

A folder given in the config that cannot be created or written is a one-line ``ValueError``
naming the key, raised before anything is written; an implicit one (rule 3) that cannot is a
warning, and the run goes on without a cache. Programs that took at least
``MIN_COMPILE_SECONDS`` to compile are cached, whatever their size, unless JAX's own
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` is set. The cache is not bounded (JAX bounds it
only with the ``filelock`` package); delete the folder to reclaim its space. JAX's cache is
process-wide: ``CompileCache`` sets it on entering and puts back what was there on leaving.
Multi-process runs on CPU run without it: a resumed two-process run (gloo collectives) whose
step came from the cache deadlocked in its first steps.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from sagd_jax import console, files

KEY = "train.compilation_cache_dir"
MIN_COMPILE_SECONDS = 0.5
_HIT = "/jax/compilation_cache/cache_hits"
_COMPILE = "/jax/core/compile/backend_compile_duration"  # a compile or a load from the cache


def default_dir() -> str:
    """``<cache>/xla``: the "auto" folder where JAX was given none."""
    return os.path.join(files.cache_dir(), "xla")


def _unwritable(path: str) -> str | None:
    """Why the cache folder ``path`` cannot be created or written (None: it can); remote URLs
    pass unchecked."""
    try:
        return files.unwritable(path) if files.is_local(path) else None
    except ValueError as err:  # a file:// URL of another host
        return str(err)


class CompileCache:
    """The compilation cache of one run (``spec``: the value of ``train.compilation_cache_dir``).

    Resolving and checking the folder happens here (a ``ValueError`` for a bad explicit one);
    ``with cache:`` turns it on and counts what XLA compiled and loaded until the block ends.
    """

    def __init__(self, spec: str):
        self.spec = spec
        self.path: str | None = None
        if spec == "auto":
            self.path = jax.config.jax_compilation_cache_dir or default_dir()
            why = _unwritable(self.path)
            if why is not None:
                console.warning("%s=auto: no compilation cache for this run: %s %s", KEY,
                                self.path, why)
                self.path = None
        elif spec:
            self.path = os.path.expanduser(spec)
            why = _unwritable(self.path)
            if why is not None:
                raise ValueError(f"{KEY}={spec!r}: {why}; give a writable folder, or '' to "
                                 f"train without a compilation cache")
        if self.path is not None and jax.process_count() > 1 and jax.default_backend() == "cpu":
            # A resumed two-process CPU run (gloo collectives, mesh.fsdp=2) deadlocked in its
            # first steps when its step came from the cache, and ran without it (tested).
            console.info("%s: off for a multi-process CPU run (cached executables deadlocked "
                         "in gloo collectives)", KEY)
            self.path = None
        self.loaded = self.compiled = 0
        self.load_seconds = self.compile_seconds = 0.0
        self._hit_pending = False
        self._lock = threading.Lock()
        self._saved: tuple[Any, Any] | None = None

    # --- process-wide JAX settings ------------------------------------------------------
    def __enter__(self) -> CompileCache:
        previous = (jax.config.jax_compilation_cache_dir,
                    jax.config.jax_persistent_cache_min_compile_time_secs)
        self._saved = previous
        self._apply(self.path, previous[1] if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
                    in os.environ else MIN_COMPILE_SECONDS)
        jax.monitoring.register_event_listener(self._on_event)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_listener(self._on_event)
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        if self._saved is not None:
            self._apply(*self._saved)
            self._saved = None

    @staticmethod
    def _apply(path: str | None, min_seconds: float) -> None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
        if jax.config.jax_compilation_cache_dir != path:
            jax.config.update("jax_compilation_cache_dir", path)
            jax_cache.reset_cache()  # JAX opens its cache once: the next compile opens this one

    # --- what XLA did ---------------------------------------------------------------------
    def _on_event(self, event: str, **_: Any) -> None:
        if event == _HIT:
            with self._lock:
                self._hit_pending = True  # the program's duration event follows

    def _on_duration(self, event: str, seconds: float, **_: Any) -> None:
        if event != _COMPILE:
            return
        with self._lock:
            if self._hit_pending:
                self.loaded, self.load_seconds = self.loaded + 1, self.load_seconds + seconds
            else:
                self.compiled += 1
                self.compile_seconds += seconds
            self._hit_pending = False

    def counts(self) -> tuple[int, int]:
        """``(loaded, compiled)``: programs so far."""
        with self._lock:
            return self.loaded, self.compiled

    def summary(self) -> str:
        """What XLA did so far, for one console line."""
        with self._lock:
            compiled = f"{self.compiled} compiled in {self.compile_seconds:.1f} s"
            if self.path is None:
                return f"compilation cache off; programs: {compiled}"
            return (f"compilation cache {self.path}; programs: {self.loaded} loaded in "
                    f"{self.load_seconds:.1f} s, {compiled}")


class FirstStep:
    """The console line of a start's first step: how long after ``started`` (a
    ``time.perf_counter()``) it finished, and whether its program came from the cache."""

    def __init__(self, cache: CompileCache, started: float):
        self.cache, self.started = cache, started
        self._before: tuple[int, int] | None = None

    def before(self) -> None:
        self._before = self.cache.counts()

    def after(self, state: Any) -> None:
        """Wait for the step (once: the first) and say how long the start took."""
        if self._before is None:
            return
        jax.block_until_ready(state)
        loaded, compiled = (now - was for now, was in zip(self.cache.counts(), self._before,
                                                           strict=True))
        self._before = None
        how = ("loaded from the compilation cache" if loaded and not compiled
               else "compiled" if compiled else "already compiled")
        console.info("first step %.1f s after the start: the train step %s (%s)",
                     time.perf_counter() - self.started, how, self.cache.summary())
