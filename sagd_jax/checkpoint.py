"""Orbax checkpoints under ``WORKDIR/checkpoints/<step>/``: the train state and the config.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it once
complete), so a process killed during a save leaves the previous checkpoints intact. Restores
go straight onto the requested shardings.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"  # WORKDIR/checkpoints/<step>/{state,config}


def checkpoint_dir(workdir: str) -> str:
    """Where a workdir's checkpoints live."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def saved_steps(workdir: str) -> list[int]:
    """The steps of a workdir's complete checkpoints, ascending (reads the folder only: an
    unfinished save is a temporary folder whose name is not a number)."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run (``keep=None``: all)."""

    def __init__(self, workdir: str, keep: int | None = 3, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config")
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, ascending."""
        return sorted(self.manager.all_steps())

    def save(self, state: Any, config: Any) -> None:
        """Save ``state`` under its own step, with the config (a ConfigDict) beside it."""
        step = int(jax.device_get(state.step))
        config_dict = json.loads(config.to_json_best_effort())
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_dict)
            ),
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore onto ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with shardings)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored.state

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
