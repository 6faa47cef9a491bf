"""Checkpoints that are not what they seem (docs/reliability.md, faults 11 and 12): one whose
fingerprint is missing, and a step folder that is not a complete checkpoint (empty, or without
Orbax's completion markers). Neither is ever trusted: through the CLIs, the trainer sets it
aside and redoes the steps bit for bit, the sampler falls back to the previous checkpoint with
one warning line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from sagd_jax import checkpoint
from sagd_jax.run import Run
from sagd_jax.sharding import make_mesh

BAD_INPUT = 2
COMMITTED, METADATA = "commit_success.txt", "_CHECKPOINT_METADATA"  # Orbax's step markers


@pytest.fixture(scope="module")
def args(tiny_cli_overrides: list[str]) -> list[str]:
    """Trainer flags of a tiny grf run (a workdir is added per test)."""
    return ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.sample_every=100000",
            "--config.train.keep_checkpoints=100", *tiny_cli_overrides]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, args: list[str], repo: str) -> Path:
    """A finished 6-step workdir with checkpoints 3 and 6, never interrupted (copy it)."""
    from sagd_jax.main import main

    workdir = tmp_path_factory.mktemp("integrity") / "run"
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        assert main(["sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=6"]) == 0
    finally:
        os.chdir(cwd)
    return workdir


def copy_of(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def lines_with(text: str, stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed CLI call (and no traceback)."""
    lines = lines_with("error:", stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def logged_steps(workdir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]


def leaves(workdir: Path, step: int) -> list[Any]:
    state = Run.from_workdir(str(workdir)).restore(make_mesh(), step)
    return jax.tree.leaves(jax.device_get(state))


def assert_redone_bit_for_bit(workdir: Path, trained: Path) -> None:
    assert logged_steps(workdir) == logged_steps(trained)  # every step once
    for a, b in zip(leaves(workdir, 6), leaves(trained, 6), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_step_folder_without_orbax_completion_markers_is_not_a_checkpoint(tmp_path: Path):
    folder = tmp_path / "checkpoints"
    (folder / "999").mkdir(parents=True)
    (folder / "5" / "state").mkdir(parents=True)
    (folder / "5" / COMMITTED).write_text("done")  # metadata lost
    (folder / "4").mkdir()
    (folder / "4" / COMMITTED).write_text("done")
    (folder / "4" / METADATA).write_text(json.dumps(
        {"item_handlers": {"state": "x", "config": "x"}, "commit_timestamp_nsecs": 1}))
    assert checkpoint.saved_steps(str(tmp_path)) == [4]
    assert checkpoint.incomplete_steps(str(tmp_path)) == {
        5: "no readable _CHECKPOINT_METADATA", 999: "no commit_success.txt"}
    assert not checkpoint.fingerprinted(str(folder / "4"))  # from before fingerprints
    assert checkpoint.fingerprinted(str(folder / "5"))  # unknown: must have one


@pytest.mark.slow
def test_a_missing_fingerprint_is_damage_for_the_sampler_and_the_trainer(
        tmp_path: Path, trained: Path, args: list[str], run_cli: Any, damage_an_array: Any):
    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "6" / "fingerprint")
    # unverifiable without the fingerprint: must not be used
    damage_an_array(workdir / "checkpoints" / "6" / "state")
    where = f"checkpoint {workdir}/checkpoints/6: its fingerprint is missing"

    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--num_samples=2",
                     "--steps=2", "--chunk_size=2")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    warning = lines_with("warning:", result.stderr)
    assert len(warning) == 1 and where in warning[0], result.stderr[-3000:]
    assert "restoring step 3 instead" in warning[0]
    manifest = json.loads(next((workdir / "generated").glob("*/manifest.json")).read_text())
    assert manifest["checkpoint_step"] == 3  # no sample from the unverified weights
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--num_samples=2",
                     "--steps=2", "--chunk_size=2", "--checkpoint_step=6")
    assert result.returncode == BAD_INPUT and where in error_line(result.stderr)

    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(lines_with(where, result.stderr)) == 1
    assert f"set aside as {workdir}/checkpoints/6.damaged" in result.stderr
    assert "starting at step 3 of 6" in result.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6", "6.damaged"]
    assert_redone_bit_for_bit(workdir, trained)

    # A checkpoint from before fingerprints (its metadata lists none): one warning line. Made
    # from the sound step 6 (the damaged copy's flipped bit may land in compressed data, which
    # then fails to read at all).
    shutil.copytree(workdir / "checkpoints" / "6", workdir / "checkpoints" / "9")
    shutil.rmtree(workdir / "checkpoints" / "9" / "fingerprint", ignore_errors=True)
    metadata_path = workdir / "checkpoints" / "9" / METADATA
    metadata = json.loads(metadata_path.read_text())
    del metadata["item_handlers"]["fingerprint"]
    metadata_path.write_text(json.dumps(metadata))
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--num_samples=2",
                     "--steps=2", "--chunk_size=2", "--checkpoint_step=9", "--seed=1")
    assert result.returncode == 0, result.stderr[-3000:]
    warning = lines_with("warning:", result.stderr)
    assert len(warning) == 1 and (f"checkpoint {workdir}/checkpoints/9 was saved before "
                                  "checkpoints had fingerprints: restored unverified"
                                  in warning[0]), result.stderr[-3000:]


@pytest.mark.slow
def test_a_step_folder_that_is_not_a_complete_checkpoint_is_set_aside_and_redone(
        tmp_path: Path, trained: Path, args: list[str], run_cli: Any):
    workdir = copy_of(trained, tmp_path)
    folder = workdir / "checkpoints"
    (folder / "6" / COMMITTED).unlink()  # a save that never completed
    (folder / "6" / METADATA).unlink()
    (folder / "999").mkdir()  # an empty folder: not "already at step 999"

    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    for step, why in ((6, "no commit_success.txt"), (999, "no commit_success.txt")):
        line = lines_with(f"{folder}/{step}: not a complete checkpoint", result.stderr)
        assert len(line) == 1 and f"({why}); set aside as {folder}/{step}.damaged" in line[0]
    assert "starting at step 3 of 6" in result.stderr
    assert sorted(os.listdir(folder)) == ["3", "6", "6.damaged", "999.damaged"]
    assert_redone_bit_for_bit(workdir, trained)
