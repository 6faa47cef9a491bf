"""``train.compilation_cache_dir`` (JAX's persistent compilation cache: which folder, a bad one
refused, the second start of a run loads its train step from it) and ``train.profile_steps``
(a profiler trace of those steps in WORKDIR/profile)."""

from __future__ import annotations

import gzip
import json
import os

import jax
import pytest

from sagd_jax.compile_cache import CompileCache, default_dir
from sagd_jax.train.profiling import StepProfiler

KEY = "train.compilation_cache_dir"


@pytest.fixture(scope="module")
def args(tiny_cli_overrides):
    """Trainer flags of a tiny grf run (a workdir is added per test)."""
    return ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", "--config.train.sample_every=100000",
            *tiny_cli_overrides]


@pytest.mark.slow
def test_profile_steps_write_a_trace_of_those_steps(run_cli, args, tmp_path):
    workdir = tmp_path / "run"
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     "--config.train.num_steps=3", "--config.train.profile_steps=(1,2)")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((workdir / "profile" / "plugins" / "profile").iterdir())
    assert len(runs) == 1
    xplane = list(runs[0].glob("*.xplane.pb"))
    assert len(xplane) == 1 and xplane[0].stat().st_size > 0
    perfetto = list(runs[0].glob("*.trace.json.gz"))
    assert perfetto
    with gzip.open(perfetto[0]) as f:
        names = {event.get("name", "") for event in json.load(f)["traceEvents"]}
    assert any(name.startswith("PjitFunction(") for name in names)  # jitted calls traced
    assert f"profile of steps 1-2 in {runs[0]} (TensorBoard: tensorboard --logdir " \
           f"{workdir / 'profile'}" in result.stderr
    # The first step's line: the session's own cache (JAX_COMPILATION_CACHE_DIR) was used.
    assert f"compilation cache {jax.config.jax_compilation_cache_dir};" in result.stderr
    assert "first step" in result.stderr


def test_steps_outside_the_run_trace_nothing(tmp_path):
    assert (StepProfiler((1, 5), str(tmp_path), start=3, stop=10).first,
            StepProfiler((1, 5), str(tmp_path), start=3, stop=10).last) == (3, 5)
    assert StepProfiler((1, 5), str(tmp_path), start=0, stop=3).last == 2
    for profiler in (StepProfiler((1, 5), str(tmp_path), start=6, stop=10),
                     StepProfiler((), str(tmp_path), start=0, stop=10),
                     StepProfiler((1, 5), str(tmp_path), start=0, stop=10, enabled=False)):
        with profiler:
            for step in range(10):
                profiler.before(step)
                profiler.after(step, None)
    assert os.listdir(tmp_path) == []


def test_which_folder_and_jax_settings_put_back(monkeypatch, tmp_path):
    session = jax.config.jax_compilation_cache_dir
    assert session  # tests/conftest.py sets JAX_COMPILATION_CACHE_DIR
    assert CompileCache("auto").path == session  # JAX's own setting wins over "auto" ...
    assert CompileCache(str(tmp_path / "c")).path == str(tmp_path / "c")  # ... not over a folder
    assert CompileCache("").path is None
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "user"))
    assert default_dir() == str(tmp_path / "user" / "xla")
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert CompileCache("auto").path == str(tmp_path / "user" / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", session)
    summaries = {}
    for spec, inside in (("", None), (str(tmp_path / "c"), str(tmp_path / "c"))):
        with CompileCache(spec) as cache:
            assert jax.config.jax_compilation_cache_dir == inside
            jax.jit(lambda x: x * 3.25 + len(spec))(1.0).block_until_ready()  # noqa: B023
        assert jax.config.jax_compilation_cache_dir == session
        assert cache.counts() == (0, 1)  # compiled, not loaded
        summaries[spec] = cache.summary()
    assert summaries[""].startswith("compilation cache off; programs: 1 compiled in ")
    assert summaries[str(tmp_path / "c")].startswith(
        f"compilation cache {tmp_path / 'c'}; programs: 0 loaded in 0.0 s, 1 compiled in ")

def test_a_folder_that_cannot_be_written_is_refused_before_anything(run_cli, args, tmp_path):
    (tmp_path / "file").write_text("")
    workdir = tmp_path / "run"
    result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                     f"--config.{KEY}={tmp_path / 'file' / 'xla'}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {KEY}=") and "is not a directory" in lines[0]
    assert not workdir.exists() and sorted(os.listdir(tmp_path)) == ["file"]
