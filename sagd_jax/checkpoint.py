"""Orbax checkpoints under ``WORKDIR/checkpoints/<step>/``: the train state, the config and the
state's fingerprint.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it once
complete), so a process killed during a save leaves the previous checkpoints intact. A save
that fails (a full disk) is noticed at the next step (``Checkpointer.check``): its partial
folder is removed and the run stops with one line (``RunError``). Restores go straight onto
the requested shardings and are verified: the fingerprint (a position-weighted sum of the bits
of every array, computed on device at save time) must match what was read back, so a
truncated, missing or altered file is reported (``DamagedCheckpoint``) instead of trusted.
The workdir may be any path of ``sagd_jax.files`` (local, ``gs://``): Orbax gets the same string.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from sagd_jax import files
from sagd_jax.errors import DamagedCheckpoint, RunError

CHECKPOINTS = "checkpoints"  # WORKDIR/checkpoints/<step>/{state,config,fingerprint}
DAMAGED = ".damaged"  # a damaged checkpoint set aside: checkpoints/<step>.damaged
PARTIAL = "orbax-checkpoint-tmp"  # in the name of a save's folder until it is complete


def checkpoint_dir(workdir: str) -> str:
    """Where a workdir's checkpoints live."""
    return files.join(files.absolute(workdir), CHECKPOINTS)


def saved_steps(workdir: str) -> list[int]:
    """The steps of a workdir's complete checkpoints, ascending (reads the folder only: an
    unfinished save is a temporary folder whose name is not a number)."""
    directory = checkpoint_dir(workdir)
    if not files.isdir(directory):
        return []
    return sorted(int(name) for name in files.listdir(directory) if name.isdigit())


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


def set_aside(workdir: str, step: int) -> str:
    """Rename checkpoint ``step`` to ``<step>.damaged`` (kept for inspection, ignored by
    restores); returns the new path."""
    return files.set_aside(files.join(checkpoint_dir(workdir), str(step)), DAMAGED)


def remove_partial(workdir: str) -> list[str]:
    """Remove the folders of unfinished saves (only while no save is running); returns them."""
    directory = checkpoint_dir(workdir)
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
    """Keeps the last ``keep`` checkpoints of a run (``keep=None``: all)."""

    def __init__(self, workdir: str, keep: int | None = 3, async_save: bool = True):
        self.workdir = workdir
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
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
            remove_partial(self.workdir)
        kept = saved_steps(self.workdir)
        raise RunError(
            f"the checkpoint of step {step} could not be written ({_cause(err)}); the run "
            f"stopped there, its partial folder removed; complete checkpoints: "
            f"{', '.join(map(str, kept)) or 'none'} in {self.directory}") from None

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore onto ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with shardings)
        and verify it against the saved fingerprint (checkpoints written before fingerprints
        existed are restored unverified); ``DamagedCheckpoint`` names the step and the file
        or array that does not read back."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        where = files.join(self.directory, str(step))
        verified = files.isdir(files.join(where, "fingerprint"))
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
