"""Workdirs on any path: a ``file://`` URL trains, resumes, samples and evaluates exactly like a
plain path, and ``sagd_jax.files`` (the one path abstraction every file of a run goes through)
and the workdir's checks work on an object store.

The object store is ``gs://bucket`` mapped onto a temporary folder by
``etils.epath.testing.mock_epath`` (with epath's TensorFlow backend switched off, which would
otherwise take ``gs://`` paths before the mock): no bucket is reached. Its ``open`` refuses
appends, as an object store does. A full training run on ``gs://`` cannot run here: Orbax
writes the arrays through TensorStore's own ``gcs`` driver and TensorBoard through TensorFlow's
``gfile``, neither of which sees the mock, and no bucket is reachable from the test machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time

import jax
import numpy as np
import pytest

from sagd_jax import checkpoint, files
from sagd_jax.images import save_grid, to_uint8
from sagd_jax.lock import Lock
from sagd_jax.metrics.spectra import plot_radial
from sagd_jax.run import Run
from sagd_jax.sample_files import load as load_samples
from sagd_jax.sampling import read_verified
from sagd_jax.sharding import make_mesh
from sagd_jax.workdir import Workdir

BUCKET = "gs://bucket"


# --- a file:// workdir: the whole life of a run ------------------------------------------------
@pytest.fixture(scope="module")
def train_args(tiny_cli_overrides):
    """Trainer flags of a tiny grf run that writes sample grids too (a workdir is added)."""
    return ["--config=configs/quickstart.py", "--config.data.name=grf",
            "--config.data.image_size=16", *tiny_cli_overrides,
            "--config.train.sample_every=3", "--config.train.keep_checkpoints=100"]


def tree(folder):
    """The relative paths of the files under ``folder``; names that hold a time, a host or a
    random id (TensorBoard's event files, Orbax's data files in ``.../d/``) as ``*``."""
    out = set()
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if name.startswith("events.out.tfevents.") or os.path.basename(root) == "d":
                rel = os.path.join(os.path.dirname(rel), "*")
            out.add(rel)
    return out


def run_everything(run_cli, args, workdir):
    """Train 3 steps, resume to 6, sample, evaluate; returns the samples' path."""
    for steps in (3, 6):
        result = run_cli("sagd_jax.main", *args, f"--workdir={workdir}",
                         f"--config.train.num_steps={steps}")
        assert result.returncode == 0, result.stderr[-3000:]
    assert "starting at step 3 of 6" in result.stderr
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--num_samples=6",
                     "--sampler=ddim", "--steps=3", "--chunk_size=4", "--float32")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = result.stdout.strip().splitlines()[-1]
    url = "file://" + samples if workdir.startswith("file://") else samples
    result = run_cli("sagd_jax.evaluate", f"--samples={url}", "--max_reference=64")
    assert result.returncode == 0, result.stderr[-3000:]
    return samples


@pytest.mark.slow
def test_a_file_url_workdir_trains_resumes_samples_and_evaluates_like_a_plain_path(
        tmp_path, train_args, run_cli, repo):
    plain, local = str(tmp_path / "plain"), str(tmp_path / "url")
    url = "file://" + local
    plain_samples = run_everything(run_cli, train_args, plain)
    url_samples = run_everything(run_cli, train_args, url)
    # Everything landed in the URL's folder, under the same names; nothing in a mangled
    # "file:/..." folder beside the repository (the cwd of the runs).
    assert url_samples == plain_samples.replace(plain, local)
    assert tree(local) == tree(plain)
    assert {"config.json", "metrics.jsonl", "*", "samples/step_0000003.png",
            "samples/spectrum_0000006.json", "checkpoints/3/fingerprint/metadata"} <= tree(local)
    assert not os.path.exists(os.path.join(repo, "file:"))
    assert files.read_json(os.path.join(local, "config.json")) == files.read_json(
        os.path.join(plain, "config.json"))
    # The same run: parameters of both checkpoints bit for bit, the same logged losses.
    assert checkpoint.saved_steps(url) == checkpoint.saved_steps(plain) == [3, 6]
    for step in (3, 6):
        a = jax.tree.leaves(jax.device_get(Run.from_workdir(plain).restore(make_mesh(), step)))
        b = jax.tree.leaves(jax.device_get(Run.from_workdir(url).restore(make_mesh(), step)))
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    losses = [[(r["step"], r["loss"]) for r in Workdir(w).metrics() if "loss" in r]
              for w in (plain, url)]
    assert losses[0] == losses[1] and [s for s, _ in losses[0]] == [2, 3, 4, 6]
    for name in ("spectrum_0000003.json", "spectrum_0000006.json"):
        assert (files.read_json(os.path.join(local, "samples", name))
                == files.read_json(os.path.join(plain, "samples", name)))
    # The same samples, bit for bit; the manifest names the workdir by its local path.
    with np.load(plain_samples) as a, np.load(url_samples) as b:
        for key in ("arr_0", "float32"):
            np.testing.assert_array_equal(a[key], b[key])
    manifest = files.read_json(os.path.join(os.path.dirname(url_samples), "manifest.json"))
    assert manifest["workdir"] == local
    # The same evaluation, with its plots beside it.
    results = [files.read_json(os.path.join(os.path.dirname(s), "evaluation.json"))
               for s in (plain_samples, url_samples)]
    assert results[1]["samples"] == url_samples
    for r in results:
        del r["samples"], r["sampling"]["workdir"]
    assert results[0] == results[1] and "grf_variance" in results[1]
    for plot in ("evaluation_spectrum.png", "evaluation_grf_variance.png"):
        assert os.path.getsize(os.path.join(os.path.dirname(url_samples), plot)) > 0


def test_file_urls_become_local_paths():
    assert files.normalize("file:///tmp/a%20b/run") == "/tmp/a b/run"
    assert files.normalize("file://localhost/tmp/run") == "/tmp/run"
    assert files.normalize("relative/run") == "relative/run"  # as given (messages name it)
    assert files.is_local("file:///tmp/run") and files.is_local("run")
    assert not files.is_local("gs://bucket/run")
    assert str(files.path("file:///tmp/run")) == "/tmp/run"
    assert str(files.path("run")) == os.path.abspath("run")
    assert str(files.path("gs://bucket/run")) == "gs://bucket/run"
    assert files.join("file:///tmp/run", "config.json") == "/tmp/run/config.json"
    assert files.join("gs://bucket/run", "a", "b") == "gs://bucket/run/a/b"
    assert Workdir("file:///tmp/run").config_path == "/tmp/run/config.json"
    with pytest.raises(ValueError, match="file://elsewhere/run: a file:// URL of host"):
        files.normalize("file://elsewhere/run")
    with pytest.raises(ValueError, match=r"ftp://host/run: unsupported scheme ftp://"):
        files.path("ftp://host/run")


# --- the abstraction on an object store ---------------------------------------------------------
@contextlib.contextmanager
def fake_bucket(root, read_only=()):
    """``gs://bucket/...`` served from the folder ``root`` through epath's backend; writes
    under the ``read_only`` prefixes are refused, appends always (object stores have none)."""
    from etils.epath import gpath, testing

    def local(p):
        p = os.fspath(p)
        return root + p[len(BUCKET):] if p.startswith(BUCKET) else p

    def remote(p):
        return BUCKET + p[len(root):] if p.startswith(root) else p

    def one(original, p, *args, **kwargs):
        return original(local(p), *args, **kwargs)

    def two(original, p, dst, *args, **kwargs):
        for target in (p, dst):
            if os.fspath(target).startswith(read_only):
                raise PermissionError(13, "Permission denied")
        return original(local(p), local(dst), *args, **kwargs)

    def open_(original, p, mode):
        if "a" in mode:
            raise OSError(95, "an object store cannot append")
        if "w" in mode and os.fspath(p).startswith(read_only):
            raise PermissionError(13, "Permission denied")
        return original(local(p), mode)

    def glob(original, pattern):
        return [remote(p) for p in original(local(pattern))]

    tf_installed = gpath._is_tf_installed
    gpath._is_tf_installed = lambda: False  # else gs:// goes to TensorFlow's gfile, unmocked
    try:
        with testing.mock_epath(open=open_, exists=one, isdir=one, listdir=one, makedirs=one,
                                mkdir=one, remove=one, rmtree=one, stat=one, rename=two,
                                replace=two, copy=two, glob=glob):
            yield
    finally:
        gpath._is_tf_installed = tf_installed


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The folder behind ``gs://bucket``; the cwd is ``tmp_path``, where a URL mistaken for a
    local path would land (``gs:/bucket/...``), which is checked at the end."""
    root = tmp_path / "bucket"
    root.mkdir()
    (root / "read-only").mkdir()
    monkeypatch.chdir(tmp_path)
    with fake_bucket(str(root), read_only=(f"{BUCKET}/read-only",)):
        yield root
    assert not (tmp_path / "gs:").exists()


@pytest.fixture(params=["local", "gs"])
def base(request, tmp_path, monkeypatch):
    """``(base, folder)``: a path prefix and the local folder behind it, for the same
    operations on a local path and on the object store."""
    if request.param == "local":
        folder = tmp_path / "local"
        folder.mkdir()
        yield str(folder), folder
    else:
        root = tmp_path / "bucket"
        root.mkdir()
        monkeypatch.chdir(tmp_path)
        with fake_bucket(str(root)):
            yield BUCKET, root
        assert not (tmp_path / "gs:").exists()


def listing(folder):
    return sorted(os.listdir(folder))


def test_exclusive_and_atomic_writes(base):
    prefix, folder = base
    path = files.join(prefix, "run", "config.json")
    files.write_json(path, {"a": 1}, exclusive=True)
    with pytest.raises(FileExistsError):
        files.write_json(path, {"a": 2}, exclusive=True)
    assert json.loads((folder / "run" / "config.json").read_text()) == {"a": 1}
    with pytest.raises(RuntimeError, match="killed"), files.atomic_open(path) as f:
        f.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert files.read_json(path) == {"a": 1} and listing(folder / "run") == ["config.json"]
    # Another writer that gets there while this one writes wins; nothing of this one stays.
    other = files.join(prefix, "run", "other.json")
    with pytest.raises(FileExistsError), files.atomic_open(other, exclusive=True) as f:
        f.write("mine")
        (folder / "run" / "other.json").write_text("theirs")
    assert files.read_text(other) == "theirs"
    assert listing(folder / "run") == ["config.json", "other.json"]
    files.write_json(path, {"a": 3})  # not exclusive: replaced
    assert files.read_json(path) == {"a": 3}
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    files.write_npz(files.join(prefix, "run", "x.npz"), **arrays)
    got = read_verified(files.join(prefix, "run", "x.npz"), {"x": ((2, 3), np.float32)})
    np.testing.assert_array_equal(got["x"], arrays["x"])
    assert files.read_bytes(files.join(prefix, "run", "x.npz")) == (
        folder / "run" / "x.npz").read_bytes()


def test_logs_append_and_a_torn_last_line_is_skipped(base):
    prefix, folder = base
    log = files.join(prefix, "run", "metrics.jsonl")
    assert files.read_jsonl(log) == []
    files.makedirs(files.join(prefix, "run"))
    records = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    for record in records:
        files.append_jsonl(log, record)
    assert files.read_jsonl(log) == records
    assert (folder / "run" / "metrics.jsonl").read_text() == "".join(
        json.dumps(r) + "\n" for r in records)
    with open(folder / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a process killed mid-append
    assert files.read_jsonl(log) == records
    (folder / "run" / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"^{re.escape(log)}: line 2 is not JSON$"):
        files.read_jsonl(log)


def test_listing_moving_and_removing(base):
    prefix, folder = base
    run = files.join(prefix, "run")
    assert not files.exists(run) and not files.isdir(run)
    files.makedirs(files.join(run, "samples"))
    for name in ("spectrum_0000002.json", "spectrum_0000010.json", "step_0000002.png"):
        files.write_bytes(files.join(run, "samples", name), b"{}")
    assert files.isdir(run) and files.isfile(files.join(run, "samples", "step_0000002.png"))
    assert sorted(files.listdir(files.join(run, "samples"))) == listing(folder / "run" / "samples")
    assert sorted(files.glob(files.join(run, "samples", "spectrum_*.json"))) == [
        files.join(run, "samples", "spectrum_0000002.json"),
        files.join(run, "samples", "spectrum_0000010.json")]
    assert abs(files.mtime(files.join(run, "samples", "step_0000002.png")) - time.time()) < 60
    chunk = files.join(run, "chunk.npz")
    files.write_bytes(chunk, b"1")
    assert files.set_aside(chunk) == chunk + ".damaged"
    files.write_bytes(chunk, b"2")
    assert files.set_aside(chunk) == chunk + ".damaged.1"
    assert files.set_aside(files.join(run, "samples"), ".old") == files.join(run, "samples.old")
    assert listing(folder / "run") == ["chunk.npz.damaged", "chunk.npz.damaged.1", "samples.old"]
    assert (folder / "run" / "chunk.npz.damaged.1").read_bytes() == b"2"
    files.remove(chunk + ".damaged")
    files.rmtree(files.join(run, "samples.old"))
    assert listing(folder / "run") == ["chunk.npz.damaged.1"]
    with pytest.raises(FileNotFoundError):
        files.remove(chunk)
    files.rmtree(files.join(run, "absent"), ignore_errors=True)


def test_a_folder_is_probed_for_writing(bucket):
    assert files.unwritable(f"{BUCKET}/new/run") is None
    assert sorted(os.listdir(bucket)) == ["read-only"]  # the probe is gone, nothing created
    (bucket / "afile").write_text("x")
    assert files.unwritable(f"{BUCKET}/afile/run") == (f"{BUCKET}/afile exists and is not a "
                                                       "directory")
    assert files.unwritable(f"{BUCKET}/read-only/run") == (f"not writable ({BUCKET}/read-only: "
                                                           "Permission denied)")
    with pytest.raises(ValueError, match=f"^--workdir={BUCKET}/read-only/run: not writable"):
        Workdir(f"{BUCKET}/read-only/run").check_writable()


def test_workdir_checks_on_an_object_store(bucket, tiny_config):
    workdir = Workdir(f"{BUCKET}/run")
    workdir.check_writable()
    assert workdir.is_empty()
    config = tiny_config()
    workdir.prepare(config)
    assert not workdir.is_empty() and sorted(os.listdir(bucket / "run")) == ["config.json"]
    assert json.loads((bucket / "run" / "config.json").read_text())["data"]["image_size"] == 16
    workdir.prepare(config)  # the same run: fine, config.json untouched
    with pytest.raises(ValueError) as err:
        workdir.prepare(tiny_config(**{"data.image_size": 32}))
    assert str(err.value) == (f"--workdir={BUCKET}/run: holds a run with data.image_size=16, "
                              "this config has 32; use a new workdir")
    assert workdir.saved_config().data.image_size == 16
    for step in range(1, 7):
        workdir.append_metrics({"step": step, "loss": 1.0 / step})
    assert workdir.truncate_metrics(4) == 2
    assert [r["step"] for r in workdir.metrics()] == [1, 2, 3, 4]
    assert [json.loads(line)["step"] for line in
            (bucket / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert workdir.last_metrics() == {"step": 4, "loss": 0.25}
    for step, error in ((2, 0.5), (4, 0.25)):
        files.write_json(workdir.spectrum_path(step), {"mean_abs_log_ratio": error})
    assert workdir.last_spectrum_error() == 0.25
    assert workdir.checkpoint_steps() == [] and workdir.latest_step() is None
    workdir.remove_new_run(created=False)
    assert os.listdir(bucket / "run") == [] and workdir.is_empty()


def test_checkpoint_folders_on_an_object_store(bucket):
    """What the workdir reads of its checkpoints itself (Orbax writes them): the steps, the
    config beside one, a damaged one set aside, an unfinished save removed."""
    folder = bucket / "run" / "checkpoints"
    for name in ("3", "6", "9.orbax-checkpoint-tmp-1"):
        (folder / name / "config").mkdir(parents=True)
    for name in ("3", "6"):  # complete saves: Orbax's markers (an empty 12 is no checkpoint)
        (folder / name / "commit_success.txt").write_text("")
        (folder / name / "_CHECKPOINT_METADATA").write_text('{"commit_timestamp_nsecs": 1}')
    (folder / "12").mkdir()
    (folder / "6" / "config" / "metadata").write_text(json.dumps({"seed": 1}))
    (folder / "3" / "config" / "metadata").write_text('{"seed": ')
    run = f"{BUCKET}/run"
    assert checkpoint.checkpoint_dir(run) == f"{BUCKET}/run/checkpoints"
    assert checkpoint.saved_steps(run) == [3, 6]
    assert checkpoint.saved_config(run, 6) == {"seed": 1}
    with pytest.raises(ValueError, match=f"^{BUCKET}/run/checkpoints/3/config/metadata: "
                                         "unreadable"):
        checkpoint.saved_config(run, 3)
    assert checkpoint.set_aside(run, 3) == f"{BUCKET}/run/checkpoints/3.damaged"
    assert checkpoint.remove_partial(run) == [f"{BUCKET}/run/checkpoints/9.orbax-checkpoint-tmp-1"]
    assert sorted(os.listdir(folder)) == ["12", "3.damaged", "6"]
    assert Workdir(run).checkpoint_steps() == [6]


def test_locks_on_an_object_store(bucket):
    path = f"{BUCKET}/run/lock"
    first = Lock(path, f"--workdir={BUCKET}/run", "trainer")
    first.acquire()
    held = json.loads((bucket / "run" / "lock").read_text())
    assert held["pid"] == os.getpid() and held["holder"] == "trainer"
    with pytest.raises(ValueError, match=f"--workdir={BUCKET}/run: in use by trainer pid "
                                         f"{os.getpid()} on {socket.gethostname()}"):
        Lock(path, f"--workdir={BUCKET}/run", "trainer").acquire()
    first.release()
    assert not (bucket / "run" / "lock").exists()
    # A lock of another host whose heartbeat stopped an hour ago is taken over.
    (bucket / "run" / "lock").write_text(json.dumps({"host": "elsewhere", "pid": 1,
                                                     "holder": "trainer", "started": "x"}))
    with pytest.raises(ValueError, match="in use by trainer pid 1 on elsewhere"):
        Lock(path, f"--workdir={BUCKET}/run", "trainer").acquire()
    old = time.time() - 3600
    os.utime(bucket / "run" / "lock", (old, old))
    with Lock(path, f"--workdir={BUCKET}/run", "trainer"):
        assert json.loads((bucket / "run" / "lock").read_text())["pid"] == os.getpid()
    assert not (bucket / "run" / "lock").exists()


def test_samples_grids_and_plots_on_an_object_store(bucket):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
    files.write_npz(f"{BUCKET}/gen/samples.npz", arr_0=to_uint8(images),
                    float32=images)
    files.write_json(f"{BUCKET}/gen/manifest.json", {"workdir": f"{BUCKET}/run"})
    loaded = load_samples(f"{BUCKET}/gen/samples.npz")
    loaded, manifest = loaded.images, loaded.manifest
    np.testing.assert_array_equal(loaded, images)
    assert manifest == {"workdir": f"{BUCKET}/run"}
    (bucket / "gen" / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"^--samples={BUCKET}/gen/bad.npz: not an .npz"):
        load_samples(f"{BUCKET}/gen/bad.npz")
    assert save_grid(images, f"{BUCKET}/gen/grid.png")
    assert not save_grid(images, f"{BUCKET}/gen/grid.png")  # never overwritten
    plot_radial(f"{BUCKET}/gen/plot.png", np.arange(4.0), {"a": np.arange(1.0, 5.0)},
                ylabel="y")
    for name in ("grid.png", "plot.png"):
        assert (bucket / "gen" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(bucket / "gen")) == ["bad.npz", "grid.png", "manifest.json",
                                                  "plot.png", "samples.npz"]
