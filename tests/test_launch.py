"""The sweep launcher and config-override parsing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from launch.sweep import make_points, run_name, split_values
from sagd_jax import cli
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


@pytest.mark.heavy
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
    assert '--index="$SLURM_ARRAY_TASK_ID"' in emitted.stdout
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
        f"error: {name}=train.nosuchkey: no such config key; closest: train.guidance, "
        "train.num_steps, train.nonfinite"]
    assert os.listdir(tmp_path) == []


# --- stopped runs: exit status 75, signals passed on, SLURM requeues ------------------------
# A stand-in trainer (``python -c``), by its workdir's name: ``failing`` exits 3, ``stopping``
# exits 75 at once, ``finishing`` exits 0, ``waiting`` writes ``started`` (and whether it runs in
# its own session) and runs until SIGTERM or SIGINT, then records it and exits 75.
FAKE_TRAINER = """
import os, signal, sys, time
workdir = sys.argv[1]
os.makedirs(workdir)
def stop(signum, frame):
    with open(os.path.join(workdir, "signals"), "a") as f:
        f.write(f"{signum}\\n")
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
mode = os.environ["FAKE_TRAINER_" + os.path.basename(workdir).replace("-", "_").upper()]
if mode == "waiting":
    with open(os.path.join(workdir, "starting"), "w") as f:
        f.write("own session" if os.getsid(0) == os.getpid() else "sweep's session")
    os.rename(os.path.join(workdir, "starting"), os.path.join(workdir, "started"))
    time.sleep(20)
sys.exit({"failing": 3, "stopping": 75, "finishing": 0}.get(mode, 99))
"""


def test_sweep_records_a_stopped_point_and_starts_no_further_one(tmp_path, sweep, monkeypatch):
    import launch.sweep

    monkeypatch.setattr(launch.sweep.Point, "trainer_command",
                        lambda self, spec: [sys.executable, "-c", FAKE_TRAINER, self.workdir])
    for seed, mode in enumerate(["failing", "stopping", "finishing"]):
        monkeypatch.setenv(f"FAKE_TRAINER_SEED_{seed}", mode)
    root = tmp_path / "sweep"
    result = sweep(f"--root={root}", "--sweep=seed=0,1,2", f"--json={tmp_path}/s.json")
    assert result.returncode == 75, result.stderr
    rows = json.load(open(tmp_path / "s.json"))
    assert [(r["seed"], r["status"]) for r in rows] == [
        ("0", "failed (3: non-finite loss)"), ("1", "stopped (resumable)"), ("2", "todo")]
    assert sorted(os.listdir(root)) == ["logs", "seed-0", "seed-1"]  # seed 2 never started
    assert result.stderr.count("training (log ") == 2
    assert ("warning: sweep: a run was stopped by a signal; 1 point(s) not started; run the "
            "same command again to resume") in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig, group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_sweep_passes_a_stop_signal_on_to_its_trainer(tmp_path, repo, sig, group):
    """The sweep gets the signal while point 0 trains (``group``: its whole process group, as a
    terminal's Ctrl-C): the trainer gets it once, stops (75); point 1 never starts; the table is
    printed; the sweep exits 75."""
    root = tmp_path / "sweep"
    driver = ("import sys, launch.sweep as s\n"
              "s.Point.trainer_command = lambda self, spec: [sys.executable, '-c', "
              f"{FAKE_TRAINER!r}, self.workdir]\n"
              "sys.exit(s.main(sys.argv))\n")
    env = {**os.environ, "FAKE_TRAINER_SEED_0": "waiting", "FAKE_TRAINER_SEED_1": "finishing"}
    process = subprocess.Popen(
        [sys.executable, "-c", driver, "--config=configs/quickstart.py",
         *(f"--set={s}" for s in TINY_DATA), f"--root={root}", "--sweep=seed=0,1"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (root / "seed-0" / "started").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        out, err = process.communicate(timeout=40)
    finally:
        process.kill()
    assert process.returncode == 75, err
    assert (root / "seed-0" / "signals").read_text().split() == [str(int(sig))]
    # Its own session: a terminal's Ctrl-C reaches it once, through the sweep, not twice.
    assert (root / "seed-0" / "started").read_text() == "own session"
    assert not (root / "seed-1").exists()
    table = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert table == {"0": ["stopped", "(resumable)"], "1": ["todo", "-"]}
    assert f"warning: sweep: stopped by {sig.name}; 1 point(s) not started" in err



def test_train_subprocess_logs_times_and_stops_its_trainer(tmp_path, monkeypatch):
    """The one trainer runner of the sweep and the experiment driver: its output appended to the
    log, in ``cwd`` and its own session, its exit status returned and its wall time recorded;
    should the caller's wait be interrupted, the trainer gets SIGTERM, saves (75) and is waited
    for, and that call's time is recorded before the exception goes on."""
    from sagd_jax.train_subprocess import StopSignals, train, trainer_command

    assert trainer_command("c.py:v", "w", [("seed", "1")])[1:] == [
        "-m", "sagd_jax.main", "--config=c.py:v", "--workdir=w", "--config.seed=1"]
    log, times = tmp_path / "logs" / "train.log", tmp_path / "wall_time.jsonl"
    report = ("import os, sys; print(os.getcwd(), os.getsid(0) == os.getpid()); "
              "sys.exit(int(sys.argv[1]))")
    with StopSignals().installed() as stops:
        for code in (0, 3):
            assert train([sys.executable, "-c", report, str(code)], str(log), stops,
                         cwd=str(tmp_path), wall_time_path=str(times)) == code
    assert log.read_text().splitlines() == [f"{tmp_path} True"] * 2  # appended, not replaced
    records = [json.loads(line) for line in times.read_text().splitlines()]
    assert [r["exit"] for r in records] == [0, 3] and all(r["seconds"] > 0 for r in records)

    class Interrupted(StopSignals):
        def wait(self, child):  # the caller's wait ends in an exception once the trainer runs
            deadline = time.monotonic() + 60
            while not (tmp_path / "stopped" / "started").exists():
                assert child.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            raise KeyboardInterrupt

    monkeypatch.setenv("FAKE_TRAINER_STOPPED", "waiting")
    with pytest.raises(KeyboardInterrupt):
        train([sys.executable, "-c", FAKE_TRAINER, str(tmp_path / "stopped")], str(log),
              Interrupted(), wall_time_path=str(times))
    assert (tmp_path / "stopped" / "signals").read_text().split() == [str(int(signal.SIGTERM))]
    assert json.loads(times.read_text().splitlines()[-1])["exit"] == cli.STOPPED

def _fake_commands(tmp_path, **scripts: str) -> dict[str, str]:
    """Executables ``NAME`` (bash ``scripts``) in ``tmp_path/bin`` that log each call
    (``NAME ARGS...``) to ``tmp_path/calls``; the environment that puts them first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "$CALLS"\n{body}\n')
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "CALLS": str(tmp_path / "calls")}


# The stand-in for the trainer (srun) or the sweep (python): exits $STATUS, or with $WAIT set
# runs until SIGTERM and then exits 75 (having saved).
FAKE_RUN = ('trap \'echo "got TERM" >> "$CALLS"; kill $! 2>/dev/null; exit 75\' TERM\n'
            'if [[ -n ${WAIT:-} ]]; then touch "$WAIT.$$"; sleep 60 & wait $!; fi\n'
            'exit "$STATUS"')


def _run_script(script, env, tmp_path, signal_group=False, args=(), running=1):
    """Run ``bash script [args] --config=c.py '--workdir=w d'`` in ``tmp_path``;
    ``signal_group``: once ``running`` stand-ins run, SIGTERM to the script's whole process
    group (as SLURM's preemption signals every process), or to the script alone (``"shell"``).
    Returns (exit status, the logged calls)."""
    if signal_group:
        env = {**env, "WAIT": str(tmp_path / "running")}
    process = subprocess.Popen(["bash", str(script), *args, "--config=c.py", "--workdir=w d"],
                               env=env, cwd=tmp_path, start_new_session=True)
    try:
        if signal_group:
            deadline = time.monotonic() + 30
            while len(list(tmp_path.glob("running.*"))) < running:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            if signal_group == "shell":
                process.send_signal(signal.SIGTERM)
            else:
                os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        process.kill()
    return code, (tmp_path / "calls").read_text().splitlines()


@pytest.mark.parametrize("status", [0, 3, 75])
def test_slurm_script_requeues_a_stopped_trainer_only(tmp_path, repo, status):
    env = _fake_commands(tmp_path, srun=FAKE_RUN, scontrol="exit 0")
    env.update(STATUS=str(status), SLURM_JOB_ID="1234")
    script = os.path.join(repo, "launch", "slurm_gpu.sbatch")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert "#SBATCH --requeue" in open(script).read().splitlines()
    code, calls = _run_script(script, env, tmp_path)
    assert code == status
    srun = "srun --kill-on-bad-exit=0 --wait=300 python -m sagd_jax.main --config=c.py"
    assert calls == [f"{srun} --workdir=w d"] + (["scontrol requeue 1234"] if status == 75 else [])


def test_slurm_script_survives_preemption_and_requeues(tmp_path, repo):
    """SIGTERM to every process of the job: the trainer saves and exits 75, the script (not
    ended by the signal) requeues the job."""
    env = _fake_commands(tmp_path, srun=FAKE_RUN, scontrol="exit 0")
    env.update(STATUS="0", SLURM_JOB_ID="1234")
    code, calls = _run_script(os.path.join(repo, "launch", "slurm_gpu.sbatch"), env, tmp_path,
                              signal_group=True)
    assert code == 75
    assert calls[1:] == ["got TERM", "scontrol requeue 1234"]


@pytest.mark.parametrize("status, stop", [(0, False), (2, False), (75, False), (0, True)])
def test_sweep_array_task_requeues_when_its_point_stopped(tmp_path, sweep, status, stop):
    """The emitted job-array script: SIGTERM to the task's shell (``--signal=B:TERM``) goes on
    to the sweep; a stopped point (75) requeues this task only; other statuses are the task's."""
    emitted = sweep(f"--root={tmp_path / 'sweep'}", "--sweep=seed=0,1", "--emit=slurm")
    assert emitted.returncode == 0, emitted.stderr
    script = tmp_path / "array.sh"
    script.write_text(emitted.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "#SBATCH --requeue" in emitted.stdout and "#SBATCH --signal=B:TERM@120" in emitted.stdout
    env = _fake_commands(tmp_path, python=FAKE_RUN, scontrol="exit 0")
    env.update(STATUS=str(status), SLURM_ARRAY_JOB_ID="88", SLURM_ARRAY_TASK_ID="1")
    code, calls = _run_script(script, env, tmp_path, signal_group="shell" if stop else False)
    assert calls[0].startswith("python -m launch.sweep --config=configs/quickstart.py")
    assert calls[0].endswith(f"--root={tmp_path / 'sweep'} --index=1")
    stopped = stop or status == 75
    assert code == (75 if stopped else status)
    assert calls[1:] == (["got TERM"] if stop else []) + (
        ["scontrol requeue 88_1"] if stopped else [])


@pytest.mark.parametrize("num", [1, 2])
def test_local_launcher_waits_for_every_process_and_reports_the_stop(tmp_path, repo, num):
    """SIGTERM to ``launch/local.sh``: passed on to each process, which saves and exits 75; the
    script waits for all of them and exits 75 (not the 143 of its interrupted ``wait``)."""
    env = _fake_commands(tmp_path, python=FAKE_RUN)
    env.update(STATUS="0", PYTHON="python", SAGD_PORT="1")
    code, calls = _run_script(os.path.join(repo, "launch", "local.sh"), env, tmp_path,
                              signal_group="shell", args=[str(num)], running=num)
    assert code == 75
    assert calls.count("got TERM") == num, calls
    started = [c for c in calls if c.startswith("python -m sagd_jax.main --config=c.py ")]
    assert len(started) == num, calls


# --- a point's progress on the sweep's console while it trains -------------------------------
# A stand-in trainer that prints a progress line, then waits (up to 20 s) for the file ``go``
# beside its workdir, written once the line reached the caller; exits 0 if it came, else 99.
TALKING_TRAINER = """
import os, sys, time
workdir = sys.argv[1]
os.makedirs(workdir)
print("step 1/2  loss 1.0000", flush=True)
go = workdir + ".go"
deadline = time.monotonic() + 20
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
print("finished step 2/2", flush=True)
sys.stdout.write("a last line without its newline")
sys.exit(0 if os.path.exists(go) else 99)
"""


def test_follow_log_relays_the_trainers_lines_while_it_runs(tmp_path):
    """Lines appended to the log reach the caller while the trainer runs (it waits for the
    first one to arrive); what the log held before is not relayed; the last line, without its
    newline, is relayed when the block ends."""
    from sagd_jax.train_subprocess import StopSignals, follow_log, train

    log, workdir = tmp_path / "logs" / "run.log", tmp_path / "run"
    log.parent.mkdir()
    log.write_text("an earlier run's line\n")
    relayed = []

    def emit(line):
        relayed.append(line)
        if line.startswith("step 1/2"):
            (tmp_path / "run.go").touch()

    with StopSignals().installed() as stops, follow_log(str(log), emit, poll=0.05):
        code = train([sys.executable, "-c", TALKING_TRAINER, str(workdir)], str(log), stops)
    assert code == 0, log.read_text()
    assert relayed == ["step 1/2  loss 1.0000", "finished step 2/2",
                       "a last line without its newline"]


def test_sweep_shows_each_points_progress_while_it_trains(tmp_path, sweep, monkeypatch):
    """Each point's trainer lines appear on the sweep's console, prefixed with the point, while
    it runs (the stand-in waits for its first line to be relayed) and before its end line."""
    import launch.sweep

    monkeypatch.setattr(launch.sweep.Point, "trainer_command",
                        lambda self, spec: [sys.executable, "-c", TALKING_TRAINER, self.workdir])
    relay_line = launch.sweep.relay_line

    def relay_and_answer(tag, line):
        relay_line(tag, line)
        if line.startswith("step 1/2"):
            name = tag.split()[1]
            open(os.path.join(root, name + ".go"), "w").close()

    monkeypatch.setattr(launch.sweep, "relay_line", relay_and_answer)
    root = str(tmp_path / "sweep")
    result = sweep(f"--root={root}", "--sweep=seed=0,1")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for i, name in enumerate(["seed-0", "seed-1"]):
        start = lines.index(f"[{i + 1}/2] {root}/{name}: training (log {root}/logs/{name}.log)")
        assert lines[start + 1:start + 4] == [f"[{i + 1}/2] {name} | step 1/2  loss 1.0000",
                                              f"[{i + 1}/2] {name} | finished step 2/2",
                                              f"[{i + 1}/2] {name} | a last line without its "
                                              "newline"], lines
        assert lines[start + 4].startswith(f"[{i + 1}/2] {root}/{name}: "), lines


def test_a_trainer_stops_when_the_sweep_that_started_it_is_killed(tmp_path):
    """SIGKILL to the caller of ``train_subprocess.train``: its child gets SIGTERM (it saves
    and stops), no orphan is left."""
    child_code = ("import os, signal, sys, time\n"
                  "from sagd_jax.train_subprocess import die_with_parent\n"
                  "def stop(signum, frame):\n"  # written whole, then renamed: never read empty
                  "    open(sys.argv[1] + '.tmp', 'w').write(str(signum))\n"
                  "    os.replace(sys.argv[1] + '.tmp', sys.argv[1]); sys.exit(75)\n"
                  "signal.signal(signal.SIGTERM, stop)\n"
                  "die_with_parent()\n"
                  "open(sys.argv[1] + '.started', 'w').close()\n"
                  "time.sleep(30)\n")
    got = tmp_path / "got"
    caller = ("import sys\n"
              "from sagd_jax.train_subprocess import StopSignals, train\n"
              "train([sys.executable, '-c', sys.argv[1], sys.argv[2]], sys.argv[3], "
              "StopSignals())\n")
    proc = subprocess.Popen([sys.executable, "-c", caller, child_code, str(got),
                             str(tmp_path / "log")])
    deadline = time.time() + 60
    while not (tmp_path / "got.started").exists():
        assert time.time() < deadline and proc.poll() is None, "the child did not start"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    while not got.exists():
        assert time.time() < deadline, "the child outlived its caller without a SIGTERM"
        time.sleep(0.05)
    assert got.read_text() == str(int(signal.SIGTERM))


def test_a_point_whose_trainer_still_runs_is_reported_running_not_started(
        tmp_path, sweep, monkeypatch):
    import socket

    import launch.sweep

    monkeypatch.setattr(launch.sweep.Point, "trainer_command",
                        lambda self, spec: [sys.executable, "-c", FAKE_TRAINER, self.workdir])
    monkeypatch.setenv("FAKE_TRAINER_SEED_1", "finishing")
    root = tmp_path / "sweep"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (root / "seed-0").mkdir(parents=True)
        (root / "seed-0" / "lock").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": holder.pid, "holder": "trainer",
             "started": "2026-12-07T08:00:00"}))
        result = sweep(f"--root={root}", "--sweep=seed=0,1", f"--json={tmp_path}/s.json")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr
    rows = json.load(open(tmp_path / "s.json"))
    assert [(r["seed"], r["status"]) for r in rows] == [
        ("0", f"running (pid {holder.pid})"), ("1", "finished")]
    assert (f"its trainer pid {holder.pid} (started 2026-12-07T08:00:00) is still running; "
            "not started again") in result.stderr
