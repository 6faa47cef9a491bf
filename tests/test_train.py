"""The trainer end to end on tiny settings: CLI, exact resume, 1 vs 4 devices, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from sagd_jax.config import default_config
from sagd_jax.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OVERRIDES = {
    "data.name": "grf", "data.image_size": 16, "data.channels": 1, "data.num_examples": 256,
    "model.ch": 8, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
    "model.attn_resolutions": (8,), "model.num_groups": 2, "model.dropout": 0.1,
    "optim.warmup_steps": 2, "optim.learning_rate": 1e-3,
    "train.batch_size": 8, "train.log_every": 2, "train.checkpoint_every": 3,
    "train.sample_every": 100, "train.num_samples": 4, "train.sample_steps": 3,
}


def tiny_config(**overrides):
    config = default_config()
    for key, value in {**TINY_OVERRIDES, **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def params_of(state):
    return jax.tree.leaves(jax.device_get((state.params, state.ema_params, state.opt_state)))


def test_exact_resume_is_bitwise(tmp_path):
    straight = train_and_evaluate(tiny_config(**{"train.num_steps": 6}), str(tmp_path / "a"))
    train_and_evaluate(tiny_config(**{"train.num_steps": 3}), str(tmp_path / "b"))
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["3"]
    resumed = train_and_evaluate(tiny_config(**{"train.num_steps": 6}), str(tmp_path / "b"))
    assert int(resumed.step) == int(straight.step) == 6
    for a, b in zip(params_of(straight), params_of(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    # The runs did train: parameters moved away from their initial values.
    fresh = train_and_evaluate(tiny_config(**{"train.num_steps": 1}), str(tmp_path / "c"))
    assert any(not np.array_equal(a, b) for a, b in
               zip(params_of(straight), params_of(fresh), strict=True))
    # Samples, their spectrum and TensorBoard metrics were written.
    files = os.listdir(tmp_path / "a" / "samples")
    assert "step_0000006.png" in files and "spectrum_0000006.json" in files
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "a"))


def test_workdir_of_another_run_is_refused(tmp_path):
    train_and_evaluate(tiny_config(**{"train.num_steps": 1}), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(ValueError, match=r"holds a run with noise=.*use a new workdir"):
        train_and_evaluate(tiny_config(**{"train.num_steps": 2, "noise.gamma": 2.0}),
                           str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_a_workdir_written_before_a_new_option_resumes_with_its_default(tmp_path):
    from sagd_jax.train.loop import check_compatible

    saved = json.loads(tiny_config().to_json_best_effort())
    del saved["noise"]["project_data"]  # a config.json from before the option existed
    check_compatible(str(tmp_path), saved, tiny_config())
    with pytest.raises(ValueError, match=r"holds a run with noise=.*use a new workdir"):
        check_compatible(str(tmp_path), saved, tiny_config(**{"noise.project_data": True}))


FOUR_DEVICE_SCRIPT = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_train import tiny_config, params_of
    from sagd_jax.train.loop import train_and_evaluate, initial_state, build_run
    from sagd_jax.checkpoint import Checkpointer
    from sagd_jax.sharding import make_mesh
    assert jax.device_count() == 4
    config = tiny_config(**{{"train.num_steps": 3}})
    state = train_and_evaluate(config, {workdir!r})
    mesh = make_mesh()
    restored = initial_state(build_run(config), Checkpointer({workdir!r}), mesh)
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.mesh.devices.size == 4 and leaf.sharding.is_fully_replicated
    for a, b in zip(params_of(state), params_of(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    np.savez({out!r}, *params_of(state))
""")


def test_four_devices_match_one_device_and_restore_onto_the_mesh(tmp_path):
    out = str(tmp_path / "four.npz")
    script = FOUR_DEVICE_SCRIPT.format(tests=os.path.join(REPO, "tests"),
                                       workdir=str(tmp_path / "four"), out=out)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = train_and_evaluate(tiny_config(**{"train.num_steps": 3}), str(tmp_path / "one"))
    four = np.load(out)
    leaves = params_of(one)
    assert len(leaves) == len(four.files)
    for i, leaf in enumerate(leaves):
        np.testing.assert_allclose(four[f"arr_{i}"], leaf, rtol=2e-5, atol=2e-6)


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sagd_jax.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def tiny_cli_overrides():
    out = []
    for key, value in TINY_OVERRIDES.items():
        if key.startswith("data."):
            continue  # the quickstart's own data: real Fashion-MNIST
        if isinstance(value, tuple):
            value = "(" + ",".join(map(str, value)) + ",)"
        out.append(f"--config.{key}={value}")
    return out


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_quickstart_cli_end_to_end_with_overrides(tmp_path):
    workdir = tmp_path / "quick"
    result = run_cli("--config=configs/quickstart.py", f"--workdir={workdir}",
                     "--config.train.num_steps=4", "--config.train.sample_every=4",
                     "--config.noise.bands=bandstop:0.4:0.6", *tiny_cli_overrides())
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.load(open(workdir / "config.json"))
    assert saved["noise"]["bands"] == "bandstop:0.4:0.6" and saved["model"]["ch"] == 8
    assert saved["data"]["name"] == "fashion_mnist"
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "4"]
    assert (workdir / "samples" / "step_0000004.png").exists()


@pytest.mark.parametrize("override, message", [
    ("--config.train.batch_size=0", "train.batch_size=0: must be an integer >= 1"),
    ("--config.noise.gamma=nan", "noise.gamma=nan: must be a finite number"),
    ("--config.data.name=no_such_dataset", "data.name='no_such_dataset': unknown source"),
    ("--config.optim.learning_rate=-1", "optim.learning_rate=-1"),
    ("--config.noise.rho0=-1", "noise.rho0=-1.0: must be > 0"),
    ("--config.data.image_size=32", "data.image_size=32: fashion_mnist/train has 28x28"),
    ("--config.train.num_steps=-5", "train.num_steps=-5: must be an integer >= 1"),
    ("--config.train.nonfinite=maybe", "train.nonfinite='maybe': must be one of stop, skip"),
    ("--config.model.ch_mult=(1,2,2,2)", "model.ch_mult=(1, 2, 2, 2)"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, override, message):
    workdir = tmp_path / "never"
    result = run_cli("--config=configs/quickstart.py", f"--workdir={workdir}", override)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_sigterm_checkpoints_the_current_step_and_the_restart_resumes(tmp_path):
    import signal
    import time

    workdir = tmp_path / "preempted"
    args = ["--config=configs/quickstart.py", f"--workdir={workdir}", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.num_steps=100000",
            "--config.train.checkpoint_every=100000", "--config.train.sample_every=100000",
            *tiny_cli_overrides(), "--config.train.log_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "sagd_jax.main", *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until training runs
        if "step 2/100000" in line:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert time.monotonic() - sent < 60 and proc.returncode == 0, rest[-2000:]
    steps = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
    assert len(steps) == 1 and steps[0] >= 2
    result = run_cli(*args[:-1], f"--config.train.num_steps={steps[0] + 1}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"starting at step {steps[0]} of {steps[0] + 1}" in result.stderr
    assert str(steps[0] + 1) in os.listdir(workdir / "checkpoints")
