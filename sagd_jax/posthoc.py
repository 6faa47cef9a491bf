"""Post-hoc EMA of a trained run (Karras et al. 2024, EDM2 section 3; docs/math.md): the EMA
of any relative std, reconstructed after training from the power-function profiles a run kept
in its snapshots (``ema.snapshot_every``, ``WORKDIR/ema_snapshots/<step>/``).

``params(run, mesh, "posthoc:0.07", step)`` gives the parameters the sampler and evaluator
use; a reconstruction is computed once and kept, verified like a checkpoint, in
``WORKDIR/posthoc_ema/std<STD>/<step>/``. ``"ema"`` is the run's ``optim.ema_decay`` EMA.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sagd_jax import checkpoint, console, ema_profiles, files, validate
from sagd_jax.errors import DamagedCheckpoint
from sagd_jax.run import Run

POSTHOC_DIR = "posthoc_ema"  # WORKDIR/posthoc_ema/std<STD>/<step>/: kept reconstructions
PARAMS_KINDS = ("ema", "posthoc:STD")


class _DamagedSnapshot(DamagedCheckpoint):
    """A snapshot that does not read back, with its ``step``."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


@struct.dataclass
class PosthocParams:
    """A kept reconstruction: ``step`` (int32 scalar, the profile's end) and ``params``."""

    step: jax.Array
    params: Any


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """What a reconstruction used: the target ``std`` and ``step``, and for each snapshot
    profile ``(snapshot step, kept std)`` its ``coefficient``."""

    std: float
    step: int
    profiles: tuple[tuple[int, float], ...]
    coefficients: tuple[float, ...]

    def describe(self) -> str:
        used = sorted({step for step, _ in self.profiles})
        return (f"post-hoc EMA std {self.std:g} at step {self.step}: {len(self.profiles)} "
                f"profiles of {len(used)} snapshots (steps {used[0]}..{used[-1]})")


def parse_params(spec: str, flag: str = "--params") -> float | None:
    """``"ema"`` -> None; ``"posthoc:STD"`` -> STD (a positive number); else a one-line
    ``ValueError`` naming ``flag``."""
    text = str(spec).strip()
    if text == "ema":
        return None
    kind, _, value = text.partition(":")
    if kind.strip() != "posthoc" or not value.strip():
        raise ValueError(f"{flag}={spec!r}: expected one of {', '.join(PARAMS_KINDS)}")
    try:
        std = float(value)
    except ValueError:
        raise ValueError(f"{flag}={spec!r}: STD must be a number (posthoc:0.07)") from None
    return validate.number(flag, std, 0.0, open_lo=True)


def params_name(spec: str) -> str:
    """The part of a sample set's name for ``--params``: "" for ``ema``, ``-posthoc0.07``."""
    std = parse_params(spec)
    return "" if std is None else f"-posthoc{std:g}"


def _snapshot_abstract(run: Run, mesh: jax.sharding.Mesh) -> Any:
    """The shapes and shardings of one of ``run``'s snapshots on ``mesh``."""
    return run.abstract_state(mesh).snapshot()


def _require_snapshots(run: Run) -> tuple[float, ...]:
    workdir = run._require_workdir()
    stds = run.posthoc_stds
    if not stds or not workdir.snapshot_steps():
        why = ("keeps no post-hoc EMA profiles (train with --config.ema.snapshot_every=N)"
               if not stds else f"has no EMA snapshot under {workdir.path}/"
               f"{checkpoint.EMA_SNAPSHOTS}")
        raise ValueError(f"--workdir={workdir.path}: {why}")
    return stds


def plan(run: Run, std: float, step: int | None = None) -> Reconstruction:
    """The coefficients of ``std`` at ``step`` (default: the last snapshot) over every
    snapshot's profiles (later ones too: least squares weighs what fits); one-line
    ``ValueError`` for a run without snapshots, a step outside the snapshots' or a std whose
    profile they cannot reconstruct (``ema_profiles.MAX_PROFILE_ERROR``)."""
    stds = _require_snapshots(run)
    steps = run.workdir.snapshot_steps()
    return _plan(stds, steps, std, step)


def _plan(stds: tuple[float, ...], steps: list[int], std: float, step: int | None
          ) -> Reconstruction:
    target = steps[-1] if step is None else validate.integer("--step", step, 1)
    if target < steps[0]:
        raise ValueError(f"--step={target}: before the first EMA snapshot (step {steps[0]})")
    if target > steps[-1]:
        raise ValueError(f"--step={target}: beyond the last EMA snapshot (step {steps[-1]})")
    profiles = tuple((s, kept) for s in steps for kept in stds)
    try:
        coefficients = ema_profiles.solve_coefficients(
            [s for s, _ in profiles], [kept for _, kept in profiles], target, std)
    except ValueError as err:
        raise ValueError(f"--std={std:g}: {err}") from None
    return Reconstruction(std=float(std), step=int(target), profiles=profiles,
                          coefficients=tuple(float(c) for c in np.ravel(coefficients)))


def reconstruct(run: Run, mesh: jax.sharding.Mesh, std: float, step: int | None = None
                ) -> tuple[Any, Reconstruction]:
    """The parameters of the post-hoc EMA of relative ``std`` at ``step``, on ``mesh`` with
    the run's parameter shardings: ``sum_k x_k profile_k`` over the snapshots' profiles
    (float32, on device). A damaged snapshot is reported in one line, set aside
    (``<step>.damaged``) and left out, the coefficients solved again without it."""
    while True:
        recipe = plan(run, std, step)
        try:
            return _combine(run, mesh, recipe), recipe
        except _DamagedSnapshot as err:
            aside = (checkpoint.set_aside(run.workdir.path, err.step, checkpoint.EMA_SNAPSHOTS)
                     if jax.process_index() == 0 else "")
            console.warning("%s; set aside as %s, reconstructing without it", err, aside)


@jax.jit
def _add_scaled(total: Any, tree: Any, c: jax.Array) -> Any:
    """``total + c * tree`` leaf by leaf (one compiled program for every reconstruction)."""
    return jax.tree.map(lambda a, p: a + c * p, total, tree)


def _combine(run: Run, mesh: jax.sharding.Mesh, recipe: Reconstruction) -> Any:
    abstract = _snapshot_abstract(run, mesh)
    stds = run.posthoc_stds
    coefficient = dict(zip(recipe.profiles, recipe.coefficients, strict=True))
    total = None
    snapshots = run.workdir.snapshotter()
    try:
        for snap_step in sorted({s for s, _ in recipe.profiles}):
            try:
                snapshot = snapshots.restore(abstract, snap_step)
            except DamagedCheckpoint as err:
                raise _DamagedSnapshot(snap_step, str(err)) from None
            for kept, profile in zip(stds, snapshot.profiles, strict=True):
                c = jnp.float32(coefficient[(snap_step, kept)])
                if total is None:
                    total = jax.tree.map(jnp.zeros_like, profile)
                total = _add_scaled(total, profile, c)
    finally:
        snapshots.close()
    return total


def _kept(run: Run, std: float) -> checkpoint.Checkpointer:
    return checkpoint.Checkpointer(run.workdir.path, keep=None, async_save=False,
                                   folder=files.join(POSTHOC_DIR, f"std{std:g}"))


def load(run: Run, mesh: jax.sharding.Mesh, std: float, step: int | None = None, *,
         save: bool = True) -> tuple[Any, Reconstruction]:
    """The post-hoc EMA ``std`` at ``step``: the kept reconstruction if there is one that
    reads back, else ``reconstruct`` (kept with ``save``)."""
    recipe = plan(run, std, step)  # checks the request before anything is read
    kept = _kept(run, std)
    try:
        abstract = PosthocParams(step=jax.ShapeDtypeStruct((), jnp.int32),
                                 params=run.abstract_state(mesh).params)
        if recipe.step in kept.all_steps():
            try:
                return kept.restore(abstract, recipe.step).params, recipe
            except DamagedCheckpoint as err:
                console.warning("%s; reconstructing it again, the damaged one set aside as %s",
                                err, checkpoint.set_aside(run.workdir.path, recipe.step,
                                                          kept.folder))
        params, recipe = reconstruct(run, mesh, std, step)
        if save:
            kept.save(PosthocParams(step=jnp.int32(recipe.step), params=params), run.config)
            kept.wait()
        return params, recipe
    finally:
        kept.close()


def params(run: Run, mesh: jax.sharding.Mesh, spec: str, step: int | None = None
           ) -> tuple[Any, int, str]:
    """The parameters ``spec`` names (``ema`` | ``posthoc:STD``), their step and a one-line
    description: ``ema`` restores checkpoint ``step`` (default latest); ``posthoc:STD`` the
    post-hoc EMA ending at snapshot step ``step`` (default the last snapshot)."""
    std = parse_params(spec)
    if std is None:
        state = run.restore(mesh, step)
        at = int(jax.device_get(state.step))
        return state.ema_params, at, f"EMA of checkpoint {at}"
    found, recipe = load(run, mesh, std, step)
    return found, recipe.step, recipe.describe()
