"""The trainer end to end on tiny settings: CLI, exact resume, 1 vs 4 devices, bad input, the
console, TensorBoard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sagd_jax.train.loop import train_and_evaluate
from sagd_jax.workdir import Workdir


@pytest.mark.slow
def test_exact_resume_is_bitwise(tmp_path, tiny_config, params_of):
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
    # Samples, their spectrum and TensorBoard scalars and images were written.
    files = os.listdir(tmp_path / "a" / "samples")
    assert "step_0000006.png" in files and "spectrum_0000006.json" in files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a"), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    assert {"loss", "img_per_sec", "sample_spectrum_log_error"} <= set(tags)
    for tag in ("samples", "sample_spectrum"):  # images: [width, height, PNG bytes...]
        (record,) = events.Tensors(tag)
        assert record.step == 6
        png = record.tensor_proto.string_val[2]
        assert png.startswith(b"\x89PNG")


@pytest.mark.slow
def test_workdir_of_another_run_is_refused(tmp_path, tiny_config):
    train_and_evaluate(tiny_config(**{"train.num_steps": 1}), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(ValueError, match=r"holds a run with noise=.*use a new workdir"):
        train_and_evaluate(tiny_config(**{"train.num_steps": 2, "noise.gamma": 2.0}),
                           str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_a_workdir_written_before_a_new_option_resumes_with_its_default(tmp_path,
                                                                        tiny_config):
    saved = json.loads(tiny_config().to_json_best_effort())
    del saved["noise"]["project_data"]  # a config.json from before the option existed
    workdir = Workdir(str(tmp_path))
    workdir.check_compatible(tiny_config(), saved)
    with pytest.raises(ValueError, match=r"holds a run with noise=.*use a new workdir"):
        workdir.check_compatible(tiny_config(**{"noise.project_data": True}), saved)


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_quickstart_cli_end_to_end_with_a_quiet_console(tmp_path, run_subprocess,
                                                        tiny_cli_overrides):
    """As a user runs it (a new process, so every library's start-up output shows): the
    console has the run's progress lines, every ``log_every`` = 25 steps, and little else."""
    workdir = tmp_path / "quick"
    tiny = [flag for flag in tiny_cli_overrides if "log_every" not in flag]
    result = run_subprocess("sagd_jax.main", "--config=configs/quickstart.py",
                            f"--workdir={workdir}", *tiny, "--config.train.num_steps=50",
                            "--config.train.checkpoint_every=25",
                            "--config.train.sample_every=50",
                            "--config.noise.bands=bandstop:0.4:0.6",
                            "--config.model.attn_resolutions=(28,)")  # a level here
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.load(open(workdir / "config.json"))
    assert saved["noise"]["bands"] == "bandstop:0.4:0.6" and saved["model"]["ch"] == 8
    assert saved["data"]["name"] == "fashion_mnist"
    assert sorted(os.listdir(workdir / "checkpoints")) == ["25", "50"]
    assert (workdir / "samples" / "step_0000050.png").exists()
    lines = (result.stdout + result.stderr).strip().splitlines()
    steps = [line for line in lines if line.startswith("step ") and "loss" in line]
    assert [line.split()[1] for line in steps] == ["25/50", "50/50"], lines
    assert all("img/s" in line and "ETA" in line for line in steps)
    # model, first step (compilation), two step lines, the samples line, the closing two
    assert len(lines) <= 7, lines
    assert lines[-2].startswith("finished step 50/50: 50 steps in "), lines
    assert lines[-1].startswith(f"workdir {workdir}: checkpoints/ (step 50), samples/"), lines


@pytest.mark.parametrize("override, message", [
    ("--config.train.batch_size=0", "train.batch_size=0: must be an integer >= 1"),
    ("--config.noise.gamma=nan", "noise.gamma=nan: must be a finite number"),
    ("--config.data.name=no_such_dataset", "data.name='no_such_dataset': unknown source"),
    ("--config.optim.learning_rate=-1", "optim.learning_rate=-1"),
    ("--config.noise.rho0=-1", "noise.rho0=-1.0: must be > 0"),
    ("--config.data.resize=False --config.data.image_size=32",
     "data.image_size=32: larger than the 28x28 images of fashion_mnist/train; "
     "data.crop=center, data.resize=False"),
    ("--config.data.crop=middle", "data.crop='middle': must be one of center, random"),
    ("--config.data.center_crop_fraction=0", "data.center_crop_fraction=0.0: must be"),
    ("--config.data.num_workers=-1", "data.num_workers=-1: must be an integer >= 0"),
    ("--config.mesh.fsdp=2", "mesh.fsdp=2: does not divide the device count (1)"),
    ("--config.train.num_steps=-5", "train.num_steps=-5: must be an integer >= 1"),
    ("--config.train.nonfinite=maybe", "train.nonfinite='maybe': must be one of stop, skip"),
    ("--config.model.ch_mult=(1,2,2,2)", "model.ch_mult=(1, 2, 2, 2)"),
    ("--config.train.sample_steps=5000", "train.sample_steps=5000:"),
    ("--config.train.nosuchkey=3",
     "--config.train.nosuchkey: no such config key; closest: train.guidance, "
     "train.num_steps"),
    ("--config.nosection.x=1", "--config.nosection.x: no such config key; closest: "),
    ("--config.trian.batch_size=1", "--config.trian.batch_size: no such config key; closest: "
                                    "train.batch_size"),
    ("--config.train.batch_size=many", "--config.train.batch_size=many"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, run_cli, override, message):
    workdir = tmp_path / "never"
    extra = ["--config.diffusion.schedule=ddpm_linear"] if "sample_steps" in override else []
    result = run_cli("sagd_jax.main", "--config=configs/quickstart.py", f"--workdir={workdir}",
                     *override.split(), *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not workdir.exists()


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_restart_resumes(tmp_path, repo,
                                                                      tiny_cli_overrides,
                                                                      run_cli):
    workdir = tmp_path / "preempted"
    args = ["--config=configs/quickstart.py", f"--workdir={workdir}", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.num_steps=100000",
            "--config.train.checkpoint_every=100000", "--config.train.sample_every=100000",
            *tiny_cli_overrides, "--config.train.log_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "sagd_jax.main", *args], cwd=repo,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until training runs
        if "step 2/100000" in line:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert time.monotonic() - sent < 60 and proc.returncode == 75, rest[-2000:]
    assert "stopped at step " in rest and "/100000: " in rest, rest[-2000:]  # closing line
    steps = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
    assert len(steps) == 1 and steps[0] >= 2
    result = run_cli("sagd_jax.main", *args[:-1], f"--config.train.num_steps={steps[0] + 1}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"starting at step {steps[0]} of {steps[0] + 1}" in result.stderr
    assert str(steps[0] + 1) in os.listdir(workdir / "checkpoints")


# --- progress lines: the first step (compilation) is not training speed ---------------------
class _Clock:
    """A fake ``time.perf_counter``: ``advance(seconds)``."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_step_speed_leaves_out_the_first_step_and_the_pauses():
    """First step 10 s (compilation), the others 1 s (a quarter of it waiting for data): 1
    step/s and the ETA at that pace, from the steps after the first; a lap of the first step
    alone has neither (``?``); sampling is left out of the speed, not of the ETA's pace."""
    from sagd_jax.train.loop import StepSpeed, speed_text

    clock = _Clock()
    speed = StepSpeed(clock)
    clock.advance(10)
    speed.step(first=True)
    rate, _ = speed.lap()
    assert rate is None and speed.eta(99) is None
    assert speed_text(rate, 8, speed.eta(99)) == "? steps/s  ? img/s  ETA ?"
    # A lap over the first step and three more (each waits 0.25 s for its batch).
    speed = StepSpeed(clock)
    for i in range(4):
        with speed.waiting():
            clock.advance(0.25)
        clock.advance(9.75 if i == 0 else 0.75)
        speed.step(first=i == 0)
    rate, wait = speed.lap()
    assert rate == pytest.approx(1.0) and wait == pytest.approx(1 / 13)
    assert speed.eta(90) == pytest.approx(90)
    assert speed_text(rate, 8, speed.eta(90)) == "1.00 steps/s  8.0 img/s  ETA 1m30s"
    # The next lap: two steps, 30 s of sampling between them.
    clock.advance(1)
    speed.step()
    with speed.paused():
        clock.advance(30)
    clock.advance(1)
    speed.step()
    rate, wait = speed.lap()
    assert rate == pytest.approx(1.0) and wait == 0.0
    assert speed.eta(10) == pytest.approx(10 * (3 + 32) / 5)  # 7 s a step since the first


@pytest.mark.slow
def test_progress_lines_leave_out_compilation_and_the_run_ends_with_where_things_are(
        tmp_path, run_cli, tiny_cli_overrides, monkeypatch):
    """A first step made 4 s slower (as a compilation): the first progress line's speed (steps
    1-2) comes from step 2 alone, so it is above the 0.5 steps/s that counting step 1 would give
    at most; the closing lines give the steps, the last logged loss and the workdir's files."""
    from sagd_jax.run import Run

    train_step = Run.train_step

    def slow_first_step(self, mesh):
        step_fn, calls = train_step(self, mesh), []

        def step(state, batch):
            if not calls:
                calls.append(1)
                time.sleep(4)
            return step_fn(state, batch)

        return step

    monkeypatch.setattr(Run, "train_step", slow_first_step)
    workdir = tmp_path / "run"
    result = run_cli("sagd_jax.main", "--config=configs/quickstart.py", f"--workdir={workdir}",
                     "--config.data.name=grf", "--config.data.image_size=16",
                     *tiny_cli_overrides, "--config.train.num_steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    steps = [line.split() for line in lines if line.startswith("step ") and "loss" in line]
    assert [words[1] for words in steps] == ["2/4", "4/4"], lines
    assert steps[0][5] == "steps/s" and float(steps[0][4]) > 0.5, lines
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[0]["steps_per_sec"] == pytest.approx(float(steps[0][4]), rel=0.01)
    assert lines[-2].startswith("finished step 4/4: 4 steps in "), lines
    assert lines[-2].endswith(f"(wall time), loss {records[-1]['loss']:.4f}"), lines
    assert lines[-1] == (f"workdir {workdir}: checkpoints/ (step 4), samples/, metrics.jsonl, "
                         "TensorBoard events"), lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_sighup_and_a_first_ctrl_c_ask_the_loop_to_save_and_stop(sig, repo):
    """SIGHUP (a closed terminal, a dropped ssh session) is a stop request like SIGTERM: the
    loop checkpoints and exits 75, where the default would kill it with nothing saved."""
    code = ("import os, sys\n"
            "from sagd_jax.train.preemption import PreemptionFlag\n"
            "with PreemptionFlag() as flag:\n"
            f"    os.kill(os.getpid(), {int(sig)})\n"
            "print(flag.requested, flag.signal_name)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["True", sig.name], out


def test_diverged_samples_write_no_grid_and_no_numpy_warnings(tmp_path, monkeypatch):
    """``train.nonfinite=skip`` can go on with diverged EMA weights: their NaN samples give one
    warning line, no PNG of NaN images, no spectrum file, no numpy RuntimeWarnings."""
    import types
    import warnings

    from sagd_jax import console
    from sagd_jax.train.loop import write_samples

    said, scalars = [], {}
    monkeypatch.setattr(console, "warning", lambda msg, *a: said.append(msg % a))
    images = np.full((4, 8, 8, 1), np.nan, np.float32)
    run = types.SimpleNamespace(
        periodic_samples=lambda params, step: images,
        workdir=types.SimpleNamespace(sample_grid_path=lambda s: str(tmp_path / f"{s}.png"),
                                      spectrum_path=lambda s: str(tmp_path / f"{s}.json"),
                                      samples_dir=str(tmp_path)))
    writer = types.SimpleNamespace(write_scalars=lambda step, d: scalars.update(d),
                                   write_images=lambda step, d: None)
    state = types.SimpleNamespace(step=np.int32(4), ema_params=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_samples(run, state, np.ones(5), writer, is_writer=True)
    assert said == ["step 4: the samples hold 256 non-finite values (the EMA weights have "
                    "diverged?); no grid or spectrum written"]
    assert os.listdir(tmp_path) == [] and np.isnan(scalars["sample_spectrum_log_error"])
