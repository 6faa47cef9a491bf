"""Orbax checkpoints under ``WORKDIR/checkpoints/<step>/``: the train state, the config and the
state's fingerprint.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it once
complete), so a process killed during a save leaves the previous checkpoints intact. A step
folder counts as a checkpoint only with Orbax's completion markers (``commit_success.txt`` and a
``_CHECKPOINT_METADATA`` with a commit time, ``incomplete``): an empty or unfinished ``<step>/``
is never a step of the run, and a save of that step sets it aside first. A save
that fails (a full disk) is noticed at the next step (``Checkpointer.check``): its partial
folder is removed and the run stops with one line (``RunError``). Restores go straight onto
the requested shardings and are verified: the fingerprint (a position-weighted sum of the bits
of every array, computed on device at save time) must match what was read back, so a
truncated, missing or altered file is reported (``DamagedCheckpoint``) instead of trusted.
A checkpoint whose metadata lists a fingerprint but that has none is damaged likewise; only one
saved before fingerprints existed (its metadata lists no fingerprint item: sagd-jax before
2026-11-30) is restored unverified, with one warning line.
The workdir may be any path of ``sagd_jax.files`` (local, ``gs://``): Orbax gets the same string.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from sagd_jax import console, files
from sagd_jax.errors import DamagedCheckpoint, RunError

CHECKPOINTS = "checkpoints"  # WORKDIR/checkpoints/<step>/{state,config,fingerprint}
EMA_SNAPSHOTS = "ema_snapshots"  # WORKDIR/ema_snapshots/<step>/: post-hoc EMA profiles, alike
DAMAGED = ".damaged"  # a damaged checkpoint set aside: checkpoints/<step>.damaged
PARTIAL = "orbax-checkpoint-tmp"  # in the name of a save's folder until it is complete
COMMITTED = "commit_success.txt"  # Orbax's marker of a complete step folder
METADATA = "_CHECKPOINT_METADATA"  # Orbax's record of a step: its items and commit time


def checkpoint_dir(workdir: str, folder: str = CHECKPOINTS) -> str:
    """Where a workdir's checkpoints live (``folder=EMA_SNAPSHOTS``: its EMA snapshots)."""
    return files.join(files.absolute(workdir), folder)


def _metadata(path: str) -> dict[str, Any] | None:
    """Orbax's ``_CHECKPOINT_METADATA`` of the step folder ``path`` (None if unreadable)."""
    try:
        metadata = files.read_json(files.join(path, METADATA))
    except (OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def incomplete(path: str) -> str | None:
    """Why the step folder ``path`` is not a complete checkpoint (None if it is): Orbax
    writes ``commit_success.txt`` and the commit time into ``_CHECKPOINT_METADATA`` only once
    every item of the step is written."""
    if not files.isfile(files.join(path, COMMITTED)):
        return f"no {COMMITTED}"
    metadata = _metadata(path)
    if metadata is None:
        return f"no readable {METADATA}"
    if not isinstance(metadata.get("commit_timestamp_nsecs"), int):
        return f"no commit time in {METADATA}"
    return None


def _step_folders(workdir: str, folder: str = CHECKPOINTS) -> list[tuple[int, str]]:
    """``(step, path)`` of every folder named by a step number, ascending."""
    directory = checkpoint_dir(workdir, folder)
    if not files.isdir(directory):
        return []
    return sorted((int(name), files.join(directory, name))
                  for name in files.listdir(directory) if name.isdigit())


def saved_steps(workdir: str, folder: str = CHECKPOINTS) -> list[int]:
    """The steps of a workdir's complete checkpoints, ascending (an unfinished save is a
    temporary folder whose name is not a number; a step folder without Orbax's completion
    markers is not a checkpoint, see ``incomplete``)."""
    return [step for step, path in _step_folders(workdir, folder) if incomplete(path) is None]


def incomplete_steps(workdir: str, folder: str = CHECKPOINTS) -> dict[int, str]:
    """``{step: why}`` of the step folders that are not complete checkpoints."""
    out = {}
    for step, path in _step_folders(workdir, folder):
        why = incomplete(path)
        if why is not None:
            out[step] = why
    return out


def fingerprinted(path: str) -> bool:
    """Whether the checkpoint ``path`` was saved with a fingerprint. Orbax's metadata lists
    the items saved: only a list with the state but no fingerprint is a checkpoint from before
    fingerprints; anything else must have one."""
    items = (_metadata(path) or {}).get("item_handlers")
    return not (isinstance(items, dict) and "state" in items and "fingerprint" not in items)


class _CompleteSteps:
    """Orbax's standard step names, finding only complete checkpoints (``incomplete``): an
    empty ``<step>/`` is neither restored, counted as the latest step nor kept by
    ``max_to_keep`` (a later step would otherwise not be saved at all)."""

    def __init__(self) -> None:
        self._standard = ocp.path.step.standard_name_format()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._standard, name)

    def build_name(self, step: int) -> str:
        return self._standard.build_name(step)

    def find_all(self, base_path: Any) -> Any:
        return (m for m in self._standard.find_all(base_path) if incomplete(str(m.path)) is None)

    def find_step(self, base_path: Any, step: int) -> Any:
        metadata = self._standard.find_step(base_path, step)
        why = incomplete(str(metadata.path))
        if why is not None:
            raise ValueError(f"{metadata.path}: not a complete checkpoint ({why})")
        return metadata


def saved_config(workdir: str, step: int) -> dict[str, Any]:
    """The config saved beside checkpoint ``step`` (a ``DamagedCheckpoint`` if unreadable)."""
    path = files.join(checkpoint_dir(workdir), str(step), "config", "metadata")
    try:
        config = files.read_json(path)
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{path}: unreadable ({err})") from None
    if not isinstance(config, dict):
        raise DamagedCheckpoint(f"{path}: not a config")
    return config


def set_aside(workdir: str, step: int, folder: str = CHECKPOINTS) -> str:
    """Rename checkpoint ``step`` to ``<step>.damaged`` (kept for inspection, ignored by
    restores); returns the new path."""
    return files.set_aside(files.join(checkpoint_dir(workdir, folder), str(step)), DAMAGED)


def remove_partial(workdir: str, folder: str = CHECKPOINTS) -> list[str]:
    """Remove the folders of unfinished saves (only while no save is running); returns them."""
    directory = checkpoint_dir(workdir, folder)
    partial = [files.join(directory, name) for name in
               (files.listdir(directory) if files.isdir(directory) else []) if PARTIAL in name]
    for path in partial:
        files.rmtree(path, ignore_errors=True)
    return partial


def _leaf_hash(x: jax.Array) -> jax.Array:
    """uint32 ``sum_i (b_i ^ (i * 0x9E3779B1)) * (2 i + 1)`` over the bits ``b_i`` of ``x``
    (mod 2^32): any single changed word, or two swapped ones, changes it."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    word = {1: jnp.uint8, 2: jnp.uint16}.get(size, jnp.uint32)
    bits = jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32).ravel()
    index = jnp.arange(bits.size, dtype=jnp.uint32)
    mixed = (bits ^ (index * jnp.uint32(0x9E3779B1))) * (2 * index + 1)
    return jnp.sum(mixed, dtype=jnp.uint32)


@jax.jit
def _tree_hash(tree: Any) -> Any:
    return jax.tree.map(_leaf_hash, tree)


def fingerprint(tree: Any) -> dict[str, str]:
    """``{leaf path: 8 hex digits}`` of every array of ``tree``, computed where it lives."""
    hashes = jax.device_get(_tree_hash(tree))
    paths = jax.tree_util.tree_flatten_with_path(hashes)[0]
    return {jax.tree_util.keystr(path): f"{int(h):08x}" for path, h in paths}


def _cause(err: BaseException) -> str:
    """The most specific first line along an exception's chain (the OS or TensorStore error
    that names the file, rather than the wrapper around it)."""
    lines, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).strip()
        if isinstance(err, OSError) and err.strerror:
            text = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
        if text:
            lines.append(text.splitlines()[0].strip())
        err = err.__cause__ or err.__context__
    line = lines[-1] if lines else "unknown error"
    return line if len(line) <= 300 else f"{line[:140]} ... {line[-150:]}"  # the OS error last


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run (``keep=None``: all); ``folder``:
    ``EMA_SNAPSHOTS`` keeps the run's EMA snapshots (``train_state.EmaSnapshot``) alike."""

    def __init__(self, workdir: str, keep: int | None = 3, async_save: bool = True,
                 folder: str = CHECKPOINTS):
        self.workdir, self.folder = workdir, folder
        self.directory = checkpoint_dir(workdir, folder)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            step_name_format=_CompleteSteps())
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config", "fingerprint")
        )
        self._pending: int | None = None  # the step of a save not yet known to be complete

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, ascending."""
        return sorted(self.manager.all_steps())

    def save(self, state: Any, config: Any) -> None:
        """Save ``state`` under its own step, with the config (a ConfigDict) and the state's
        fingerprint beside it; returns at once (``check``/``wait`` report a failure)."""
        step = int(jax.device_get(state.step))
        self.wait()  # the previous save first: a failure is reported at its own step
        config_dict = json.loads(config.to_json_best_effort())
        where = files.join(self.directory, str(step))
        why = incomplete(where) if files.exists(where) else None  # not one: in the way
        if why is not None and jax.process_index() == 0:
            console.warning("%s: not a complete checkpoint (%s); set aside as %s", where, why,
                            set_aside(self.workdir, step, self.folder))
        self._pending = step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_dict),
                    fingerprint=ocp.args.JsonSave(fingerprint(state))),
            )
        except Exception as err:  # noqa: BLE001 (the cause is named in the one line)
            self._failed(err)

    def check(self) -> None:
        """Raise ``RunError`` if the save in flight has failed; never blocks on a running one."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Block until the save in flight is on disk; ``RunError`` if it failed."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as err:  # noqa: BLE001
            if self._pending is None:
                raise
            self._failed(err)
        self._pending = None

    def _failed(self, err: BaseException) -> None:
        step, self._pending = self._pending, None
        if jax.process_index() == 0:
            remove_partial(self.workdir, self.folder)
        kept = saved_steps(self.workdir, self.folder)
        what = "EMA snapshot" if self.folder == EMA_SNAPSHOTS else "checkpoint"
        raise RunError(
            f"the {what} of step {step} could not be written ({_cause(err)}); the run "
            f"stopped there, its partial folder removed; complete {what}s: "
            f"{', '.join(map(str, kept)) or 'none'} in {self.directory}") from None

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore onto ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with shardings)
        and verify it against the saved fingerprint; ``DamagedCheckpoint`` names the step and
        the file or array that does not read back, or the missing fingerprint. Only a
        checkpoint from before fingerprints (``fingerprinted``) is restored unverified, with
        one warning line."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        where = files.join(self.directory, str(step))
        verified = files.isdir(files.join(where, "fingerprint"))
        if not verified and fingerprinted(where):
            raise DamagedCheckpoint(f"checkpoint {where}: its fingerprint is missing (no "
                                    f"{files.join(where, 'fingerprint')}); not trusted unverified")
        if not verified:
            console.warning("checkpoint %s was saved before checkpoints had fingerprints: "
                            "restored unverified", where)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if verified:
            items["fingerprint"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # noqa: BLE001
            raise DamagedCheckpoint(f"checkpoint {where}: unreadable ({_cause(err)})"
                                    ) from None
        if verified:
            saved, actual = dict(restored.fingerprint), fingerprint(restored.state)
            differ = sorted(k for k in saved.keys() | actual.keys()
                            if saved.get(k) != actual.get(k))
            if differ:
                more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
                raise DamagedCheckpoint(f"checkpoint {where}: the array state{differ[0]}"
                                        f"{more} does not read back as it was saved")
        return restored.state

    def close(self) -> None:
        self.manager.close()
