"""Real photographs of different sizes and aspect ratios (scikit-image's) through the resize and
crop of ``sagd_jax.data.preprocess``: checked against an independent Pillow implementation of
the documented recipe (exactly) and scikit-image's antialiased resize (closely), trained on at
32 and 64 pixels, and refused in one line when the input is bad."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import skimage.transform
from PIL import Image

from sagd_jax.data import batches, clean_images, default_data_config, get_source


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of six RGB photographs: square, landscape, portrait, 300 to 640 pixels."""
    root = tmp_path_factory.mktemp("photos")
    images = {
        "astronaut.png": skimage.data.astronaut(),           # 512 x 512
        "chelsea.png": skimage.data.chelsea(),               # 300 x 451
        "coffee.png": skimage.data.coffee(),                 # 400 x 600
        "rocket.png": skimage.data.rocket(),                 # 427 x 640
        "tall/astronaut_strip.png": skimage.data.astronaut()[:, 150:350],  # 512 x 200
        "tall/coffee.jpg": skimage.data.coffee()[:, 100:420],  # 400 x 320, JPEG
    }
    for name, array in images.items():
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(root / name)
    return root


def folder_config(root, size, **data):
    cfg = default_data_config()
    cfg.name, cfg.root, cfg.channels, cfg.image_size = "folder", str(root), 3, size
    cfg.update(data)
    return cfg


def reference(path, size, fraction=1.0):
    """The documented recipe written out with Pillow alone: centre square of ``fraction``,
    box halvings, one bicubic resize of the shorter side to ``size``, centre crop."""
    img = Image.open(path).convert("RGB")
    if fraction < 1.0:
        side = round(fraction * min(img.size))
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    while min(img.size) >= 2 * size:
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)),
                     Image.Resampling.BICUBIC)
    top, left = (img.height - size) // 2, (img.width - size) // 2
    return np.asarray(img)[top:top + size, left:left + size]


@pytest.mark.parametrize("size", [32, 64])
def test_centre_crops_match_an_independent_resize_and_crop(photos, size):
    cfg = folder_config(photos, size)
    source = get_source(cfg)
    assert source.image_shape is None  # sizes vary
    out = clean_images(source, cfg, len(source))
    assert out.dtype == np.uint8 and out.shape == (6, size, size, 3)
    for path, image in zip(source.paths, out, strict=True):
        np.testing.assert_array_equal(image, reference(path, size))  # integer-exact
        # scikit-image's own antialiased resize of the shorter side, then the centre crop
        pixels = np.asarray(Image.open(path).convert("RGB"))
        h, w = pixels.shape[:2]
        scale = size / min(h, w)
        resized = skimage.transform.resize(pixels, (round(h * scale), round(w * scale)),
                                           order=3, anti_aliasing=True, preserve_range=True)
        top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
        crop = resized[top:top + size, left:left + size]
        contrast = np.abs(crop - crop.mean()).mean()  # 25 to 70 grey levels here
        # other kernels, same geometry: within 15% of the contrast (a one-pixel shift of the
        # crop differs by 25% to 60%)
        assert np.abs(image - crop).mean() < 0.15 * contrast, path


def test_a_centre_crop_fraction_comes_before_the_resize(photos):
    cfg = folder_config(photos, 32, center_crop_fraction=0.7)
    source = get_source(cfg)
    out = clean_images(source, cfg, len(source))
    for path, image in zip(source.paths, out, strict=True):
        np.testing.assert_array_equal(image, reference(path, 32, fraction=0.7))


def test_random_crops_are_windows_of_the_resized_image_at_varying_offsets(photos):
    cfg = folder_config(photos, 32, crop="random")
    source = get_source(cfg)
    dataset = batches(source, cfg, seed=0, global_batch_size=6)
    full = {}  # path -> the resized image (shorter side 32), from the documented recipe
    for path in source.paths:
        img = Image.open(path).convert("RGB")
        while min(img.size) >= 64:
            img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
        scale = 32 / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.BICUBIC)
        full[path] = (np.asarray(img).astype(np.float32) / 127.5 - 1.0)
    offsets = set()
    for step in range(4):
        for x in dataset[step]:
            found = [(path, top, left) for path, img in full.items()
                     for top in range(img.shape[0] - 31) for left in range(img.shape[1] - 31)
                     if np.array_equal(img[top:top + 32, left:left + 32], x)]
            assert len(found) >= 1
            offsets.add(found[0])
    assert len({(top, left) for _, top, left in offsets}) > 3


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 64])
def test_a_folder_of_photographs_trains(photos, tmp_path, run_cli, tiny_cli_overrides, size):
    workdir = tmp_path / "run"
    result = run_cli("sagd_jax.main", "--config=configs/quickstart.py", f"--workdir={workdir}",
                     *tiny_cli_overrides, "--config.data.name=folder",
                     f"--config.data.root={photos}", "--config.data.channels=3",
                     f"--config.data.image_size={size}", "--config.data.crop=random",
                     "--config.data.random_flip=True", "--config.train.batch_size=4",
                     "--config.train.num_steps=2", "--config.train.log_every=1",
                     "--config.train.checkpoint_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0.0 <= r["data_wait"] <= 1.0 for r in records)


def test_bad_folder_input_is_one_line_naming_the_key_or_file(photos, tmp_path, run_cli,
                                                             tiny_cli_overrides):
    def train(root, *extra):
        workdir = tmp_path / "never"
        result = run_cli("sagd_jax.main", "--config=configs/quickstart.py",
                         f"--workdir={workdir}", *tiny_cli_overrides,
                         "--config.data.name=folder", f"--config.data.root={root}",
                         "--config.data.channels=3", "--config.data.image_size=32",
                         "--config.train.num_steps=2", *extra)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and not workdir.exists()
        return lines[0]

    line = train(photos, "--config.data.resize=False", "--config.data.crop=random",
                 "--config.data.image_size=400")
    assert line == ("error: data.image_size=400: larger than the 512x200 images of "
                    f"folder:{photos} (the smallest: {photos}/tall/astronaut_strip.png); "
                    "data.crop=random, data.resize=False")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty) == (f"error: data.root='{empty}': holds no .png/.jpg/.jpeg files")
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(broken / "a.jpg")
    (broken / "b.png").write_bytes(b"\x89PNG not really")
    assert train(broken).startswith(f"error: {broken}/b.png: not a readable image")
    (broken / "b.png").unlink()
    data = (broken / "a.jpg").read_bytes()
    (broken / "a.jpg").write_bytes(data[:len(data) // 3])  # the header reads, the pixels not
    assert train(broken).startswith(f"error: {broken}/a.jpg: not a readable image")
