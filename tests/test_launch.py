"""The sweep launcher and config-override parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_train import REPO, tiny_cli_overrides

from launch.sweep import make_points, run_name, split_values
from sagd_jax.config import load_config_file, override

# The trainer tests' tiny program (shared XLA compile cache), on 16x16 GRFs, two steps.
TINY_SETS = ["data.name=grf", "data.image_size=16", "train.num_steps=2",
             *(flag.removeprefix("--config.") for flag in tiny_cli_overrides())]


def sweep(*args):
    command = [sys.executable, "-m", "launch.sweep", "--config=configs/quickstart.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


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


def test_overrides_take_the_config_types_and_reject_unknown_keys():
    config = load_config_file(os.path.join(REPO, "configs", "fashion_mnist.py:iso"))
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


def test_sweep_runs_resumes_summarises_and_emits(tmp_path):
    root = str(tmp_path / "sweep")
    sets = [f"--set={s}" for s in TINY_SETS]
    result = sweep(f"--root={root}", "--sweep=seed=0,1", *sets, f"--json={tmp_path}/s.json")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert sorted(os.listdir(root)) == ["logs", "seed-0", "seed-1"]
    rows = json.load(open(tmp_path / "s.json"))
    assert [(r["seed"], r["status"], r["step"]) for r in rows] == [("0", "finished", 2),
                                                                  ("1", "finished", 2)]
    assert rows[0]["loss"] != rows[1]["loss"]  # different seeds, different runs
    assert all(r["spectrum_error"] > 0 for r in rows)
    # A second call skips finished runs and extends one whose num_steps grew (resume).
    again = sweep(f"--root={root}", "--sweep=seed=0,1", *sets)
    assert again.stdout.count("finished, skipped") == 2
    longer = sweep(f"--root={root}", "--sweep=seed=0,1", *sets, "--set=train.num_steps=3",
                   "--index=1")
    assert longer.returncode == 0, longer.stderr[-3000:]
    log = open(os.path.join(root, "logs", "seed-1.log")).read()
    assert "starting at step 2 of 3" in log
    assert sorted(os.listdir(os.path.join(root, "seed-1", "checkpoints"))) == ["2", "3"]
    # Job arrays: one point per task.
    emitted = sweep(f"--root={root}", "--sweep=seed=0,1", *sets, "--emit=slurm")
    assert "#SBATCH --array=0-1" in emitted.stdout
    assert "--index=$SLURM_ARRAY_TASK_ID" in emitted.stdout


def test_sweep_validates_every_point_before_running(tmp_path):
    root = tmp_path / "bad"
    result = sweep(f"--root={root}", "--sweep=optim.learning_rate=1e-3,-1")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("error: point 1 (optim.learning_rate--1): optim.learning_rate=-1.0: must be "
                    "a finite number in (0, 1]")
    assert not root.exists()
