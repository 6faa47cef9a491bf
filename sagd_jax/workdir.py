"""A run's workdir and everything in it: the one place that knows its layout.

    WORKDIR/config.json            the run's identity: its config, written once, rewritten
                                   only by a resume with --allow_config_change (recovered
                                   from the latest checkpoint if lost)
    WORKDIR/config_changes.jsonl   each such change: step, keys, old and new values
    WORKDIR/lock                   held by the trainer while it runs (``sagd_jax.lock``)
    WORKDIR/checkpoints/<step>/    Orbax checkpoints (``sagd_jax.checkpoint``)
    WORKDIR/metrics.jsonl          every logged record, appended (cut back to the restored
                                   step on a resume: no step is logged twice)
    WORKDIR/events.out.tfevents.*  TensorBoard scalars and images
    WORKDIR/samples/               EMA sample grids and spectra of the trainer
    WORKDIR/generated/<name>/      sample sets of ``sagd_jax.sample``

WORKDIR is a local path, a ``file://`` URL (kept as its local path) or an object-store URL
(``gs://bucket/run``): every file goes through ``sagd_jax.files``, the checkpoints through Orbax
and the events through TensorBoard's writer, which take the same paths.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import ml_collections

from sagd_jax import checkpoint, console, files, noise_fit
from sagd_jax.config import (
    ALLOW_CONFIG_CHANGE,
    change_record,
    identity_changes,
    normalize,
    posthoc_profiles,
)
from sagd_jax.errors import DamagedCheckpoint
from sagd_jax.lock import Lock

# Config sections that fix what a checkpoint means; a workdir never resumes under others.
STRUCTURAL_KEYS = ("data.name", "data.image_size", "data.channels", "data.latent_channels",
                   "data.latent_downsample", "noise", "diffusion", "model")


def _as_dict(config: Any) -> dict[str, Any]:
    """A config (ConfigDict or dict) as plain JSON values."""
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    return json.loads(config.to_json_best_effort())


def _structural(config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in STRUCTURAL_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


class Workdir:
    """The files of one run under ``path`` (a folder that may not exist yet)."""

    def __init__(self, path: str):
        self.path = files.normalize(path)  # a file:// URL as its local path
        self.config_path = files.join(self.path, "config.json")
        self.metrics_path = files.join(self.path, "metrics.jsonl")
        self.lock_path = files.join(self.path, "lock")
        self.samples_dir = files.join(self.path, "samples")
        self.generated_dir = files.join(self.path, "generated")
        self.checkpoint_dir = checkpoint.checkpoint_dir(self.path)

    def __repr__(self) -> str:
        return f"Workdir({self.path!r})"

    # --- before anything is built ---------------------------------------------------------
    def check_writable(self) -> None:
        """Refuse a workdir that cannot be created or written (one-line ``ValueError``;
        ``files.unwritable``)."""
        why = files.unwritable(self.path)
        if why is not None:
            raise ValueError(f"--workdir={self.path}: {why}")

    # --- the config -----------------------------------------------------------------------
    def is_empty(self) -> bool:
        """Whether the workdir does not exist yet or is an empty folder (a fresh run)."""
        return not files.isdir(self.path) or not files.listdir(self.path)

    def saved_config(self) -> ml_collections.ConfigDict:
        """The config the run started with, on today's defaults (keys added since then read
        their default): ``config.json``, or if it is missing the config saved beside the
        latest checkpoint. A one-line ``ValueError`` naming the file if there is neither, or
        it is not a config."""
        if not files.isfile(self.config_path):
            return normalize(self._checkpoint_config())
        try:
            saved = files.read_json(self.config_path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.config_path}: not a config ({err})") from None
        if not isinstance(saved, dict):
            raise ValueError(f"{self.config_path}: not a config (a JSON "
                             f"{type(saved).__name__}, not an object)")
        try:
            return normalize(saved)
        except (ValueError, AttributeError, TypeError) as err:
            raise ValueError(f"{self.config_path}: not a config ({err})") from None

    def _checkpoint_config(self) -> dict[str, Any]:
        """The config beside the latest checkpoint (for a workdir that lost config.json)."""
        step = self.latest_step()
        if step is None:
            raise ValueError(f"--workdir={self.path}: no config.json; not a training workdir")
        try:
            return checkpoint.saved_config(self.path, step)
        except DamagedCheckpoint as err:
            raise ValueError(f"--workdir={self.path}: no config.json, and {err}") from None

    def check_compatible(self, config: Any, saved: Any = None) -> None:
        """Raise a one-line ``ValueError`` naming the first structural key where ``config``
        differs from the run's own (``saved``, default: its ``config.json``). With the same
        ``noise.fit`` as the run, the fitted keys are the run's (``noise_fit.saved_fit``)."""
        saved = self.saved_config() if saved is None else normalize(saved)
        previous_dict, current_dict = _as_dict(saved), _as_dict(config)
        noise, saved_noise = current_dict.get("noise"), previous_dict.get("noise")
        if isinstance(noise, dict) and isinstance(saved_noise, dict):  # fitted keys: the run's
            noise.update(noise_fit.saved_fit(noise, saved_noise))
        previous, current = _structural(previous_dict), _structural(current_dict)
        for key in STRUCTURAL_KEYS:
            if previous[key] != current[key]:
                raise ValueError(
                    f"--workdir={self.path}: holds a run with {key}={previous[key]!r}, this "
                    f"config has {current[key]!r}; use a new workdir")
        kept, keeps = posthoc_profiles(saved), posthoc_profiles(config)
        if kept != keeps:  # the train state's structure: which profiles it carries
            def says(stds: tuple[float, ...]) -> str:
                return f"post-hoc EMA profiles {list(stds)}" if stds else "no post-hoc EMA"
            raise ValueError(f"--workdir={self.path}: holds a run with {says(kept)} "
                             f"(ema.snapshot_every, ema.posthoc_stds), this config has "
                             f"{says(keeps)}; use a new workdir")

    def prepare(self, config: Any, is_writer: bool = True, allow_change: bool | None = None
                ) -> None:
        """Create the workdir and write ``config.json`` on a first start, or check a resume
        against the run's identity (``_resume``: structural keys never change; identity keys
        only with ``allow_change``, default ``ALLOW_CONFIG_CHANGE``, the trainer's
        ``--allow_config_change``). A lost ``config.json`` is written back from the latest
        checkpoint's config (with the allowed changes)."""
        allow = ALLOW_CONFIG_CHANGE.get() if allow_change is None else allow_change
        if files.exists(self.config_path):
            self._resume(config, self.saved_config(), allow, is_writer)
            return
        try:
            if self.latest_step() is not None:
                self._resume(config, self._checkpoint_config(), allow, is_writer, missing=True)
                return
            files.makedirs(self.path)
            if is_writer:  # atomically: other processes may be reading it already
                files.write_json(self.config_path, _as_dict(config), exclusive=True)
        except FileExistsError:  # another start wrote it meanwhile
            self._resume(config, self.saved_config(), allow, is_writer)
        except OSError as err:
            raise ValueError(f"--workdir={self.path}: not writable "
                             f"({err.strerror or err})") from None

    def _resume(self, config: Any, saved: Any, allow: bool, is_writer: bool,
                missing: bool = False) -> None:
        """The resume-identity rule: ``config`` against the run's ``saved`` one. A structural
        change is refused (``check_compatible``); a change of a key outside
        ``config.RESUME_MAY_CHANGE`` is refused in one line naming each key with its old and
        new value, unless ``allow``: then the writer appends it to ``config_changes.jsonl``
        and rewrites ``config.json`` with ``config`` (the new identity). ``missing``: there is
        no ``config.json``; it is written (``saved``, or ``config`` after a change)."""
        self.check_compatible(config, saved)
        changes = identity_changes(_as_dict(normalize(saved)), _as_dict(config),
                                   STRUCTURAL_KEYS)
        text = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        if changes and not allow:
            raise ValueError(f"--workdir={self.path}: the run was started with other values of "
                             f"keys a resume may not change ({text}); give "
                             "--allow_config_change to resume with the new values (recorded in "
                             "config_changes.jsonl), or use a new workdir")
        if not is_writer:
            return
        step = self.latest_step()
        if changes:
            path = files.join(self.path, "config_changes.jsonl")
            files.append_jsonl(path, change_record(step, changes))
            console.warning("resuming at step %s with a changed config (%s): recorded in %s",
                            step, text, path)
        if changes or missing:
            files.write_json(self.config_path, _as_dict(config if changes else saved),
                             exclusive=missing)
        if missing:
            console.warning("%s was missing: written back from the config of checkpoint %d",
                            self.config_path, step)

    def lock(self) -> Lock:
        """The trainer's lock on this workdir (not yet taken)."""
        return Lock(self.lock_path, f"--workdir={self.path}", "trainer")

    def remove_new_run(self, created: bool) -> None:
        """Remove everything a failed first start wrote (the workdir was empty before it);
        ``created``: the folder itself did not exist, so it goes too."""
        if created:
            files.rmtree(self.path, ignore_errors=True)
            return
        for name in files.listdir(self.path):
            path = files.join(self.path, name)
            if files.isdir(path) and not files.islink(path):
                files.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    files.remove(path)

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        return checkpoint.saved_steps(self.path)

    def latest_step(self) -> int | None:
        steps = self.checkpoint_steps()
        return steps[-1] if steps else None

    def snapshot_steps(self) -> list[int]:
        """Steps of the complete post-hoc EMA snapshots (``ema_snapshots/``), ascending."""
        return checkpoint.saved_steps(self.path, checkpoint.EMA_SNAPSHOTS)

    def snapshotter(self) -> checkpoint.Checkpointer:
        """The run's EMA snapshots: a ``Checkpointer`` of ``ema_snapshots/`` keeping all."""
        return checkpoint.Checkpointer(self.path, keep=None, folder=checkpoint.EMA_SNAPSHOTS)

    def set_aside_snapshots_after(self, step: int) -> list[str]:
        """Set aside (``<step>.redone``) the snapshots of steps after ``step``: a run resumed
        at ``step`` takes them again; returns the new paths."""
        directory = checkpoint.checkpoint_dir(self.path, checkpoint.EMA_SNAPSHOTS)
        return [files.set_aside(files.join(directory, str(later)), ".redone")
                for later in self.snapshot_steps() if later > step]

    def is_finished(self, num_steps: int) -> bool:
        """Whether the run has its final checkpoint (step ``num_steps``)."""
        return num_steps in self.checkpoint_steps()

    def checkpointer(self, keep: int | None = None) -> checkpoint.Checkpointer:
        return checkpoint.Checkpointer(self.path, keep=keep)

    # --- logs and samples -----------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        files.append_jsonl(self.metrics_path, record)

    def truncate_metrics(self, step: int) -> int:
        """Ready the log for a start at ``step``: drop the records of later steps (redone), and
        move lines that are not JSON records (a torn write, anywhere) to a new
        ``metrics.jsonl.torn`` with one warning line, so that nothing is appended onto them;
        rewritten atomically, only if something changes. Returns how many records were
        dropped. A one-line ``ValueError`` for a log that is a folder or cannot be read."""
        if not files.exists(self.metrics_path):
            return 0
        try:
            content = files.scan_jsonl(self.metrics_path)
        except IsADirectoryError:
            raise ValueError(f"{self.metrics_path}: a folder, not the run's log file; move it "
                             "away to go on") from None
        except OSError as err:
            raise ValueError(f"{self.metrics_path}: cannot be read "
                             f"({err.strerror or err})") from None
        records = content.records
        keep = [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= step]
        if content.bad:  # kept first, then gone from the log: never lost, never appended onto
            aside = files.write_beside(self.metrics_path, ".torn",
                                       b"".join(line + b"\n" for _, line in content.bad))
            console.warning("%s: %s (a write cut short): moved to %s", self.metrics_path,
                            content.bad_text(), aside)
        if len(keep) < len(records) or content.bad or content.unterminated:
            with files.atomic_open(self.metrics_path) as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
        return len(records) - len(keep)

    def metrics(self) -> list[dict[str, Any]]:
        """Every logged record that reads back (``[]`` before the first): a line that is not a
        JSON record is skipped, a log that cannot be read (a folder) read as empty, each with
        one warning line; never raises (a resume repairs the log: ``truncate_metrics``)."""
        if not files.exists(self.metrics_path):
            return []
        try:
            content = files.scan_jsonl(self.metrics_path)
        except OSError as err:
            console.warning("%s: cannot be read (%s); no metrics from it", self.metrics_path,
                            "a folder" if files.isdir(self.metrics_path)
                            else err.strerror or err)
            return []
        if content.bad:
            console.warning("%s: %s; skipped", self.metrics_path, content.bad_text())
        return content.records

    def last_metrics(self) -> dict[str, Any]:
        """The last logged step's records merged (training scalars and, when that step was
        evaluated too, its FID/KID record); ``{}`` before the first."""
        records = self.metrics()
        merged: dict[str, Any] = {}
        for record in records:
            if record.get("step") == (records[-1].get("step") if records else None):
                merged |= record
        return merged

    def sample_grid_path(self, step: int) -> str:
        return files.join(self.samples_dir, f"step_{step:07d}.png")

    def spectrum_path(self, step: int) -> str:
        return files.join(self.samples_dir, f"spectrum_{step:07d}.json")

    def last_spectrum_error(self) -> float | None:
        """The latest periodic samples' mean |log ratio| of radial spectra, if any."""
        paths = sorted(files.glob(files.join(self.samples_dir, "spectrum_*.json")))
        return files.read_json(paths[-1])["mean_abs_log_ratio"] if paths else None

    def generated(self, name: str) -> str:
        """The folder of a sample set of ``sagd_jax.sample``."""
        return files.join(self.generated_dir, name)
