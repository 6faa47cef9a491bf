"""The sampling CLI: chunked, resumable, sharded; the exact Gaussian model through it."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import socket
import subprocess
import textwrap

import numpy as np
import pytest
from PIL import Image

from sagd_jax.data import grf_model
from sagd_jax.data.grf import grf_spectrum
from sagd_jax.gaussian import sampler_output_spectrum
from sagd_jax.images import to_uint8
from sagd_jax.process import DiffusionProcess
from sagd_jax.sampling import SampleRequest, generate
from sagd_jax.spectral import half_plane_multiplicity
from sagd_jax.train.loop import train_and_evaluate
from sagd_jax.workdir import Workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    workdir = str(tmp_path_factory.mktemp("trained"))
    train_and_evaluate(tiny_config(**{"train.num_steps": 2, "train.checkpoint_every": 1}),
                       workdir)
    return workdir


@pytest.mark.slow
def test_resumed_sampling_equals_uninterrupted_bit_for_bit(trained, tmp_path):
    request = SampleRequest(num_samples=10, sampler="ddim", steps=3, eta=0.5, chunk_size=4,
                            float32=True)
    straight = generate(trained, request, str(tmp_path / "a"))
    assert generate(trained, request, str(tmp_path / "b"), max_chunks=1) is None
    assert sorted(os.listdir(tmp_path / "b" / "chunks")) == ["chunk_00000.npz"]
    assert generate(trained, request, str(tmp_path / "b"), max_chunks=1) is None
    resumed = generate(trained, request, str(tmp_path / "b"))
    with np.load(straight) as a, np.load(resumed) as b:
        assert a["arr_0"].shape == (10, 16, 16, 1) and a["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["float32"], b["float32"])
        np.testing.assert_array_equal(a["arr_0"], to_uint8(a["float32"]))
        assert len(np.unique(a["float32"][:, 0, 0, 0])) == 10  # chunks differ
    assert os.path.exists(tmp_path / "a" / "grid.png")
    manifest = json.load(open(tmp_path / "a" / "manifest.json"))
    assert manifest["checkpoint_step"] == 2 and manifest["eta"] == 0.5
    # Another checkpoint (by --checkpoint_step) gives other images; other settings in the same
    # output folder are refused.
    older = generate(trained, SampleRequest(**{**request.__dict__, "checkpoint_step": 1}),
                     str(tmp_path / "c"))
    with np.load(straight) as a, np.load(older) as c:
        assert not np.array_equal(a["float32"], c["float32"])
    with pytest.raises(ValueError, match=r"holds samples made with other settings \(seed\)"):
        generate(trained, SampleRequest(**{**request.__dict__, "seed": 1}), str(tmp_path / "a"))


@pytest.mark.slow
def test_clipped_sampling_has_its_own_folder_and_stays_in_range(trained):
    request = SampleRequest(num_samples=4, sampler="ddpm", steps=3, chunk_size=4, clip_x0=0.5,
                            float32=True)
    path = generate(trained, request)
    assert os.path.basename(os.path.dirname(path)) == "ddpm-clip0.5-3steps-seed0-step2"
    manifest = json.load(open(os.path.join(os.path.dirname(path), "manifest.json")))
    assert manifest["clip_x0"] == 0.5
    with np.load(path) as f:  # no bands in the tiny run: the projection is the identity
        assert np.abs(f["float32"]).max() <= 0.5 + 1e-6
    plain = generate(trained, SampleRequest(num_samples=4, sampler="ddpm", steps=3, chunk_size=4))
    assert "clip_x0" not in json.load(open(os.path.join(os.path.dirname(plain), "manifest.json")))


@pytest.mark.slow
def test_a_set_grows_keeping_its_samples_bit_for_bit_and_equals_a_fresh_one(trained, tmp_path):
    """48 samples in chunks of 20 (the last chunk partly used), grown to 64: the 48 stay, the
    rest are those of a fresh 64-sample set; uint8 only, chunks removed, PNGs exported."""
    small = SampleRequest(num_samples=48, sampler="ddpm", steps=2, chunk_size=20)
    out = tmp_path / "grown"
    path = generate(trained, small, str(out))
    with np.load(path) as f:
        assert f.files == ["arr_0"]
        first = f["arr_0"]
    assert first.shape == (48, 16, 16, 1) and first.dtype == np.uint8
    assert not (out / "chunks").exists()
    assert "num_samples" not in json.load(open(out / "manifest.json"))
    big = dataclasses.replace(small, num_samples=64)
    assert generate(trained, big, str(out), png_dir=str(tmp_path / "png")) == path
    with np.load(path) as f:
        grown = f["arr_0"]
    np.testing.assert_array_equal(grown[:48], first)
    fresh = generate(trained, big, str(tmp_path / "fresh"), keep_chunks=True)
    with np.load(fresh) as f:
        np.testing.assert_array_equal(f["arr_0"], grown)
    assert sorted(os.listdir(tmp_path / "fresh" / "chunks")) == [f"chunk_{i:05d}.npz"
                                                                 for i in range(4)]
    with np.load(tmp_path / "fresh" / "chunks" / "chunk_00003.npz") as f:
        assert f["images"].shape == (20, 16, 16, 1) and f["images"].dtype == np.uint8
    pngs = sorted(os.listdir(tmp_path / "png"))
    assert pngs == [f"{i:06d}.png" for i in range(64)]
    for i in (0, 47, 63):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / pngs[i])),
                                      grown[i, ..., 0])
    # Fewer than it holds: complete as it is; other settings (float32) refused.
    before = (out / "samples.npz").read_bytes()
    assert generate(trained, small, str(out)) == path
    assert (out / "samples.npz").read_bytes() == before
    with pytest.raises(ValueError, match=r"other settings \(float32\)"):
        generate(trained, dataclasses.replace(big, float32=True), str(out))
    # Rewritten since (another arr_0, sound as an npz): not the file the sampler recorded, so
    # set aside and made again, not taken as complete.
    np.savez(out / "samples.npz", arr_0=255 - grown)
    assert generate(trained, big, str(out)) == path
    with np.load(path) as f:
        np.testing.assert_array_equal(f["arr_0"], grown)
    assert (out / "samples.npz.damaged").exists()


@pytest.mark.parametrize("change, message", [
    (dict(sampler="euler"), "--sampler='euler': must be one of ddpm, "),
    (dict(steps=0), "--steps=0: must be an integer >= 1"),
    (dict(num_samples=0), "--num_samples=0: must be an integer >= 1"),
    (dict(checkpoint_step=7), "no checkpoint of step 7"),
    (dict(eta=0.5), "--eta=0.5: only the ddim sampler takes eta"),
    (dict(sampler="ode_heun", clip_x0=1.0), "--clip_x0=1.0: only the ddpm and ddim samplers"),
    (dict(clip_x0=0.0), "--clip_x0=0.0: must be a finite number in (0, inf)"),
])
def test_bad_sampling_input_is_refused_before_anything_runs(trained, tmp_path, change, message):
    request = SampleRequest(**{**dict(num_samples=4, sampler="ddpm", steps=2), **change})
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(trained, request, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_sample_cli_refuses_another_config_and_a_workdir_without_checkpoints(trained, tmp_path,
                                                                             tiny_config,
                                                                             run_cli):
    def cli(*args):
        return run_cli("sagd_jax.sample", *args)

    other = cli(f"--workdir={trained}", "--num_samples=4", "--config=configs/quickstart.py")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds a run with data.name='grf'" in other.stderr.strip().splitlines()[-1]
    typo = cli(f"--workdir={trained}", "--num_samples=4", "--config=configs/quickstart.py",
               "--config.noise.gama=2")
    assert typo.returncode == 2
    lines = typo.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --config.noise.gama: no such config key; closest: noise.gamma"), lines
    empty = tmp_path / "empty"
    Workdir(str(empty)).prepare(tiny_config())
    result = cli(f"--workdir={empty}", "--num_samples=4")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --workdir={empty}: no "
                                                             "checkpoint")
    assert sorted(os.listdir(empty)) == ["config.json"]


def test_exact_model_through_the_sample_and_evaluate_clis_hits_the_grf_spectrum(tmp_path,
                                                                                tiny_config,
                                                                                run_cli):
    """No training: the exact Gaussian model of grf data, sampled by the CLI, has the known
    per-frequency variance within Monte-Carlo error of the sampler's exact prediction."""
    config = tiny_config(**{"data.grf.gamma": 2.0})
    workdir = tmp_path / "grf"
    Workdir(str(workdir)).prepare(config)
    n, steps = 4096, 50
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--model=exact",
                     f"--num_samples={n}", "--sampler=ode_heun", f"--steps={steps}",
                     "--chunk_size=1024", "--float32")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = result.stdout.strip().splitlines()[-1]
    assert samples.endswith("ode_heun-50steps-seed0-exact/samples.npz")
    evaluation = run_cli("sagd_jax.evaluate", f"--samples={samples}")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    report = json.load(open(os.path.join(os.path.dirname(samples), "evaluation.json")))
    grf = report["grf_variance"]
    # The exact prediction of this sampler's output variance (its discretisation bias).
    process = DiffusionProcess.from_config(config, 16, 16)
    predicted = sampler_output_spectrum(process, grf_model(config.data), "ode_heun", steps)
    c = grf_spectrum(config.data)
    var = np.load(samples)["float32"].astype(np.float64)
    power = np.mean(np.abs(np.fft.rfft2(var, axes=(1, 2), norm="ortho")) ** 2, axis=(0, 3))
    stderr = np.where(half_plane_multiplicity(16, 16) == 1, np.sqrt(2 / n), np.sqrt(1 / n))
    z = (power / predicted - 1) / stderr
    assert np.all(np.abs(z) < 5) and np.mean(z**2) < 2
    bias = np.mean(np.abs(np.log(predicted / c)))
    assert grf["mean_abs_log_ratio"] < 1.3 * grf["monte_carlo_floor"] + bias
    assert os.path.exists(os.path.join(os.path.dirname(samples), "evaluation_grf_variance.png"))


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from sagd_jax.gaussian import GaussianData
    from sagd_jax.process import DiffusionProcess
    from sagd_jax.samplers import get_sampler
    from sagd_jax.sharding import batch_sharding, make_mesh
    from sagd_jax.spectral import SpectralCovariance
    from sagd_jax.schedules import get_schedule
    process = DiffusionProcess(SpectralCovariance.create(8, 8, gamma=1.0),
                               get_schedule("vp_sde"))
    eps_fn = GaussianData.power_law(8, 8, gamma=2.0).eps_fn(process)
    for name in ("ddpm", "ode_heun"):
        sampler = get_sampler(name)
        key = jax.random.key(3)
        plain = sampler(process, eps_fn, key, (16, 8, 8, 1), 5)
        sharded = sampler(process, eps_fn, key, (16, 8, 8, 1), 5,
                          sharding=batch_sharding(make_mesh()))
        assert len(sharded.sharding.device_set) == 4, sharded.sharding
        assert not sharded.sharding.is_fully_replicated
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), rtol=1e-5,
                                   atol=1e-5)
    print("ok")
""")


@pytest.mark.slow
def test_sharded_sampling_splits_the_batch_and_matches_one_device(on_four_devices):
    result = on_four_devices(SHARDED_SCRIPT, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# --- damaged files, a second sampler, bad input to evaluate (issue 19, findings 2, 6, 7) ------
def _arrays(path):
    with np.load(path) as f:
        return {name: f[name] for name in f.files}


def _assert_same_bits(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert a[name].tobytes() == b[name].tobytes(), name


def _flip_inside(path, array):
    """Flip one byte in the middle of ``array``'s data inside the uncompressed npz ``path``."""
    raw = bytearray(path.read_bytes())
    start = raw.find(array.tobytes())
    assert start > 0
    raw[start + array.nbytes // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    return bytes(raw)


def _warnings(stderr):
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


@pytest.mark.slow
def test_damaged_chunks_and_samples_npz_are_set_aside_and_redone_bit_for_bit(trained, tmp_path,
                                                                             run_cli):
    out = tmp_path / "out"
    chunks, final = out / "chunks", out / "samples.npz"

    def sample():
        result = run_cli("sagd_jax.sample", f"--workdir={trained}", "--num_samples=10",
                         "--sampler=ddim", "--eta=0.5", "--steps=3", "--chunk_size=4",
                         f"--out={out}", "--float32", "--keep_chunks")
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().splitlines()[-1] == str(final)
        assert not (out / "lock").exists()
        return _warnings(result.stderr)

    assert sample() == []
    original = {p.name: _arrays(p) for p in chunks.iterdir()}
    assert sorted(original) == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    whole = _arrays(final)
    # A truncated samples.npz is not "already complete": set aside, reassembled.
    truncated = final.read_bytes()[: final.stat().st_size // 2]
    final.write_bytes(truncated)
    (line,) = sample()
    assert line.startswith(f"warning: {final}: damaged (") and "making the set again" in line
    assert (out / "samples.npz.damaged").read_bytes() == truncated
    _assert_same_bits(_arrays(final), whole)
    # One flipped byte inside arr_0's data: the CRC-32 catches it.
    flipped = _flip_inside(final, whole["arr_0"])
    (line,) = sample()
    assert line.startswith(f"warning: {final}: damaged (") and "CRC-32" in line, line
    assert (out / "samples.npz.damaged.1").read_bytes() == flipped
    _assert_same_bits(_arrays(final), whole)
    # Stopped before assembly, one chunk bit-flipped and one truncated: each reported in one
    # line, kept aside, recomputed to the same bits.
    final.rename(out / "kept.npz")
    one, two = chunks / "chunk_00001.npz", chunks / "chunk_00002.npz"
    flipped = _flip_inside(one, original[one.name]["images"])
    cut = two.read_bytes()[:-40]
    two.write_bytes(cut)
    lines = sample()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"warning: {one}: damaged (") and "CRC-32" in lines[0]
    assert lines[1].startswith(f"warning: {two}: damaged (") and "recomputing" in lines[1]
    assert (chunks / "chunk_00001.npz.damaged").read_bytes() == flipped
    assert (chunks / "chunk_00002.npz.damaged").read_bytes() == cut
    for name, arrays in original.items():
        _assert_same_bits(_arrays(chunks / name), arrays)
    _assert_same_bits(_arrays(final), whole)
    # A chunk of the wrong shape (another set's file copied in) is damaged too.
    final.unlink()
    np.savez(chunks / "chunk_00000.npz", images=np.zeros((3, 16, 16, 1), np.float32))
    (line,) = sample()
    assert "images is float32 (3, 16, 16, 1), expected float32 (4, 16, 16, 1)" in line, line
    _assert_same_bits(_arrays(final), whole)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sample() == []  # sound now: already complete, nothing rewritten
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_second_sampler_on_the_same_out_is_refused_and_a_dead_ones_lock_taken_over(
        trained, tmp_path, run_cli):
    out = tmp_path / "out"
    args = (f"--workdir={trained}", "--num_samples=8", "--sampler=ddim", "--eta=0.5",
            "--steps=3", "--chunk_size=4", f"--out={out}")
    first = run_cli("sagd_jax.sample", *args, "--max_chunks=1")
    assert first.returncode == 0 and not (out / "lock").exists(), first.stderr[-3000:]
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "holder": "sampler",
                "started": "2026-01-01T00:00:00"}
        (out / "lock").write_text(json.dumps(lock))
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        refused = run_cli("sagd_jax.sample", *args)
        assert refused.returncode == 2 and refused.stdout == ""
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: --out={out}: in use by sampler pid {holder.pid} on "
            f"{socket.gethostname()}, started 2026-01-01T00:00:00"), lines
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()
    taken = run_cli("sagd_jax.sample", *args)
    assert taken.returncode == 0, taken.stderr[-3000:]
    (line,) = _warnings(taken.stderr)
    assert line.startswith(f"warning: --out={out}: removed the stale lock of sampler pid "
                           f"{holder.pid}"), line
    assert (out / "samples.npz").exists() and not (out / "lock").exists()


def test_the_sampler_holds_its_lock_while_sampling_and_releases_it_on_errors(trained, tmp_path,
                                                                              monkeypatch):
    import sagd_jax.samplers

    seen = []

    def failing_sampler(*args, **kwargs):
        seen.append(json.loads((tmp_path / "out" / "lock").read_text()))
        raise RuntimeError("the sampler failed")

    monkeypatch.setattr(sagd_jax.samplers, "get_sampler", lambda name: failing_sampler)
    request = SampleRequest(num_samples=4, sampler="ddpm", steps=2, chunk_size=4)
    with pytest.raises(RuntimeError, match="the sampler failed"):
        generate(trained, request, str(tmp_path / "out"))
    assert [(s["pid"], s["holder"]) for s in seen] == [(os.getpid(), "sampler")]
    assert sorted(os.listdir(tmp_path / "out")) == ["chunks", "manifest.json"]


@pytest.fixture
def grf_samples_dir(tmp_path, tiny_config):
    """``(folder, images)``: a folder with a manifest naming a tiny grf run, and 64 of its
    images in model units scaled into (-1, 1)."""
    from sagd_jax.data import get_source

    workdir = Workdir(str(tmp_path / "run"))
    workdir.prepare(tiny_config())
    images = get_source(workdir.saved_config().data).get(np.arange(64)).astype(np.float32)
    folder = tmp_path / "generated"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"workdir": workdir.path}))
    return folder, images * (0.9 / np.abs(images).max())


def _one_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def test_evaluate_takes_float_arr_0_only_as_model_units_when_told(grf_samples_dir, run_cli):
    folder, images = grf_samples_dir
    as_float, as_uint8 = folder / "float.npz", folder / "uint8.npz"
    np.savez(as_float, arr_0=images)
    np.savez(as_uint8, arr_0=to_uint8(images))
    refused = run_cli("sagd_jax.evaluate", f"--samples={as_float}")
    assert _one_error(refused) == (
        f"error: --samples={as_float}: arr_0 is float32, not uint8 pixels; if it holds images "
        "in model units ([-1, 1]), pass --model_units")
    assert sorted(os.listdir(folder)) == ["float.npz", "manifest.json", "uint8.npz"]
    wrong = run_cli("sagd_jax.evaluate", f"--samples={as_uint8}", "--model_units")
    assert _one_error(wrong).startswith(f"error: --samples={as_uint8}: --model_units, but arr_0 "
                                        "is uint8")
    reports = {}
    for path, extra in ((as_float, ["--model_units"]), (as_uint8, [])):
        out = folder / f"{path.stem}.json"
        result = run_cli("sagd_jax.evaluate", f"--samples={path}", f"--out={out}",
                         "--max_reference=256", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        reports[path.stem] = json.loads(out.read_text())
    f, u = reports["float"], reports["uint8"]
    # Equal within uint8 quantisation (a step of 1/127.5); pixels taken as model units (the
    # old behaviour) would be ~127x too large: |log ratio| ~ 2 log 127 ~ 9.7.
    assert f["spectrum"]["mean_abs_log_ratio"] == pytest.approx(
        u["spectrum"]["mean_abs_log_ratio"], abs=0.005)
    np.testing.assert_allclose(f["spectrum"]["samples"], u["spectrum"]["samples"], rtol=0.02)
    assert f["grf_variance"]["mean_abs_log_ratio"] == pytest.approx(
        u["grf_variance"]["mean_abs_log_ratio"], abs=0.005)


def _npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _flipped(raw, array):
    raw = bytearray(raw)
    raw[raw.find(array.tobytes()) + array.nbytes // 2] ^= 0x10
    return bytes(raw)


PIXELS = np.arange(4 * 16 * 16, dtype=np.uint8).reshape(4, 16, 16, 1)


@pytest.mark.parametrize("content, extra, message", [
    (_npz_bytes(arr_0=np.zeros((0, 16, 16, 1), np.uint8)), [],
     "holds no images (shape (0, 16, 16, 1))"),
    (_npz_bytes(arr_0=np.zeros((4, 16, 16), np.uint8)), [],
     "expected (N, H, W, C) images, got shape (4, 16, 16)"),
    (_npz_bytes(arr_0=np.zeros((0, 16, 16, 1), np.float32)), ["--model_units"],
     "holds no images (shape (0, 16, 16, 1))"),
    (_npz_bytes(arr_0=np.full((2, 16, 16, 1), np.nan, np.float32)), ["--model_units"],
     "512 non-finite values in the images"),
    (_npz_bytes(arr_0=PIXELS.astype(np.int16)), [], "arr_0 is int16, not uint8 pixels"),
    (_npz_bytes(images=PIXELS), [], "no arr_0 array (has: images)"),
    (b"not a zip file", [], "not an .npz archive (no zip header)"),
    (b"", [], "not an .npz archive (no zip header)"),
    (_npz_bytes(arr_0=PIXELS)[:200], [], "unreadable (BadZipFile: File is not a zip file)"),
    (_npz_bytes(arr_0=PIXELS)[:-30], [], "unreadable (BadZipFile: "),
    (_flipped(_npz_bytes(arr_0=PIXELS), PIXELS), [],
     "unreadable (BadZipFile: Bad CRC-32 for file 'arr_0.npy')"),
    (_npz_bytes(arr_0=np.array([{"a": 1}], dtype=object)), [],
     "unreadable (ValueError: Object arrays cannot be loaded when allow_pickle=False"),
], ids=["empty", "3d", "empty-model-units", "nan", "int16", "no-arr_0", "not-a-zip",
        "zero-bytes", "cut-early", "truncated", "crc", "pickle"])
def test_evaluate_refuses_bad_sample_files_in_one_line_before_any_work(
        grf_samples_dir, run_cli, monkeypatch, content, extra, message):
    import sagd_jax.evaluation

    def no_work(*args, **kwargs):
        raise AssertionError("work started on bad input")

    monkeypatch.setattr(sagd_jax.evaluation, "reference_images", no_work)
    monkeypatch.setattr(sagd_jax.evaluation, "feature_metrics", no_work)
    folder, _ = grf_samples_dir
    path = folder / "samples.npz"
    path.write_bytes(content)
    result = run_cli("sagd_jax.evaluate", f"--samples={path}", *extra)
    line = _one_error(result)
    assert line.startswith(f"error: --samples={path}: {message}"), line
    assert result.stdout == ""
    assert sorted(os.listdir(folder)) == ["manifest.json", "samples.npz"]
    assert path.read_bytes() == content


def test_a_read_only_workdir_is_sampled_and_evaluated_into_a_writable_out(trained, tmp_path,
                                                                          monkeypatch, run_cli):
    """Reading a run needs no writes: a workdir the user may not write (here: as
    ``files.unwritable`` reports it; the tests run as root, whom permissions do not stop) is
    sampled and judged into folders of their own."""
    from sagd_jax import files

    real = files.unwritable
    monkeypatch.setattr(files, "unwritable", lambda p: "read-only file system"
                        if os.path.abspath(str(p)).startswith(trained) else real(p))
    before = sorted(str(p) for p in pathlib.Path(trained).rglob("*"))
    out = tmp_path / "out"
    result = run_cli("sagd_jax.sample", f"--workdir={trained}", "--num_samples=4",
                     "--sampler=ddpm", "--steps=2", "--chunk_size=4", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    judged = run_cli("sagd_jax.evaluate", f"--samples={out / 'samples.npz'}",
                     f"--out={tmp_path / 'judged.json'}", "--max_reference=16",
                     "--num_subsets=2", "--subset_size=4")
    assert judged.returncode == 0, judged.stderr[-3000:]
    assert sorted(str(p) for p in pathlib.Path(trained).rglob("*")) == before
