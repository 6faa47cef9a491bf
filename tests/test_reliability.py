"""Faults and bad input: non-finite steps, SIGKILL during a checkpoint save, config checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax import rng
from sagd_jax.config import validate_config
from sagd_jax.run import Run
from sagd_jax.sharding import make_mesh
from sagd_jax.train.loop import train_and_evaluate
from sagd_jax.train.step import reduce_metrics, train_step
from sagd_jax.workdir import Workdir


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


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                          monkeypatch,
                                                                          tiny_config):
    _nan_at(monkeypatch, 4)  # the update that makes step 5
    with pytest.raises(FloatingPointError, match=r"at step 5 .*last checkpoint: step 3"):
        train_and_evaluate(tiny_config(**{"train.num_steps": 6}), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


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
