"""The trainer under faults and bad input: Ctrl-C, a second trainer, a full disk, device
memory, SIGKILL during a save, damaged checkpoints, a lost or broken config.json, a smaller
num_steps, non-finite steps, an unwritable workdir. Each test asserts what docs/reliability.md
promises: one line, the exit status, nothing lost, files as they were.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax import checkpoint, rng
from sagd_jax.config import validate_config
from sagd_jax.run import Run
from sagd_jax.sharding import make_mesh
from sagd_jax.train.loop import train_and_evaluate
from sagd_jax.train_step import reduce_metrics, train_step
from sagd_jax.workdir import Workdir

STOPPED, BAD_INPUT, FAILED, INTERRUPTED = 75, 2, 1, 130


@pytest.fixture(scope="module")
def args(tiny_cli_overrides):
    """Trainer flags of a tiny grf run (a workdir is added per test)."""
    return ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.sample_every=100000",
            "--config.train.keep_checkpoints=100", *tiny_cli_overrides]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, args, repo):
    """A finished 6-step workdir with checkpoints 3 and 6 (copy it before changing it)."""
    from sagd_jax.main import main

    workdir = tmp_path_factory.mktemp("faults") / "run"
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        assert main(["sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=6"]) == 0
    finally:
        os.chdir(cwd)
    return workdir


def copy_of(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def error_line(stderr):
    """The one ``error:`` line of a failed CLI call (and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def snapshot(folder):
    """Every file under ``folder`` with its size and modification time."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            stat = os.stat(path)
            out[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return out


def leaves(workdir, step):
    state = Run.from_workdir(str(workdir)).restore(make_mesh(), step)
    return jax.tree.leaves(jax.device_get(state))


def start_trainer(repo, args, workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "sagd_jax.main", *args,
                             f"--workdir={workdir}", *extra], cwd=repo,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc, text):
    """Read the trainer's stderr until a line contains ``text``; returns what was read."""
    seen = ""
    for line in proc.stderr:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}:\n{seen[-3000:]}")


# --- 1 and 2: Ctrl-C, a second trainer, a resume after SIGKILL -------------------------------
@pytest.mark.slow
def test_ctrl_c_checkpoints_a_second_trainer_is_refused_and_no_step_is_logged_twice(
        tmp_path, repo, args, run_cli):
    workdir = tmp_path / "run"
    run_args = [*args, "--config.train.log_every=1", "--config.train.checkpoint_every=100000"]
    proc = start_trainer(repo, run_args, workdir, "--config.train.num_steps=100000")
    try:
        seen = wait_for(proc, "step 3/100000")
        before = snapshot(workdir / "checkpoints")
        second = run_cli("sagd_jax.main", *run_args, f"--workdir={workdir}",
                         "--config.train.num_steps=100000")
        assert second.returncode == BAD_INPUT
        line = error_line(second.stderr)
        assert f"--workdir={workdir}: in use by trainer pid {proc.pid} on " in line
        assert snapshot(workdir / "checkpoints") == before  # the second wrote nothing
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == STOPPED, rest[-3000:]
    stopped = checkpoint.saved_steps(str(workdir))
    assert len(stopped) == 1 and stopped[0] >= 3
    assert f"SIGINT: checkpointed step {stopped[0]} in " in seen + rest
    assert not (workdir / "lock").exists()

    # SIGKILL after more steps were logged than saved; the resume redoes them, logged once.
    proc = start_trainer(repo, run_args, workdir, "--config.train.num_steps=100000")
    try:
        wait_for(proc, f"step {stopped[0] + 3}/100000")
    finally:
        proc.kill()
        proc.wait()
    logged = [r["step"] for r in map(json.loads, open(workdir / "metrics.jsonl"))]
    assert max(logged) >= stopped[0] + 3 and (workdir / "lock").exists()  # a stale lock
    end = stopped[0] + 4
    result = run_cli("sagd_jax.main", *run_args, f"--workdir={workdir}",
                     f"--config.train.num_steps={end}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed the stale lock of trainer pid" in result.stderr
    assert f"starting at step {stopped[0]} of {end}" in result.stderr
    logged = [r["step"] for r in map(json.loads, open(workdir / "metrics.jsonl"))]
    assert logged == list(range(1, end + 1))


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path, args, run_cli, monkeypatch):
    real = Run.train_step

    def train_step(self, mesh):
        step = real(self, mesh)

        def interrupted(state, batch):
            out = step(state, batch)
            if int(out[0].step) == 2:
                os.kill(os.getpid(), signal.SIGINT)  # the first: stop after a checkpoint
                os.kill(os.getpid(), signal.SIGINT)  # the second, before that: at once
            return out
        return interrupted

    monkeypatch.setattr(Run, "train_step", train_step)
    workdir = tmp_path / "run"
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=100")
    assert result.returncode == INTERRUPTED
    assert "error: interrupted" in error_line(result.stderr)
    assert not workdir.exists()  # a first start stopped before any checkpoint leaves nothing


@pytest.mark.slow
def test_a_stale_lock_of_another_host_is_refused_until_its_heartbeat_stops(tmp_path, trained,
                                                                           args, run_cli):
    workdir = copy_of(trained, tmp_path)
    lock = workdir / "lock"
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "holder": "trainer",
                                "started": "2026-01-01T00:00:00"}))
    flags = [*args, f"--workdir={workdir}", "--config.train.num_steps=6"]
    result = run_cli("sagd_jax.main", *flags)
    assert result.returncode == BAD_INPUT
    assert "in use by trainer pid 1 on elsewhere" in error_line(result.stderr)
    old = time.time() - 3600
    os.utime(lock, (old, old))  # no heartbeat for an hour: the holder is gone
    result = run_cli("sagd_jax.main", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed the stale lock of trainer pid 1 on elsewhere" in result.stderr
    assert "is finished (step 6); nothing to do" in result.stderr and not lock.exists()


# --- 3: a full disk, device memory ------------------------------------------------------------
@pytest.mark.slow
def test_a_failed_save_stops_the_run_at_that_save_and_keeps_every_earlier_checkpoint(
        tmp_path, repo, args):
    workdir = tmp_path / "run"
    proc = start_trainer(repo, args, workdir, "--config.train.num_steps=100000",
                         "--config.train.log_every=100")
    try:
        deadline = time.monotonic() + 300
        while 6 not in checkpoint.saved_steps(str(workdir)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # Files over 50 kB can no longer be written (EFBIG): each checkpoint's array file is
        # larger, every other file of the workdir smaller.
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (50_000, 50_000))
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == FAILED, err[-3000:]
    line = error_line(err)
    failed = int(line.split("the checkpoint of step ")[1].split()[0])
    assert "File too large" in line and failed > 6
    names = os.listdir(workdir / "checkpoints")
    assert not [n for n in names if not n.isdigit()]  # the partial folder is gone
    kept = checkpoint.saved_steps(str(workdir))
    assert kept[:2] == [3, 6] and failed not in kept
    for step in kept:  # every earlier checkpoint is complete and verified
        assert len(leaves(workdir, step)) > 10


@pytest.mark.parametrize("existing", [False, True])
def test_out_of_device_memory_is_one_line_and_leaves_no_files(tmp_path, args, run_cli,
                                                              monkeypatch, existing):
    def oom_step(self, mesh):
        def step(state, batch):
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68719476736 bytes.")
        return step

    monkeypatch.setattr(Run, "train_step", oom_step)
    workdir = tmp_path / "new"
    if existing:
        workdir.mkdir()
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=6")
    assert result.returncode == BAD_INPUT
    line = error_line(result.stderr)
    assert "out of device memory with train.batch_size=8 (8 per device on 1 device(s)" in line
    assert "--config.model.remat=True" in line and "nothing was kept" in line
    assert (os.listdir(workdir) == []) if existing else not workdir.exists()


# --- 4: damaged checkpoints -------------------------------------------------------------------
def largest_array_file(workdir, step):
    files = []
    for root, _, names in os.walk(workdir / "checkpoints" / str(step) / "state"):
        files += [os.path.join(root, n) for n in names if os.sep + "d" + os.sep in
                  os.path.join(root, n)]
    return max(files, key=os.path.getsize)


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_and_the_sampler_uses_the_previous_one(
        tmp_path, trained, run_cli):
    workdir = copy_of(trained, tmp_path)
    damaged = largest_array_file(workdir, 6)
    with open(damaged, "r+b") as f:
        f.truncate(1000)
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--num_samples=2",
                     "--steps=2", "--chunk_size=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    warning = [line for line in result.stderr.splitlines() if "unreadable" in line]
    assert len(warning) == 1 and f"checkpoint {workdir}/checkpoints/6: unreadable" in warning[0]
    assert "restoring step 3 instead" in warning[0]
    manifest = json.loads(next((workdir / "generated").glob("*/manifest.json")).read_text())
    assert manifest["checkpoint_step"] == 3
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--num_samples=2",
                     "--steps=2", "--chunk_size=2", "--checkpoint_step=6")
    assert result.returncode == BAD_INPUT  # a step asked for by name has no fallback
    assert "checkpoints/6: unreadable" in error_line(result.stderr)


@pytest.mark.slow
def test_a_flipped_bit_is_caught_set_aside_and_the_resume_redoes_the_same_steps(
        tmp_path, trained, args, run_cli, damage_an_array):
    workdir = copy_of(trained, tmp_path)
    damage_an_array(workdir / "checkpoints" / "6" / "state")  # read back without complaint
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "does not read back as it was saved; restoring step 3 instead" in result.stderr
    assert f"set aside as {workdir}/checkpoints/6.damaged" in result.stderr
    assert "starting at step 3 of 6" in result.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6", "6.damaged"]
    for a, b in zip(leaves(workdir, 6), leaves(trained, 6), strict=True):
        np.testing.assert_array_equal(a, b)  # redone bit for bit


# --- 5: config.json, the run's identity --------------------------------------------------------
@pytest.mark.slow
def test_a_lost_config_json_is_recovered_from_the_checkpoint_never_from_the_new_config(
        tmp_path, trained, args, run_cli):
    workdir = copy_of(trained, tmp_path)
    original = json.loads((workdir / "config.json").read_text())
    os.remove(workdir / "config.json")
    before = snapshot(workdir)
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}", "--config.model.ch=16",
                     "--config.train.num_steps=9")
    assert result.returncode == BAD_INPUT
    assert "holds a run with model=" in error_line(result.stderr)
    assert snapshot(workdir) == before  # no config.json written, nothing else either
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=9", "--config.train.log_every=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config.json was missing: written back from the config of checkpoint 6" in (
        result.stderr)
    assert json.loads((workdir / "config.json").read_text()) == original


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "not a config (a JSON list, not an object)"),
    ('{"seed": 0, "data": ', "not a config (Expecting value"),
])
def test_a_broken_config_json_is_one_line_naming_the_file(tmp_path, trained, args, run_cli,
                                                          content, message):
    workdir = copy_of(trained, tmp_path)
    (workdir / "config.json").write_text(content)
    before = snapshot(workdir)
    for module, flags in (("sagd_jax.main", [*args, "--config.train.num_steps=9"]),
                          ("sagd_jax.sample", ["--num_samples=2", "--steps=2"])):
        result = run_cli(module, *flags, f"--workdir={workdir}")
        assert result.returncode == BAD_INPUT
        assert f"{workdir}/config.json: {message}" in error_line(result.stderr)
    assert snapshot(workdir) == before


# --- 10: a finished run and a smaller num_steps -----------------------------------------------
def test_a_smaller_num_steps_is_refused_and_a_finished_run_says_so(tmp_path, trained, args,
                                                                   run_cli):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=4")
    assert result.returncode == BAD_INPUT
    assert ("train.num_steps=4: the run in --workdir=" in error_line(result.stderr)
            and "is already at step 6" in result.stderr)
    assert snapshot(workdir) == before
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=6")
    assert result.returncode == 0 and "is finished (step 6); nothing to do" in result.stderr
    assert not (workdir / "lock").exists()


@pytest.mark.slow
def test_a_nonfinite_step_changes_nothing_but_the_step_counter(tiny_config, params_of):
    run = Run.from_config(tiny_config())
    state = run.init_state(make_mesh())
    step = jax.jit(lambda s, b: train_step(s, b, rng.stream_key(0, rng.TRAIN), model=run.model,
                                           tx=run.tx, process=run.process, ema_decay=0.9))
    good = jnp.zeros((8, 16, 16, 1))
    bad = good.at[3, 2, 2, 0].set(jnp.nan)
    after_bad, metrics = step(state, bad)
    assert int(metrics["nonfinite"]) == 1 and int(after_bad.step) == 1
    for a, b in zip(params_of(state), params_of(after_bad), strict=True):
        np.testing.assert_array_equal(a, b)
    after_good, metrics = step(state, good)
    assert int(metrics["nonfinite"]) == 0
    assert any(not np.array_equal(a, b) for a, b in
               zip(params_of(state), params_of(after_good), strict=True))
    summary = reduce_metrics([metrics, jax.device_get(_nan_metrics(metrics))])
    assert summary["skipped_steps"] == 1 and np.isfinite(summary["loss"])
    assert summary["loss"] == pytest.approx(float(metrics["loss"]))


def _nan_metrics(metrics):
    return {k: (np.nan if k == "loss" else 1 if k == "nonfinite" else v)
            for k, v in jax.device_get(metrics).items()}


def _nan_at(monkeypatch, bad_step):
    real = Run.batch_iterator

    def batch_iterator(self, start, stop):
        for step, batch in enumerate(real(self, start, stop), start):
            if step == bad_step:
                batch = batch.copy()
                batch[0, 0, 0, 0] = np.nan
            yield batch

    monkeypatch.setattr(Run, "batch_iterator", batch_iterator)


@pytest.mark.slow
def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                          monkeypatch,
                                                                          tiny_config):
    _nan_at(monkeypatch, 4)  # the update that makes step 5
    with pytest.raises(FloatingPointError, match=r"at step 5 .*last checkpoint: step 3"):
        train_and_evaluate(tiny_config(**{"train.num_steps": 6}), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


@pytest.mark.slow
def test_nonfinite_skip_drops_the_step_and_goes_on(tmp_path, monkeypatch, tiny_config,
                                                   params_of):
    _nan_at(monkeypatch, 4)
    state = train_and_evaluate(
        tiny_config(**{"train.num_steps": 6, "train.nonfinite": "skip"}), str(tmp_path))
    assert int(state.step) == 6
    assert all(np.isfinite(leaf).all() for leaf in params_of(state))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1]
    assert all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_loses_nothing(tmp_path, repo, tiny_cli_overrides,
                                                        run_cli):
    workdir = tmp_path / "killed"
    args = ["--config=configs/quickstart.py", f"--workdir={workdir}", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.sample_every=100000",
            *tiny_cli_overrides, "--config.train.checkpoint_every=1",
            "--config.train.keep_checkpoints=100"]
    proc = subprocess.Popen([sys.executable, "-m", "sagd_jax.main", *args,
                             "--config.train.num_steps=100000"], cwd=repo,
                            stderr=subprocess.DEVNULL)
    ckpt = workdir / "checkpoints"
    caught_mid_save = False
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            names = os.listdir(ckpt) if ckpt.is_dir() else []
            complete = [n for n in names if n.isdigit()]
            if len(complete) >= 2 and any(not n.isdigit() for n in names):
                proc.send_signal(signal.SIGKILL)
                caught_mid_save = True
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    assert caught_mid_save, "no checkpoint save in progress was seen"
    names = os.listdir(ckpt)
    complete = sorted(int(n) for n in names if n.isdigit())
    assert any(not n.isdigit() for n in names)  # the interrupted save's leftovers
    last = complete[-1]
    result = run_cli("sagd_jax.main", *args, f"--config.train.num_steps={last + 2}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"starting at step {last} of {last + 2}" in result.stderr
    assert str(last + 2) in os.listdir(ckpt)


def test_unwritable_workdir_is_refused_before_anything_is_built(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="a_file exists and is not a directory"):
        Workdir(str(blocker / "run")).check_writable()
    with pytest.raises(ValueError, match=r"--workdir=/proc/sagd/run: not writable"):
        Workdir("/proc/sagd/run").check_writable()
    Workdir(str(tmp_path / "new" / "run")).check_writable()
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_batch_must_divide_over_the_devices(tiny_config):
    with pytest.raises(ValueError, match=r"train.batch_size=8: must be divisible by "
                                         r"train.grad_accum_steps x the device count \(1 x 3\)"):
        validate_config(tiny_config(), device_count=3)
    validate_config(tiny_config(), device_count=4)
    with pytest.raises(ValueError, match=r"\(4 x 4\)"):
        validate_config(tiny_config(**{"train.grad_accum_steps": 4}), device_count=4)
