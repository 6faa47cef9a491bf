"""Image sources: IDX / Fashion-MNIST, TFDS (mocked, offline), natural patches, folders."""

import gzip
import os

import numpy as np
import pytest

from sagd_jax.data import (
    ArraySource,
    ImageSource,
    default_data_config,
    get_source,
    known_sources,
    parse_idx,
    read_idx,
    register_source,
)
from sagd_jax.data import fashion_mnist as fm
from sagd_jax.data import sources as sources_module


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_fake_fashion_mnist(root, n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        with gzip.open(os.path.join(root, fm.SPLIT_FILES[split] + ".gz"), "wb") as f:
            f.write(_idx_bytes(images, 0x08))
        arrays[split] = images
    return arrays


# ---------------------------------------------------------------- IDX parsing


def test_parse_idx_uint8_and_big_endian_types(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(images, 0x08)), images)
    ints = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    parsed = parse_idx(_idx_bytes(ints, 0x0C))
    assert parsed.dtype == np.dtype(np.int32) and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, ints)
    floats = np.array([0.5, -1.25], dtype=np.float64)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(floats, 0x0E)), floats)
    # Files, plain and gzipped.
    (tmp_path / "plain").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "zipped").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    np.testing.assert_array_equal(read_idx(str(tmp_path / "plain")), images)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "zipped")), images)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "element type"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x07", "3 bytes"),
    ],
)
def test_parse_idx_rejects_bad_files(data, message):
    with pytest.raises(ValueError, match=message):
        parse_idx(data)


def test_fashion_mnist_from_a_root_folder(tmp_path):
    arrays = _write_fake_fashion_mnist(tmp_path)
    cfg = default_data_config()
    cfg.root = str(tmp_path)
    source = get_source(cfg)
    assert isinstance(source, ImageSource)
    assert len(source) == 5 and source.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(source.get(np.array([4, 0]))[..., 0], arrays["train"][[4, 0]])
    cfg.split = "test"
    assert len(get_source(cfg)) == 3


def test_fashion_mnist_root_without_files(tmp_path):
    cfg = default_data_config()
    cfg.root = str(tmp_path)
    with pytest.raises(ValueError, match=r"^data\.root=.*train-images-idx3-ubyte"):
        get_source(cfg)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(fm.DEBIAN_ROOT, "train-images-idx3-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist is not installed",
)
@pytest.mark.parametrize("split,size", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_debian_files(split, size):
    cfg = default_data_config()
    cfg.split = split
    source = get_source(cfg)
    assert isinstance(source, ArraySource)  # read from the local IDX files, not TFDS
    assert len(source) == size and source.image_shape == (28, 28, 1)
    images = source.get(np.arange(size))
    assert isinstance(images, np.ndarray)  # images only: no labels
    assert images.dtype == np.uint8 and images.shape == (size, 28, 28, 1)
    assert images.min() == 0 and images.max() == 255
    assert 60 < images.mean() < 85  # Fashion-MNIST mean pixel is about 73
    assert (images[:, :, 0] == 0).mean() > 0.5  # mostly black border columns


# ---------------------------------------------------------------- natural patches


def _patches_config(**overrides):
    cfg = default_data_config()
    cfg.name = "natural_patches"
    cfg.image_size = 32
    cfg.num_examples = 1000
    cfg.update(overrides)
    return cfg


def test_natural_patches_shape_and_determinism():
    source = get_source(_patches_config())
    assert len(source) == 1000 and source.image_shape == (32, 32, 1)
    idx = np.array([0, 999, 17, 17])
    a = source.get(idx)
    assert a.dtype == np.uint8 and a.shape == (4, 32, 32, 1)
    np.testing.assert_array_equal(a, get_source(_patches_config()).get(idx))  # fresh source
    np.testing.assert_array_equal(a[2], a[3])
    np.testing.assert_array_equal(a[1:2], source.get(np.array([999])))  # order-free
    assert not np.array_equal(a[0], a[1])
    assert a.std() > 5  # real image content, not a constant
    other = get_source(_patches_config(seed=1)).get(idx)
    assert not np.array_equal(a, other)
    names = {source.crop_location(i)[0] for i in range(200)}
    assert len(names) >= 4  # crops come from several photographs


def test_natural_patches_rgb():
    source = get_source(_patches_config(channels=3, image_size=16))
    images = source.get(np.arange(8))
    assert images.shape == (8, 16, 16, 3)
    assert np.abs(images[..., 0].astype(int) - images[..., 1]).max() > 0  # truly colour


def test_natural_patches_too_large():
    with pytest.raises(ValueError, match=r"^data\.image_size=5000: .*at most"):
        get_source(_patches_config(image_size=5000))


# ---------------------------------------------------------------- folder


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for rel in ["b.png", "a/z.PNG", "a/c.png", "c.jpeg"]:
        arrays[rel] = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
        _write_png(tmp_path / rel, arrays[rel])
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = default_data_config()
    cfg.name, cfg.root = "folder", str(tmp_path)
    source = get_source(cfg)
    assert [os.path.relpath(p, tmp_path) for p in source.paths] == [
        "a/c.png",
        "a/z.PNG",
        "b.png",
        "c.jpeg",
    ]
    images = source.get(np.arange(4))
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 1)
    for k, rel in enumerate(["a/c.png", "a/z.PNG", "b.png"]):  # PNG is lossless
        np.testing.assert_array_equal(images[k, ..., 0], arrays[rel])


def test_folder_source_rgb(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    _write_png(tmp_path / "x.png", image)
    cfg = default_data_config()
    cfg.name, cfg.root, cfg.channels = "folder", str(tmp_path), 3
    np.testing.assert_array_equal(get_source(cfg).get(np.array([0]))[0], image)


def test_folder_source_of_any_size_converts_modes_and_names_an_unreadable_file(tmp_path):
    gray = np.random.default_rng(2).integers(0, 256, size=(8, 8), dtype=np.uint8)
    rgb = np.random.default_rng(3).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    _write_png(tmp_path / "a.png", gray)
    _write_png(tmp_path / "sub" / "b.png", rgb)
    cfg = default_data_config()
    cfg.name, cfg.root, cfg.channels = "folder", str(tmp_path), 3
    source = get_source(cfg)
    assert source.image_shape is None and len(source) == 2  # sizes vary
    np.testing.assert_array_equal(source.read(0), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(source.read(1), rgb)
    cfg.channels = 1
    from PIL import Image

    expected = np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
    np.testing.assert_array_equal(get_source(cfg).read(1), expected)
    with pytest.raises(ValueError, match="images of several sizes"):
        get_source(cfg).get(np.arange(2))
    (tmp_path / "sub" / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError) as err:
        get_source(cfg)
    assert str(err.value).startswith(f"{tmp_path}/sub/c.jpg: not a readable image")
    assert "\n" not in str(err.value)


def test_folder_source_empty(tmp_path):
    cfg = default_data_config()
    cfg.name, cfg.root = "folder", str(tmp_path)
    with pytest.raises(ValueError, match=r"^data\.root=.*holds no"):
        get_source(cfg)


# ---------------------------------------------------------------- registry


def test_unknown_source_name():
    cfg = default_data_config()
    cfg.name = "xyz"
    with pytest.raises(ValueError) as err:
        get_source(cfg)
    assert str(err.value).startswith("data.name='xyz': unknown source; known: ")
    for name in ("fashion_mnist", "folder", "natural_patches", "tfds:NAME"):
        assert name in str(err.value)
    cfg.name = "tfds:"
    with pytest.raises(ValueError, match=r"^data\.name='tfds:': unknown source"):
        get_source(cfg)


def test_register_source(monkeypatch):
    monkeypatch.setattr(sources_module, "_REGISTRY", dict(sources_module._REGISTRY))

    def make_toy(data_config):
        size = data_config.image_size
        return ArraySource("toy", np.full((3, size, size, 1), 7, dtype=np.uint8))

    register_source("toy", make_toy)
    assert "toy" in known_sources()
    cfg = default_data_config()
    cfg.name, cfg.image_size = "toy", 4
    source = get_source(cfg)
    assert source.get(np.array([2])).shape == (1, 4, 4, 1)
    with pytest.raises(ValueError, match="already registered"):
        register_source("toy", make_toy)
    register_source("toy", make_toy, overwrite=True)
