"""``metrics.jsonl`` under faults: a torn line (a writer killed mid-append, a full disk), a
record appended onto one, garbage in the middle, a folder in its place. A resume sets bad
lines aside in ``metrics.jsonl.torn`` (one warning) and goes on; readers (the sweep's table)
skip them with one warning; a folder is one line, exit 2 (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from launch.sweep import Point, summary_rows
from sagd_jax import console, files
from sagd_jax.workdir import Workdir

BAD_INPUT = 2
TORN = b'{"step": 4, "loss": 0.1'  # a record cut short


def log_of(records):
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def snapshot(folder):
    """Every file and folder under ``folder``, a file with its size and modification time."""
    out = {}
    for root, dirs, names in os.walk(folder):
        out |= {os.path.join(root, d): None for d in dirs}
        out |= {os.path.join(root, n): (os.stat(os.path.join(root, n)).st_size,
                                        os.stat(os.path.join(root, n)).st_mtime_ns)
                for n in names}
    return out


def warnings(stderr):
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def args(tiny_cli_overrides):
    """Trainer flags of a tiny grf run (a workdir is added per test)."""
    return ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.sample_every=100000",
            *tiny_cli_overrides]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, args, repo):
    """A finished 3-step workdir: checkpoint 3, records of steps 2 and 3 (copy it first)."""
    from sagd_jax.main import main

    workdir = tmp_path_factory.mktemp("metrics-log") / "run"
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        assert main(["sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=3"]) == 0
    finally:
        os.chdir(cwd)
    return workdir


def test_a_record_never_lands_on_a_torn_line_and_a_scan_reads_past_bad_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(log_of([{"step": 2}]) + TORN)
    files.append_jsonl(str(log), {"step": 4, "loss": 0.2})
    assert log.read_bytes() == log_of([{"step": 2}]) + TORN + b"\n" + log_of(
        [{"step": 4, "loss": 0.2}])
    # What today's code wrote: a record glued onto a torn one, then garbage, then a torn end.
    log.write_bytes(log_of([{"step": 2}]) + TORN + log_of([{"step": 4, "loss": 0.2}])
                    + b"\x00\x00\xff\n[1]\n\n" + TORN)
    content = files.scan_jsonl(str(log))
    assert content.records == [{"step": 2}, {"step": 4, "loss": 0.2}]
    assert content.bad == [(2, TORN), (3, b"\x00\x00\xff"), (4, b"[1]"), (6, TORN)]
    assert content.unterminated and content.lines == 6
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON$"):
        files.read_jsonl(str(log))  # strict: only a torn last line is passed over


def test_a_resume_moves_bad_lines_aside_once_and_keeps_their_bytes(tmp_path, capsys):
    console.setup()
    workdir = Workdir(str(tmp_path))
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(log_of([{"step": 2}, {"step": 4}]) + b"garbage\n"
                    + log_of([{"step": 6}, {"step": 8}]) + TORN)
    capsys.readouterr()
    assert workdir.truncate_metrics(6) == 1  # step 8 is redone
    (line,) = warnings(capsys.readouterr().err)
    assert line == (f"warning: {log}: lines 3, 6 are not JSON records (a write cut short): "
                    f"moved to {log}.torn")
    assert (tmp_path / "metrics.jsonl.torn").read_bytes() == b"garbage\n" + TORN + b"\n"
    assert log.read_bytes() == log_of([{"step": 2}, {"step": 4}, {"step": 6}])
    assert workdir.truncate_metrics(6) == 0 and capsys.readouterr().err == ""
    log.write_bytes(log.read_bytes() + TORN)  # torn again: kept in a new file
    assert workdir.truncate_metrics(6) == 0
    assert (tmp_path / "metrics.jsonl.torn.1").read_bytes() == TORN + b"\n"
    workdir.append_metrics({"step": 8})
    assert [r["step"] for r in map(json.loads, log.read_text().splitlines())] == [2, 4, 6, 8]


def test_the_sweep_table_shows_every_run_whatever_its_log(tmp_path, capsys):
    console.setup()
    logs = {"good": log_of([{"step": 2, "loss": 0.5}, {"step": 4, "loss": 0.25}]),
            "glued": log_of([{"step": 2, "loss": 0.5}]) + TORN
            + log_of([{"step": 4, "loss": 0.3}]),
            "garbage": log_of([{"step": 2, "loss": 0.5}]) + b"{oops\n"
            + log_of([{"step": 4, "loss": 0.2}]),
            "torn": log_of([{"step": 2, "loss": 0.5}]) + TORN,
            "folder": None, "new": b""}
    points = []
    for index, (name, content) in enumerate(logs.items()):
        os.makedirs(tmp_path / name)
        if content is None:
            os.makedirs(tmp_path / name / "metrics.jsonl")
        elif content:
            (tmp_path / name / "metrics.jsonl").write_bytes(content)
        points.append(Point(index, (("seed", name),), (("seed", name),), str(tmp_path / name)))
    capsys.readouterr()
    rows = summary_rows(points, {})
    assert [(r["seed"], r["step"], r["loss"]) for r in rows] == [
        ("good", 4, 0.25), ("glued", 4, 0.3), ("garbage", 4, 0.2), ("torn", 2, 0.5),
        ("folder", None, None), ("new", None, None)]
    lines = warnings(capsys.readouterr().err)
    assert lines == [f"warning: {tmp_path}/{name}/metrics.jsonl: {what}" for name, what in (
        ("glued", "line 2 is not a JSON record; skipped"),
        ("garbage", "line 2 is not a JSON record; skipped"),
        ("torn", "line 2 is not a JSON record; skipped"),
        ("folder", "cannot be read (a folder); no metrics from it"))]


@pytest.mark.slow
def test_a_resume_after_a_torn_line_logs_each_step_once(tmp_path, trained, args, run_cli):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    with open(workdir / "metrics.jsonl", "ab") as f:
        f.write(TORN)  # killed writing step 4's record, after checkpoint 3
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished step 5/5" in result.stderr
    log = workdir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line
    assert [r["step"] for r in records] == [2, 3, 4, 5]
    assert warnings(result.stderr) == [f"warning: {log}: line 3 is not a JSON record (a write "
                                       f"cut short): moved to {log}.torn"]
    assert (workdir / "metrics.jsonl.torn").read_bytes() == TORN + b"\n"
    assert "5" in os.listdir(workdir / "checkpoints")


@pytest.mark.slow
def test_a_folder_in_place_of_the_log_is_one_line_before_training(tmp_path, trained, args,
                                                                  run_cli):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    os.remove(workdir / "metrics.jsonl")
    os.makedirs(workdir / "metrics.jsonl" / "inside")
    before = snapshot(workdir)
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=5")
    assert result.returncode == BAD_INPUT
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.stderr and lines == [
        f"error: {workdir}/metrics.jsonl: a folder, not the run's log file; move it away to "
        "go on"]
    assert snapshot(workdir) == before  # nothing written: no checkpoint, no events
