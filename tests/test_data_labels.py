"""Class labels through the input pipeline (``data.num_classes``, ``data.label_key``): every
source's labels (Fashion-MNIST's label files, TFDS mock data, the folder convention, arrays),
``check_labels``'s one-line errors, and ``batch_labels``: the labels of step s are those of
the examples of ``batches(...)[s]``, example by example, for any process count.
``data.num_classes = 0`` reads no labels."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from sagd_jax.data import (
    ArraySource,
    batch_labels,
    batches,
    check_labels,
    default_data_config,
    get_source,
    load_batch,
)
from sagd_jax.data import fashion_mnist as fm
from sagd_jax.data import pipeline as pipeline_module

try:  # imported at collection, so that no test pays for TensorFlow's start (TFDS's mock
    # data encodes images with TensorFlow when the labels are read with images undecoded)
    import tensorflow  # noqa: F401
    import tensorflow_datasets as tfds
except ImportError:  # pragma: no cover - the test extra installs them
    tfds = None

needs_tfds = pytest.mark.skipif(tfds is None, reason="tensorflow_datasets is not installed")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _config(**overrides):
    cfg = default_data_config()
    with cfg.ignore_type():  # wrong types too, to test the checks
        cfg.update(overrides)
    return cfg


def _coded_source(n: int = 10, size: int = 4, modulus: int = 7) -> ArraySource:
    """Image i is filled with the value 20 i (recoverable after scaling to [-1, 1]); its
    label is i % modulus."""
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None] * 20, size * size)
    images = images.reshape(n, size, size)
    return ArraySource("coded", images, np.arange(n) % modulus)


def _example_of(batch: np.ndarray) -> np.ndarray:
    """The source index of each image of a batch of ``_coded_source`` (value 20 i)."""
    pixels = (batch + 1.0) * 127.5  # back to [0, 255]
    assert np.allclose(pixels, pixels[:, :1, :1, :1], atol=1e-3)  # flips keep a flat image
    return np.rint(pixels[:, 0, 0, 0] / 20).astype(np.int64)


# ---------------------------------------------------------------- config and check_labels


def test_default_keys_read_no_labels():
    cfg = default_data_config()
    assert cfg.num_classes == 0 and cfg.label_key == "label"

    class Untouchable:
        name, image_shape = "u", (4, 4, 1)

        def __len__(self):
            return 3

        def get(self, indices):
            return np.zeros((len(indices), 4, 4, 1), np.uint8)

        @property
        def labels(self):
            raise AssertionError("labels read with data.num_classes = 0")

    source = Untouchable()
    assert check_labels(source, cfg) == 0
    with pytest.raises(ValueError, match=r"^data.num_classes=0: labels per step need "):
        batch_labels(source, cfg, seed=0, global_batch_size=2)


@pytest.mark.parametrize("value", [-1, 2.0, True, "3", None])
def test_num_classes_must_be_an_integer_at_least_0(value):
    with pytest.raises(ValueError, match=r"^data.num_classes=.*: must be an integer >= 0$"):
        check_labels(_coded_source(), _config(num_classes=value))


def test_check_labels_accepts_matching_classes():
    source = _coded_source()
    assert check_labels(source, _config(num_classes=7)) == 7
    named = ArraySource("named", source.images, [0, 1, 1, 0, 1, 0, 0, 1, 1, 1], ["a", "b", "c"])
    assert check_labels(named, _config(num_classes=3)) == 3  # class 2 has no example: fine


@pytest.mark.parametrize("labels, names, num_classes, message", [
    (np.arange(10) % 7, None, 10, r"the source 'x' has 7 classes \(labels 0 .. 6\), not 10"),
    (np.arange(10) % 7, None, 5, r"the source 'x' has 7 classes \(labels 0 .. 6\), not 5"),
    (np.arange(10) % 3, ["a", "b"], 2, r"the labels of 'x' lie in \[0, 2\], outside \[0, 2\)"),
    (np.arange(10) % 3, list("abcd"), 3, r"has 4 classes \(class names: a, b, c, d\), not 3"),
    (np.arange(10) - 1, None, 9, r"the labels of 'x' lie in \[-1, 8\], outside \[0, 9\)"),
    (np.arange(10) % 3 + 1, ["a", "b", "c"], 3, r"lie in \[1, 3\], outside \[0, 3\)"),
])
def test_check_labels_one_line_errors(labels, names, num_classes, message):
    source = ArraySource("x", np.zeros((10, 2, 2), np.uint8), labels, names)
    with pytest.raises(ValueError, match=f"^data.num_classes={num_classes}: .*{message}") as err:
        check_labels(source, _config(num_classes=num_classes))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, shown", [("natural_patches", "natural_patches/gray32"),
                                         ("grf", "grf")])
def test_unlabelled_sources_are_one_line(name, shown):
    cfg = _config(name=name, image_size=32, num_examples=8, num_classes=10)
    source = get_source(cfg)  # num_classes is not theirs to check: the source builds
    assert getattr(source, "labels", None) is None
    with pytest.raises(ValueError, match=f"^data.num_classes=10: the source '{shown}' has no "
                                         "labels") as err:
        check_labels(source, cfg)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="has no labels"):
        batch_labels(source, cfg, seed=0, global_batch_size=4)


def test_array_source_labels():
    images = np.zeros((4, 2, 2), np.uint8)
    given = np.array([3, 0, 2, 1], dtype=np.uint8)
    source = ArraySource("a", images, given, ("w", "x", "y", "z"))
    assert source.labels.dtype == np.int64 and source.labels.shape == (4,)
    np.testing.assert_array_equal(source.labels, [3, 0, 2, 1])
    assert source.class_names == ["w", "x", "y", "z"]
    assert not source.labels.flags.writeable
    given[0] = 1  # a copy: the caller's array does not change the source
    assert source.labels[0] == 3
    assert ArraySource("b", images).labels is None and ArraySource("b", images).class_names is None
    for bad in ([0.0, 1.0, 2.0, 3.0], [0, 1, 2], [[0, 1], [2, 3]], [True, False, True, True]):
        with pytest.raises(ValueError, match=r"^a: labels must be an integer array \(4,\)"):
            ArraySource("a", images, bad)
    with pytest.raises(ValueError, match="^a: class_names without labels"):
        ArraySource("a", images, None, ["x"])
    for bad_names in ("abcd", [0, 1, 2, 3]):
        with pytest.raises(ValueError, match="^a: class_names must be a list of strings"):
            ArraySource("a", images, [0, 1, 2, 3], bad_names)


# ---------------------------------------------------------------- labels per step


def test_batch_labels_match_the_batch_images():
    """Label = example % 7 and image = 20 example: over several steps, several epochs (N = 10,
    B = 4: 3.2 epochs, batches across epoch boundaries), flips, and 1 or 2 processes, the
    labels of step s are the function of each image of ``batches(...)[s]``."""
    source = _coded_source()
    cfg = _config(image_size=4, num_classes=7, random_flip=True, crop="random")
    steps = range(8)
    whole = {}
    for count in (1, 2):
        for p in range(count):
            images = batches(source, cfg, 3, 4, p, count)
            labels = batch_labels(source, cfg, 3, 4, p, count)
            for s in steps:
                got = labels[s]
                assert got.dtype == np.int32 and got.shape == (4 // count,)
                examples = _example_of(images[s])
                np.testing.assert_array_equal(got, examples % 7)
                np.testing.assert_array_equal(labels.indices(s), examples)
                whole.setdefault((count, s), []).append(got)
    for s in steps:  # the global batch's labels are the same for any process count
        np.testing.assert_array_equal(np.concatenate(whole[(2, s)]), whole[(1, s)][0])
    seen = np.concatenate([batch_labels(source, cfg, 3, 4).indices(s) for s in range(5)])
    for epoch in range(2):  # every example once per epoch
        assert sorted(seen[10 * epoch:10 * (epoch + 1)]) == list(range(10))


def test_batch_labels_read_no_images_and_check_arguments():
    class NoImages(ArraySource):
        def get(self, indices):
            raise AssertionError("batch_labels read images")

    source = NoImages("n", _coded_source().images, np.arange(10) % 7)
    cfg = _config(image_size=4, num_classes=7)
    labels = batch_labels(source, cfg, seed=0, global_batch_size=6)
    assert labels[1000].shape == (6,) and len(labels) > 10**9  # endless, like the batches
    with pytest.raises(ValueError, match="^step=-1: must be an integer >= 0"):
        labels[-1]
    with pytest.raises(ValueError, match="^global_batch_size=5: not divisible by process_count=2"):
        batch_labels(source, cfg, 0, 5, 0, 2)
    with pytest.raises(ValueError, match=r"^process_index=2: must be in \[0, 2\)"):
        batch_labels(source, cfg, 0, 4, 2, 2)
    with pytest.raises(ValueError, match="^data.num_classes=8: the source 'n' has 7 classes"):
        batch_labels(source, _config(image_size=4, num_classes=8), 0, 4)


def test_labels_leave_the_image_batches_unchanged():
    source = _coded_source()
    plain = ArraySource("coded", source.images)
    for step in (0, 3):
        np.testing.assert_array_equal(
            load_batch(plain, _config(image_size=4, random_flip=True), 5, step, 4),
            load_batch(source, _config(image_size=4, random_flip=True, num_classes=7), 5,
                       step, 4))
    assert pipeline_module.batch_labels is batch_labels


# ---------------------------------------------------------------- Fashion-MNIST


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _fake_fashion_mnist(root, n: int = 20, labels: np.ndarray | None = None) -> np.ndarray:
    """Train images (IDX, gzipped) and labels (``labels``, default i % 10) in ``root``."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    (root / (fm.SPLIT_FILES["train"] + ".gz")).write_bytes(gzip.compress(_idx(images)))
    labels = np.arange(n) % 10 if labels is None else labels
    (root / (fm.LABEL_FILES["train"] + ".gz")).write_bytes(gzip.compress(_idx(labels)))
    return labels


def test_fashion_mnist_labels_from_a_root_folder(tmp_path):
    labels = _fake_fashion_mnist(tmp_path)
    cfg = _config(root=str(tmp_path), num_classes=10)
    source = get_source(cfg)
    np.testing.assert_array_equal(source.labels, labels)
    assert source.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert check_labels(source, cfg) == 10
    images, int32_labels = fm.load_labeled_fashion_mnist("train", str(tmp_path))  # the same
    np.testing.assert_array_equal(int32_labels, labels)  # reader, for the classifier
    assert int32_labels.dtype == np.int32 and images.shape == (20, 28, 28, 1)


def test_fashion_mnist_without_num_classes_reads_no_label_file(tmp_path, monkeypatch):
    _fake_fashion_mnist(tmp_path)
    os.remove(tmp_path / (fm.LABEL_FILES["train"] + ".gz"))

    def unexpected(*args, **kwargs):
        raise AssertionError("label file read with data.num_classes = 0")

    monkeypatch.setattr(fm, "load_fashion_mnist_labels", unexpected)
    source = get_source(_config(root=str(tmp_path)))
    assert len(source) == 20 and source.labels is None and source.class_names is None


@pytest.mark.parametrize("damage, message", [
    ("missing", r"train-labels-idx1-ubyte\[\.gz\]: missing; the labels of fashion_mnist/train"),
    ("truncated", r"train-labels-idx1-ubyte\.gz: damaged gzip file"),
    ("count", r"train-labels-idx1-ubyte\.gz: 19 labels for 20 images"),
    ("value", r"train-labels-idx1-ubyte\.gz: label 10 outside \[0, 10\)"),
])
def test_fashion_mnist_bad_label_file_is_one_line_naming_it(tmp_path, damage, message):
    labels = np.arange(20) % 10
    if damage == "count":
        labels = labels[:19]
    if damage == "value":
        labels = labels.copy()
        labels[3] = 10
    _fake_fashion_mnist(tmp_path, labels=labels)
    path = tmp_path / (fm.LABEL_FILES["train"] + ".gz")
    if damage == "missing":
        os.remove(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(ValueError, match="^" + str(tmp_path) + "/" + message) as err:
        get_source(_config(root=str(tmp_path), num_classes=10))
    assert "\n" not in str(err.value)


@pytest.mark.needs_fashion_mnist
def test_fashion_mnist_real_labels():
    """Debian's files: the labels of the first 1000 examples, counted per class, are those of
    the label file (read here on its own); each class has 6000 training examples."""
    source = get_source(_config(num_classes=10))
    assert source.name == "fashion_mnist/train" and source.labels.shape == (60_000,)
    with gzip.open(os.path.join(FASHION_MNIST, "train-labels-idx1-ubyte.gz")) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    np.testing.assert_array_equal(np.bincount(source.labels[:1000], minlength=10),
                                  np.bincount(raw[:1000], minlength=10))
    np.testing.assert_array_equal(source.labels, raw)
    assert np.bincount(source.labels).tolist() == [6000] * 10
    assert source.class_names[0] == "T-shirt/top" and source.class_names[9] == "Ankle boot"
    cfg = _config(num_classes=10)
    assert check_labels(source, cfg) == 10
    labels = batch_labels(source, cfg, seed=0, global_batch_size=8)[2]
    assert labels.shape == (8,) and set(labels.tolist()) <= set(range(10))


# ---------------------------------------------------------------- folder


def _write_png(path, value: int, size: int = 4) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _class_folders(root) -> dict[str, int]:
    """PNGs of value 40 * class under root/CLASS (nested too); class order: sorted names."""
    files = {"dog/a.png": 1, "cat/z.png": 0, "cat/deep/er/b.png": 0, "dog/c.PNG": 1,
             "emu/x.jpeg": 2}
    for rel, label in files.items():
        _write_png(root / rel, 40 * label)
    (root / "notes.txt").write_text("not an image, ignored")
    return files


def test_folder_classes_are_sorted_sub_folders(tmp_path):
    files = _class_folders(tmp_path)
    cfg = _config(name="folder", root=str(tmp_path), image_size=4, num_classes=3)
    source = get_source(cfg)
    assert source.class_names == ["cat", "dog", "emu"]
    by_path = {os.path.relpath(p, tmp_path): int(k) for p, k in zip(source.paths, source.labels,
                                                                     strict=True)}
    assert by_path == files
    assert check_labels(source, cfg) == 3
    for step in range(3):  # the label of each batch image is the class its value codes
        images = load_batch(source, cfg, 0, step, 4)
        classes = np.rint((images[:, 0, 0, 0] + 1) * 127.5 / 40).astype(int)
        np.testing.assert_array_equal(batch_labels(source, cfg, 0, 4)[step], classes)
    with pytest.raises(ValueError, match=r"^data.num_classes=4: the source 'folder:.*' has 3 "
                                         r"classes \(class names: cat, dog, emu\), not 4"):
        check_labels(source, _config(name="folder", root=str(tmp_path), num_classes=4))


def test_folder_without_num_classes_reads_no_classes(tmp_path):
    _class_folders(tmp_path)
    _write_png(tmp_path / "loose.png", 7)  # refused only with classes
    source = get_source(_config(name="folder", root=str(tmp_path), image_size=4))
    assert len(source) == 6 and source.labels is None and source.class_names is None


def test_folder_image_in_the_root_is_one_line(tmp_path):
    _class_folders(tmp_path)
    _write_png(tmp_path / "loose.png", 7)
    with pytest.raises(ValueError, match=r"^data.root='.*': 1 image\(s\) lie directly in the "
                                         r"root \(first: loose.png\)") as err:
        get_source(_config(name="folder", root=str(tmp_path), num_classes=3))
    assert "\n" not in str(err.value)


def test_folder_empty_class_folder_is_one_line(tmp_path):
    _class_folders(tmp_path)
    os.makedirs(tmp_path / "fox" / "sub")
    (tmp_path / "fox" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"^data.root='.*': class folder 'fox' holds no "
                                         r"\.png/\.jpg/\.jpeg files") as err:
        get_source(_config(name="folder", root=str(tmp_path), num_classes=4))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- TFDS (mock data, offline)


def _mock(n: int = 6):
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def _tfds_config(name: str, channels: int = 3, **overrides):
    return _config(name=f"tfds:{name}", image_size=16, channels=channels, **overrides)


@needs_tfds
def test_tfds_class_label_feature():
    cfg = _tfds_config("cifar10", num_classes=10)
    with _mock(8):
        source = get_source(cfg)
        assert source.class_names is not None and len(source.class_names) == 10
        labels = source.labels
        assert labels.dtype == np.int64 and labels.shape == (8,)
        expected = [int(source._random_access[i]["label"]) for i in range(8)]  # the records'
        np.testing.assert_array_equal(labels, expected)
        assert check_labels(source, cfg) == 10  # ClassLabel: 10, whatever labels occur
        with pytest.raises(ValueError, match=r"^data.num_classes=5: .* has 10 classes"):
            check_labels(source, _tfds_config("cifar10", num_classes=5))
        plain = get_source(_tfds_config("cifar10"))  # num_classes = 0: no labels
        assert plain.labels is None and plain.class_names is None


@needs_tfds
def test_tfds_labels_are_read_on_first_use_without_decoding_images(monkeypatch):
    calls = []
    data_source = tfds.data_source

    def counting(*args, **kwargs):
        calls.append(kwargs.get("decoders"))
        return data_source(*args, **kwargs)

    monkeypatch.setattr(tfds, "data_source", counting)
    with _mock(4):
        source = get_source(_tfds_config("cifar10", num_classes=10))
        assert calls == [None]  # the images' source only
        assert source.labels.shape == (4,)
        assert len(calls) == 2 and set(calls[1]) == {"image"}  # images left undecoded
        assert isinstance(calls[1]["image"], tfds.decode.SkipDecoding)


@needs_tfds
def test_tfds_without_the_label_feature_is_one_line():
    with _mock(4):
        with pytest.raises(ValueError, match=r"^data.label_key='label': tfds:celeb_a/train has "
                                             r"no such feature; features: attributes, identity, "
                                             "image, landmarks$") as err:
            get_source(_tfds_config("celeb_a", num_classes=2))
        assert "\n" not in str(err.value)
        with pytest.raises(ValueError, match=r"^data.label_key='id': tfds:cifar10/train "
                                             "feature is Text .*not a class label"):
            get_source(_tfds_config("cifar10", num_classes=10, label_key="id"))
        assert get_source(_tfds_config("celeb_a")).labels is None  # num_classes = 0: not read


@needs_tfds
def test_tfds_in_memory_copy_keeps_labels(monkeypatch):
    """A dataset prepared as TFRecord only is read into memory: the labels come with it."""
    def no_random_access(*args, **kwargs):
        raise NotImplementedError("Random access data source for file format tfrecord")

    monkeypatch.setattr(tfds, "data_source", no_random_access)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    cfg = _tfds_config("fashion_mnist", channels=1, num_classes=10)
    with _mock(5):
        source = get_source(cfg)
        assert source._images.shape == (5, 28, 28, 1)
        assert source.labels.shape == (5,) and source.labels.dtype == np.int64
        assert check_labels(source, cfg) == 10 and len(source.class_names) == 10


@needs_tfds
def test_fashion_mnist_tfds_fallback_has_labels(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "DEBIAN_ROOT", str(tmp_path / "absent"))
    cfg = _config(num_classes=10)
    with _mock(3):
        source = get_source(cfg)
        assert source.name == "tfds:fashion_mnist/train" and source.labels.shape == (3,)
        assert check_labels(source, cfg) == 10
        assert get_source(default_data_config()).labels is None
