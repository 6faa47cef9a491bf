"""The sweep launcher and config-override parsing."""

from __future__ import annotations

import json
import os

import pytest

from launch.sweep import make_points, run_name, split_values
from sagd_jax.config import load_config_file, override

# The trainer tests' tiny program (shared XLA compile cache), on 16x16 GRFs, two steps.
TINY_DATA = ["data.name=grf", "data.image_size=16", "train.num_steps=2"]


@pytest.fixture
def sweep(run_cli, tiny_cli_overrides):
    """``sweep(*args, tiny=True)``: ``python -m launch.sweep`` on the quickstart config, run in
    this process (each point still trains in its own process); ``tiny``: the tiny program's
    values as ``--set`` flags first."""
    sets = [f"--set={s}" for s in TINY_DATA]
    sets += [f"--set={flag.removeprefix('--config.')}" for flag in tiny_cli_overrides]

    def call(*args, tiny=True):
        return run_cli("launch.sweep", "--config=configs/quickstart.py",
                       *(sets if tiny else []), *args)

    return call


def test_grid_points_names_and_values():
    points = make_points("root", ["noise.gamma=0,0.5", "model.ch_mult=(1,2),(1,2,2)"],
                         ["seed=3"])
    assert [p.index for p in points] == [0, 1, 2, 3]
    assert points[1].overrides == (("seed", "3"), ("noise.gamma", "0"),
                                   ("model.ch_mult", "(1,2,2)"))
    assert points[3].workdir == os.path.join("root", "noise.gamma-0.5_model.ch_mult-~1~2~2~")
    assert split_values("a,(1,2),[3,4]") == ["a", "(1,2)", "[3,4]"]
    assert run_name((("noise.bands", "bandstop:0.4:0.6"),)) == "noise.bands-bandstop~0.4~0.6"
    with pytest.raises(ValueError, match="share the workdir name"):
        make_points("root", ["noise.bands=a:b,a+b"], [])


def test_overrides_take_the_config_types_and_reject_unknown_keys(repo):
    config = load_config_file(os.path.join(repo, "configs", "fashion_mnist.py:iso"))
    assert config.noise.gamma == 0.0
    override(config, "noise.gamma", "2")
    override(config, "model.ch_mult", "(1, 2)")
    override(config, "data.random_flip", "false")
    assert config.noise.gamma == 2.0 and isinstance(config.noise.gamma, float)
    assert config.model.ch_mult == (1, 2) and config.data.random_flip is False
    with pytest.raises(ValueError, match="noise.gama: no such config key"):
        override(config, "noise.gama", "1")
    with pytest.raises(ValueError, match="train.num_steps=ten: not a int"):
        override(config, "train.num_steps", "ten")


def test_sweep_runs_resumes_summarises_and_emits(tmp_path, sweep):
    root = str(tmp_path / "sweep")
    result = sweep(f"--root={root}", "--sweep=seed=0,1", f"--json={tmp_path}/s.json")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert sorted(os.listdir(root)) == ["logs", "seed-0", "seed-1"]
    rows = json.load(open(tmp_path / "s.json"))
    assert [(r["seed"], r["status"], r["step"]) for r in rows] == [("0", "finished", 2),
                                                                  ("1", "finished", 2)]
    assert rows[0]["loss"] != rows[1]["loss"]  # different seeds, different runs
    assert all(r["spectrum_error"] > 0 for r in rows)
    # The table on stdout, a progress line per point on stderr.
    assert result.stdout.splitlines()[0].split()[:4] == ["seed", "status", "step", "loss"]
    assert result.stderr.count("training (log ") == 2
    assert result.stderr.count(": finished after ") == 2
    # The summary file is never overwritten: refused before anything runs.
    again = sweep(f"--root={root}", "--sweep=seed=0,1", f"--json={tmp_path}/s.json")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: --json={tmp_path}/s.json: exists; results are never overwritten"]
    assert json.load(open(tmp_path / "s.json")) == rows
    # A second call skips finished runs and extends one whose num_steps grew (resume).
    again = sweep(f"--root={root}", "--sweep=seed=0,1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished, skipped") == 2
    longer = sweep(f"--root={root}", "--sweep=seed=0,1", "--set=train.num_steps=3",
                   "--index=1")
    assert longer.returncode == 0, longer.stderr[-3000:]
    log = open(os.path.join(root, "logs", "seed-1.log")).read()
    assert "starting at step 2 of 3" in log
    assert sorted(os.listdir(os.path.join(root, "seed-1", "checkpoints"))) == ["2", "3"]
    # Job arrays: one point per task.
    emitted = sweep(f"--root={root}", "--sweep=seed=0,1", "--emit=slurm")
    assert "#SBATCH --array=0-1" in emitted.stdout
    assert "--index=$SLURM_ARRAY_TASK_ID" in emitted.stdout
    assert f"--root={root}" in emitted.stdout and "--sweep=seed=0,1" in emitted.stdout


def test_sweep_validates_every_point_before_running(tmp_path, sweep):
    root = tmp_path / "bad"
    result = sweep(f"--root={root}", "--sweep=optim.learning_rate=1e-3,-1", tiny=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("error: point 1 (optim.learning_rate--1): optim.learning_rate=-1.0: must be "
                    "a finite number in (0, 1]")
    assert not root.exists()


@pytest.mark.parametrize("flag", ["--set=train.nosuchkey=3", "--sweep=train.nosuchkey=3,4"])
def test_sweep_refuses_an_unknown_key_in_one_line_naming_the_closest(tmp_path, sweep, flag):
    root = tmp_path / "bad"
    result = sweep(f"--root={root}", "--sweep=seed=0,1", flag, f"--json={tmp_path}/s.json")
    assert result.returncode == 2
    assert result.stdout == ""
    name = flag.split("=")[0]
    assert result.stderr.strip().splitlines() == [
        f"error: {name}=train.nosuchkey: no such config key; closest: train.num_steps, "
        "train.nonfinite, train.log_every"]
    assert os.listdir(tmp_path) == []
