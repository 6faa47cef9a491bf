"""OS, storage, memory and data errors met at the tools' top level: one line ``error: ...`` on
stderr naming the file and the cause, the documented exit status, no traceback, and nothing
left that blocks the retry (which then succeeds where that is cheap to run)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sagd_jax import files
from sagd_jax.cli import BAD_INPUT, FAILED, INTERRUPTED

ENOSPC = os.strerror(errno.ENOSPC)


def error_line(result: Any) -> str:
    """The last line of stderr (a result's, or given), checked to be its only ``error:`` line,
    with no traceback."""
    stderr = result if isinstance(result, str) else result.stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, stderr[-3000:]
    assert lines[-1].startswith("error: "), stderr[-3000:]
    return lines[-1]


@pytest.fixture
def exact_workdir(tmp_path: Any, tiny_config: Callable[..., Any]) -> str:
    """A grf workdir with only ``config.json``: ``--model=exact`` samples it, no training."""
    from sagd_jax.workdir import Workdir

    workdir = str(tmp_path / "grf")
    Workdir(workdir).prepare(tiny_config())
    return workdir


def sample_args(workdir: str, out: str, chunk_size: int = 4) -> list[str]:
    return [f"--workdir={workdir}", "--model=exact", "--num_samples=8", "--sampler=ddim",
            "--steps=2", f"--chunk_size={chunk_size}", f"--out={out}"]


def failing_sampler(exc: BaseException, after: int = 0) -> Callable[..., Any]:
    """A ``get_sampler`` whose sampler raises ``exc`` after ``after`` good chunks."""
    from sagd_jax import samplers

    real, calls = samplers.get_sampler, []

    def get_sampler(name: str) -> Callable[..., Any]:
        sampler = real(name)

        def run(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) > after:
                raise exc
            return sampler(*args, **kwargs)
        return run
    return get_sampler


def test_sampler_disk_full_at_the_lock_and_at_a_chunk_then_the_retry_succeeds(
        exact_workdir, tmp_path, run_cli, monkeypatch):
    out = str(tmp_path / "set")
    args = sample_args(exact_workdir, out)
    real_dump = json.dump

    def dump(obj: Any, f: Any, **kwargs: Any) -> None:  # the disk fills at the lock's record
        if isinstance(obj, dict) and "holder" in obj:
            f.write("{")
            raise OSError(errno.ENOSPC, ENOSPC)
        real_dump(obj, f, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(json, "dump", dump)
        result = run_cli("sagd_jax.sample", *args)
    assert result.returncode == FAILED
    lock = os.path.join(out, "lock")
    assert error_line(result) == (f"error: {lock}: {ENOSPC}; free space, then run the same "
                                  "command again")
    assert not os.path.exists(lock)  # not an empty lock that blocks
    real_write = files.write_npz

    def write_npz(p: str, **kwargs: Any) -> None:
        if "chunk_00001" in str(p):
            raise OSError(errno.ENOSPC, ENOSPC, p)
        real_write(p, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_npz", write_npz)
        result = run_cli("sagd_jax.sample", *args)
    assert result.returncode == FAILED
    chunk = os.path.join(out, "chunks", "chunk_00001.npz")
    assert error_line(result) == (f"error: {chunk}: {ENOSPC}; free space, then run the same "
                                  "command again")
    assert sorted(os.listdir(os.path.join(out, "chunks"))) == ["chunk_00000.npz"]
    result = run_cli("sagd_jax.sample", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("samples.npz")


def test_sampler_out_of_memory_then_a_smaller_chunk_size_in_the_same_out(
        exact_workdir, tmp_path, run_cli, monkeypatch):
    import jax

    out = str(tmp_path / "set")
    oom = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                     "allocate 1234567890 bytes.")
    with monkeypatch.context() as patch:
        patch.setattr("sagd_jax.samplers.get_sampler", failing_sampler(oom))
        result = run_cli("sagd_jax.sample", *sample_args(exact_workdir, out, 8))
    assert result.returncode == BAD_INPUT
    assert "out of device memory sampling --chunk_size=8 images" in error_line(result)
    assert "try a smaller --chunk_size (the same --out takes it" in error_line(result)
    result = run_cli("sagd_jax.sample", *sample_args(exact_workdir, out, 4))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "manifest.json replaced (chunk_size now as given)" in result.stderr
    assert json.load(open(os.path.join(out, "manifest.json")))["chunk_size"] == 4
    # Once the set holds samples, its chunk size stays (the refusal as before).
    result = run_cli("sagd_jax.sample", *sample_args(exact_workdir, out, 2))
    assert result.returncode == BAD_INPUT
    assert "holds samples made with other settings (chunk_size)" in error_line(result)


def test_ctrl_c_in_the_sampler_says_the_finished_chunks_are_kept(exact_workdir, tmp_path,
                                                                 run_cli, monkeypatch):
    out = str(tmp_path / "set")
    with monkeypatch.context() as patch:
        patch.setattr("sagd_jax.samplers.get_sampler", failing_sampler(KeyboardInterrupt(), 1))
        result = run_cli("sagd_jax.sample", *sample_args(exact_workdir, out))
    assert result.returncode == INTERRUPTED
    assert error_line(result) == ("error: interrupted: stopped; finished work is kept (run the "
                                  "same command to continue)")
    assert os.listdir(os.path.join(out, "chunks")) == ["chunk_00000.npz"]
    assert not os.path.exists(os.path.join(out, "lock"))


def test_an_empty_lock_file_is_stale_once_a_few_seconds_old(exact_workdir, tmp_path, run_cli):
    out = tmp_path / "set"
    out.mkdir()
    lock = out / "lock"
    lock.write_text("")  # what a full disk left with the lock of an earlier version
    young = run_cli("sagd_jax.sample", *sample_args(exact_workdir, str(out)))
    assert young.returncode == BAD_INPUT
    assert f"unreadable lock file {lock}" in error_line(young)
    assert "run again in a few seconds" in error_line(young)
    old = time.time() - 60
    os.utime(lock, (old, old))
    result = run_cli("sagd_jax.sample", *sample_args(exact_workdir, str(out)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"removed the unreadable lock file {lock}" in result.stderr
    assert not lock.exists()


def test_a_path_that_is_a_file_where_a_folder_is_needed_is_bad_input(exact_workdir, tmp_path,
                                                                     run_cli):
    out = tmp_path / "set"
    out.mkdir()
    (out / "chunks").write_text("not a folder")
    result = run_cli("sagd_jax.sample", *sample_args(exact_workdir, str(out)))
    assert result.returncode == BAD_INPUT
    assert error_line(result).startswith(f"error: {out / 'chunks'}: ")
    assert "a file where a folder is needed" in error_line(result)
    assert not (out / "lock").exists()


def test_evaluate_disk_full_at_its_output(exact_workdir, tmp_path, run_cli, monkeypatch):
    made = run_cli("sagd_jax.sample", *sample_args(exact_workdir, str(tmp_path / "set")))
    assert made.returncode == 0, made.stderr[-3000:]
    samples = made.stdout.strip().splitlines()[-1]
    out = tmp_path / "evaluation.json"
    args = [f"--samples={samples}", f"--out={out}", "--inception=off", "--classifier=off"]

    def write_json(p: str, value: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, ENOSPC, p)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_json", write_json)
        result = run_cli("sagd_jax.evaluate", *args)
    assert result.returncode == FAILED
    assert error_line(result) == (f"error: {out}: {ENOSPC}; free space, then run the same "
                                  "command again")
    assert not out.exists()
    result = run_cli("sagd_jax.evaluate", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.exists()


def test_reference_stats_of_another_feature_size_are_refused_before_any_work(
        tmp_path, run_cli, monkeypatch):
    from sagd_jax.metrics import inception

    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.zeros((8, 16, 16, 3), np.uint8))
    reference = tmp_path / "ref.npz"
    np.savez(reference, mu=np.zeros(64), sigma=np.eye(64))
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"never read")

    def no_features(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Inception network was loaded")

    monkeypatch.setattr(inception.InceptionFeatures, "from_file", no_features)
    result = run_cli("sagd_jax.evaluate", f"--samples={samples}", "--inception=on",
                     f"--reference_stats={reference}", f"--inception_weights={weights}")
    assert result.returncode == BAD_INPUT
    assert error_line(result).startswith(f"error: {reference}: statistics of 64-d features")
    assert "are 2048-d" in error_line(result)
    assert not (tmp_path / "evaluation.json").exists()


def write_idx_gz(path: Any, images: np.ndarray) -> bytes:
    """``images`` (N, H, W) uint8 as a gzipped IDX file at ``path``; returns its bytes."""
    header = bytes([0, 0, 0x08, 3]) + np.array(images.shape, ">u4").tobytes()
    data = gzip.compress(header + images.tobytes())
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("damage", ["truncated", "bit flipped"])
def test_a_damaged_fashion_mnist_file_is_one_line(tmp_path, run_cli, damage):
    root = tmp_path / "fashion"
    root.mkdir()
    path = root / "train-images-idx3-ubyte.gz"
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    data = write_idx_gz(path, images)
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    workdir = tmp_path / "run"
    result = run_cli("sagd_jax.main", "--config=configs/quickstart.py",
                     f"--config.data.root={root}", f"--workdir={workdir}",
                     "--config.train.num_steps=1")
    assert result.returncode == BAD_INPUT
    assert error_line(result).startswith(f"error: {path}: damaged gzip file (")
    assert not workdir.exists()


def test_storage_that_cannot_be_reached_is_one_line(tmp_path, run_cli, monkeypatch):
    """An object-store error (here made in-process: an ``OSError`` without a file) and a
    ``gs://`` workdir whose storage cannot be reached from this sandbox."""

    def unreachable(p: Any) -> bool:
        raise ConnectionError(errno.ECONNREFUSED, "Connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(files, "isfile", unreachable)
        result = run_cli("sagd_jax.sample", "--workdir=gs://sagd-test/run", "--num_samples=4")
    assert result.returncode == FAILED
    assert error_line(result) == "error: Connection refused"


@pytest.mark.slow
def test_trainer_disk_full_at_a_metrics_write_and_a_samples_path_that_is_a_file(
        tmp_path, run_cli, monkeypatch, tiny_cli_overrides):
    workdir = tmp_path / "run"
    args = ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", *tiny_cli_overrides, f"--workdir={workdir}",
            "--config.train.num_steps=1", "--config.train.log_every=1"]

    def append_jsonl(p: str, record: dict[str, Any]) -> None:
        raise OSError(errno.ENOSPC, ENOSPC, p)

    with monkeypatch.context() as patch:
        patch.setattr(files, "append_jsonl", append_jsonl)
        result = run_cli("sagd_jax.main", *args)
    assert result.returncode == FAILED
    assert error_line(result) == (f"error: {workdir / 'metrics.jsonl'}: {ENOSPC}; free space, "
                                  "then run the same command again")
    assert not workdir.exists()  # a first start leaves nothing, no lock among it
    workdir.mkdir()
    samples = workdir / "samples"
    samples.write_text("not a folder")
    result = run_cli("sagd_jax.main", *args, "--config.train.sample_every=1")
    assert result.returncode == BAD_INPUT
    assert error_line(result).startswith(f"error: {samples}: ")
    assert "a file where a folder is needed" in error_line(result)
    assert not (workdir / "lock").exists()



def test_only_the_trainers_second_ctrl_c_says_it_stopped_without_saving(capfd):
    import signal

    from sagd_jax import cli
    from sagd_jax.train.preemption import PreemptionFlag

    def body(fv: Any) -> None:
        with PreemptionFlag():
            os.kill(os.getpid(), signal.SIGINT)  # the first: a checkpoint is asked for
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
            time.sleep(5)

    assert cli.run(None, lambda fv: None, body, ["tool"]) == INTERRUPTED
    assert error_line(capfd.readouterr().err).startswith(
        "error: interrupted (a second Ctrl-C): stopped without saving the current step")

    def startup(fv: Any) -> None:
        raise KeyboardInterrupt  # before any handler: a plain Ctrl-C

    assert cli.run(None, lambda fv: None, startup, ["tool"]) == INTERRUPTED
    assert error_line(capfd.readouterr().err) == ("error: interrupted: stopped; finished work is "
                                              "kept (run the same command to continue)")

