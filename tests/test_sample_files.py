"""Sample sets in the layouts of the FID tools (an EDM/ADM ``.npz``, a PNG folder, a zip) read
as the same images as this project's own ``samples.npz``, judged to the same numbers, and bad
sets refused in one line."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from sagd_jax import sample_files
from sagd_jax.images import to_float


def _pixels(count=6, size=8, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, channels), np.uint8)


def _png_folder(folder, pixels, nested=False):
    folder.mkdir(parents=True)
    for i, image in enumerate(pixels):
        target = folder / (f"part{i % 2}" if nested else "")
        target.mkdir(exist_ok=True)
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        picture.save(target / f"{i:06d}.png")
    return folder


def _zip(path, folder):
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(os.listdir(folder)):
            archive.write(folder / name, f"images/{name}")
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_an_npz_a_png_folder_and_a_zip_of_the_same_pixels_read_the_same(tmp_path, channels):
    pixels = _pixels(channels=channels)
    labels = np.arange(len(pixels)) % 3
    np.savez(tmp_path / "edm.npz", arr_0=pixels, arr_1=labels)
    folder = _png_folder(tmp_path / "png", pixels)
    sets = {"npz": sample_files.load(str(tmp_path / "edm.npz")),
            "folder": sample_files.load(str(folder)),
            "zip": sample_files.load(str(_zip(tmp_path / "set.zip", folder)))}
    for layout, got in sets.items():
        assert got.layout == layout and got.manifest == {}
        np.testing.assert_array_equal(got.images, to_float(pixels))
    np.testing.assert_array_equal(sets["npz"].labels, labels)
    # written back as PNGs by the exporter: the same pixels again, files already there kept
    assert sample_files.write_pngs(pixels, str(tmp_path / "out")) == len(pixels)
    assert sample_files.write_pngs(pixels, str(tmp_path / "out")) == 0
    np.testing.assert_array_equal(sample_files.load(str(tmp_path / "out")).images,
                                  to_float(pixels))


def test_a_folder_is_read_recursively_in_path_order_and_converted_to_the_asked_channels(
        tmp_path):
    pixels = _pixels(channels=3)
    folder = _png_folder(tmp_path / "png", pixels, nested=True)
    got = sample_files.load(str(folder))
    order = [0, 2, 4, 1, 3, 5]  # part0/ before part1/
    np.testing.assert_array_equal(got.images, to_float(pixels[order]))
    gray = sample_files.load(str(folder), channels=1).images
    expected = np.stack([np.asarray(Image.fromarray(p).convert("L")) for p in pixels[order]])
    np.testing.assert_array_equal(gray[..., 0], to_float(expected))


@pytest.mark.parametrize("make, message", [
    (lambda d: np.savez(d / "s.npz", images=_pixels()), "no arr_0 array (has: images)"),
    (lambda d: np.savez(d / "s.npz", arr_0=_pixels(), arr_1=np.zeros(2, int)),
     "arr_1 (labels) is int64 (2,); expected 6 integers, one per image"),
    (lambda d: (d / "s.zip").write_bytes(b"not a zip"), "not a .zip archive (no zip header)"),
    (lambda d: _zip(d / "s.zip", _png_folder(d / "empty", _pixels()[:0])),
     "a zip with no .png/.jpg/.jpeg files"),
])
def test_bad_archives_are_refused_in_one_line(tmp_path, make, message):
    make(tmp_path)
    path = next(p for p in sorted(tmp_path.iterdir()) if p.is_file())
    with pytest.raises(ValueError) as err:
        sample_files.load(str(path))
    assert str(err.value) == f"--samples={path}: {message}"


def test_a_corrupt_png_or_one_of_another_size_in_a_folder_is_named(tmp_path):
    folder = _png_folder(tmp_path / "png", _pixels())
    good = (folder / "000003.png").read_bytes()
    (folder / "000003.png").write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match=r"^--samples=.*png: 000003.png: not a readable image "
                                         r"\(") as err:
        sample_files.load(str(folder))
    assert "\n" not in str(err.value)
    (folder / "000003.png").write_bytes(good)
    Image.fromarray(_pixels(count=1, size=9)[0]).save(folder / "000004.png")
    with pytest.raises(ValueError, match=r"000004.png is 9x9, 000000.png is 8x8: every image "
                                         "must have one size"):
        sample_files.load(str(folder))
    with pytest.raises(ValueError, match="a folder with no .png/.jpg/.jpeg files"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images")
        sample_files.load(str(tmp_path / "empty"))


# The evaluator on the same images in four layouts: this project's set (manifest), an EDM npz,
# a PNG folder and a zip, judged against the same data.

CONFIG_FILE = """
from sagd_jax.config import default_config


def get_config():
    config = default_config()
    config.data.update(dict(name="natural_patches", image_size=32, channels=3, num_examples=32))
    return config
"""


@pytest.fixture
def _private_cache(tmp_path, monkeypatch):
    from sagd_jax.metrics import inception

    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setenv(inception.URL_ENV_VAR, "http://127.0.0.1:9/closed.pth")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_edm_npz_a_png_folder_and_a_zip_score_as_the_projects_own_set(tmp_path, run_cli,
                                                                         _private_cache):
    from sagd_jax.config import load_config_file
    from sagd_jax.data import get_source
    from sagd_jax.evaluation import InceptionRequest, evaluate
    from sagd_jax.images import to_uint8
    from sagd_jax.metrics import inception
    from sagd_jax.workdir import Workdir

    weights = tmp_path / "random.npz"
    np.savez(weights, **inception.random_state_dict(0))
    (tmp_path / "patches.py").write_text(CONFIG_FILE)
    config = load_config_file(str(tmp_path / "patches.py"))
    workdir = Workdir(str(tmp_path / "run"))
    workdir.prepare(config)
    images = get_source(config.data).get(np.arange(24)).astype(np.float32)
    pixels = to_uint8(np.clip(images + np.random.default_rng(0).normal(0, 0.2, images.shape),
                              -1, 1))
    own = tmp_path / "own"
    own.mkdir()
    np.savez(own / "samples.npz", arr_0=pixels)  # sagd_jax.sample's default layout
    (own / "manifest.json").write_text(json.dumps({"workdir": workdir.path}))
    (tmp_path / "edm").mkdir()
    np.savez(tmp_path / "edm" / "samples.npz", arr_0=pixels)  # no manifest
    folder = _png_folder(tmp_path / "png", pixels)
    archive = _zip(tmp_path / "set.zip", folder)
    flags = [f"--inception_weights={weights}", "--inception_reference_images=32",
             "--num_subsets=5", "--subset_size=20", "--max_reference=32"]

    def judged(path, *extra):
        result = run_cli("sagd_jax.evaluate", f"--samples={path}", *flags, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    summaries = {"own": judged(own / "samples.npz"),
                 "edm": judged(tmp_path / "edm" / "samples.npz",
                               f"--config={tmp_path / 'patches.py'}"),
                 "zip": judged(archive, f"--config={tmp_path / 'patches.py'}")}
    results = {"own": json.loads((own / "evaluation.json").read_text()),
               "edm": json.loads((tmp_path / "edm" / "samples.evaluation.json").read_text()),
               "zip": json.loads((tmp_path / "set.evaluation.json").read_text()),
               "folder": evaluate(str(folder), max_reference=32, num_subsets=5, subset_size=20,
                                  config=config, inception=InceptionRequest(
                                      "on", str(weights), reference_images=32))}
    assert (tmp_path / "png.evaluation.json").exists()
    assert [r["layout"] for r in results.values()] == ["npz", "npz", "zip", "folder"]
    assert summaries["edm"] == summaries["zip"] == summaries["own"]
    for name, r in results.items():
        assert r["spectrum"] == results["own"]["spectrum"], name
        for key in ("fid", "kid", "inception_score"):
            assert r["inception"][key] == results["own"]["inception"][key], (name, key)
    assert results["own"]["inception"]["fid"] > 0


def test_a_set_without_a_manifest_needs_a_config_or_reference_statistics(tmp_path, run_cli):
    np.savez(tmp_path / "edm.npz", arr_0=_pixels())
    result = run_cli("sagd_jax.evaluate", f"--samples={tmp_path / 'edm.npz'}")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"error: --samples={tmp_path / 'edm.npz'}: no manifest.json beside it "
                    "naming its run; pass --config=configs/NAME.py (the data to judge "
                    "against) or --reference_stats=FILE.npz (published Inception statistics)")
    assert sorted(os.listdir(tmp_path)) == ["edm.npz"]


def test_classifier_on_for_images_it_does_not_judge_is_refused_before_work(tmp_path, run_cli):
    np.savez(tmp_path / "edm.npz", arr_0=_pixels(size=16, channels=1))
    result = run_cli("sagd_jax.evaluate", f"--samples={tmp_path / 'edm.npz'}",
                     "--config=configs/quickstart.py", "--config.data.name=grf",
                     "--config.data.image_size=16", "--classifier=on")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == ("error: --classifier=on: the classifier judges 28x28x1 images of "
                    "Fashion-MNIST-like data, not (16, 16, 1) grf")
    assert sorted(os.listdir(tmp_path)) == ["edm.npz"]


def test_classifier_auto_skips_an_untrained_classifier_with_a_note_and_trains_nothing(
        tmp_path, monkeypatch, _private_cache):
    from sagd_jax import console
    from sagd_jax.config import default_config
    from sagd_jax.evaluation import InceptionRequest, evaluate
    from sagd_jax.metrics import classifier

    def no_training(*args, **kwargs):
        raise AssertionError("a classifier was trained")

    monkeypatch.setattr(classifier, "train_classifier", no_training)
    said = []
    monkeypatch.setattr(console, "info", lambda msg, *a, **k: said.append(msg % a))
    config = default_config()
    config.data.update(dict(name="natural_patches", image_size=28, channels=1,
                            num_examples=16))
    np.savez(tmp_path / "edm.npz", arr_0=_pixels(count=8, size=28, channels=1))
    results = evaluate(str(tmp_path / "edm.npz"), config=config, max_reference=16,
                       num_subsets=2, subset_size=4, inception=InceptionRequest("off"))
    assert "spectrum" in results and "fd" not in results and "kid" not in results
    assert any(m.startswith("classifier FD/KID: skipped (no trained classifier in ")
               and "--classifier=on trains it once, 5 to 10 minutes" in m for m in said), said
    assert json.loads((tmp_path / "edm.evaluation.json").read_text()) == results


def _listing(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def test_the_evaluate_cli_refuses_a_corrupt_png_a_bare_npz_and_a_wrong_hash_in_one_line(
        tmp_path, run_cli, monkeypatch):
    """Exit 2, one line naming the file, nothing written (the cache included)."""
    import hashlib

    from sagd_jax.metrics import inception

    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    folder = _png_folder(tmp_path / "png", _pixels(size=32))
    broken = (folder / "000002.png").read_bytes()[:60]
    (folder / "000002.png").write_bytes(broken)
    np.savez(tmp_path / "bare.npz", images=_pixels(size=32))
    weights = b"not the network" * 50
    wrong = "0123abcd" if not hashlib.sha256(weights).hexdigest().startswith("0") else "fedc4321"
    mirror = tmp_path / "mirror" / f"pt_inception-2015-12-05-{wrong}.pth"
    mirror.parent.mkdir()
    mirror.write_bytes(weights)
    monkeypatch.setenv(inception.URL_ENV_VAR, mirror.as_uri())
    np.savez(tmp_path / "good.npz", arr_0=_pixels(size=32))
    config = "--config=configs/quickstart.py"
    before = _listing(tmp_path)
    cases = [
        ([f"--samples={folder}", config, "--config.data.name=natural_patches",
          "--config.data.image_size=32", "--config.data.channels=3"],
         f"error: --samples={folder}: 000002.png: not a readable image ("),
        ([f"--samples={tmp_path / 'bare.npz'}", config],
         f"error: --samples={tmp_path / 'bare.npz'}: no arr_0 array (has: images)"),
        ([f"--samples={tmp_path / 'good.npz'}", config, "--config.data.name=natural_patches",
          "--config.data.image_size=32", "--config.data.channels=3", "--inception=on"],
         "error: Inception weights: no pt_inception-2015-12-05-6726825d.pth"),
    ]
    for args, start in cases:
        result = run_cli("sagd_jax.evaluate", *args)
        assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
        lines = [line for line in result.stderr.strip().splitlines()
                 if not line.startswith("inception weights: downloading")]
        assert len(lines) == 1 and lines[0].startswith(start), lines
        assert _listing(tmp_path) == before
    assert wrong in lines[0] and hashlib.sha256(weights).hexdigest() in lines[0]


def test_an_npz_whose_members_disagree_or_that_changed_since_its_sampler_wrote_it_is_refused(
        tmp_path):
    pixels = _pixels()
    images = to_float(pixels)
    np.savez(tmp_path / "float_arr_0.npz", arr_0=images, float32=images)
    with pytest.raises(ValueError, match=r"arr_0 is float32 \(6, 8, 8, 3\), float32 is "
                                         r"float32 \(6, 8, 8, 3\): arr_0 must be their uint8"):
        sample_files.load(str(tmp_path / "float_arr_0.npz"))
    changed = pixels.copy()
    changed[2, 0, 0, 0] ^= 1
    np.savez(tmp_path / "disagree.npz", arr_0=changed, float32=images)
    with pytest.raises(ValueError, match="arr_0 and float32 disagree in 1 of 6 images"):
        sample_files.load(str(tmp_path / "disagree.npz"))
    # A set with its sampler's manifest and checksums: the file must be the one recorded.
    folder = tmp_path / "set"
    folder.mkdir()
    np.savez(folder / "samples.npz", arr_0=pixels)
    (folder / "manifest.json").write_text(json.dumps({"workdir": str(tmp_path)}))
    (folder / "checksums.json").write_text(json.dumps(
        {"samples.npz": {"sha256": sample_files.sha256(str(folder / "samples.npz"))}}))
    assert sample_files.load(str(folder / "samples.npz")).layout == "npz"
    np.savez(folder / "samples.npz", arr_0=changed)
    with pytest.raises(ValueError, match="not the file its sampler wrote"):
        sample_files.load(str(folder / "samples.npz"))


def test_evaluate_writes_strict_json_null_for_non_finite_with_one_warning(tmp_path, run_cli):
    huge = np.full((8, 16, 16, 1), 3e38, np.float32)  # finite, but its power overflows
    huge[::2] *= -1
    np.savez(tmp_path / "huge.npz", arr_0=huge)
    result = run_cli("sagd_jax.evaluate", f"--samples={tmp_path / 'huge.npz'}", "--model_units",
                     "--config=configs/quickstart.py", "--config.data.name=grf",
                     "--config.data.image_size=16", "--max_reference=16")
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "huge.evaluation.json"

    def refuse(token):
        raise AssertionError(f"not strict JSON: {token}")

    results = json.loads(out.read_text(), parse_constant=refuse)
    assert results["spectrum"]["mean_abs_log_ratio"] is None
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: {out}: non-finite values written as null: spectrum.")
    assert json.loads(result.stdout, parse_constant=refuse)["spectrum_mean_abs_log_ratio"] is None
    assert "RuntimeWarning" not in result.stderr
