"""Fashion-MNIST images (28x28x1 uint8) from IDX files, with a TFDS fallback.

Debian's package ``dataset-fashion-mnist`` installs gzipped IDX files in
``/usr/share/datasets/fashion-mnist``; ``data.root`` may name another folder holding them
(plain or ``.gz``). Labels (``train-labels-idx1-ubyte``, ``t10k-labels-idx1-ubyte``, 10
classes, ``CLASS_NAMES``) are read only when ``data.num_classes > 0``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import entry, get_num_classes, get_root
from sagd_jax.data.sources import ArraySource, ImageSource
from sagd_jax.errors import one_line

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
SPLIT_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")  # label i is CLASS_NAMES[i]

# IDX element type code -> numpy dtype (big-endian where it matters).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, what: str = "IDX data") -> np.ndarray:
    """Decode the bytes of an IDX file into an array of its stored shape.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions d, then d
    big-endian uint32 sizes, then the elements in C order, big-endian. The result has native
    byte order.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{what}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{what}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{what}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{what}: IDX header announces shape {shape} ({expected} bytes) "
            f"but {len(data) - header} bytes follow"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file, gzipped or not (detected from its first bytes); a damaged gzip file
    (truncated, altered) raises a one-line ``ValueError`` naming ``path``."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: damaged gzip file ({one_line(err)}); replace it with "
                             "a good copy") from None
    return parse_idx(data, what=path)


def find_idx_file(root: str, stem: str) -> str | None:
    """Path of ``root/stem`` or ``root/stem.gz``, whichever exists first, else None."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def load_fashion_mnist_images(root: str, split: str) -> np.ndarray:
    """uint8 (N, 28, 28, 1) images of ``split`` from the IDX files in ``root``."""
    path = find_idx_file(root, SPLIT_FILES[split])
    if path is None:
        raise FileNotFoundError(f"no {SPLIT_FILES[split]}[.gz] in {root}")
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{path}: expected uint8 (N, H, W) images, got {images.dtype} {images.shape}"
        )
    return images[..., None]


def load_fashion_mnist_labels(root: str, split: str, num_images: int | None = None
                              ) -> np.ndarray:
    """int64 labels ``(N,)`` of ``split``, in [0, 10), from the IDX label file in ``root``; a
    missing, damaged or inconsistent file (``num_images`` labels expected) is a one-line
    ``ValueError`` naming it."""
    path = find_idx_file(root, LABEL_FILES[split])
    if path is None:
        raise ValueError(f"{os.path.join(root, LABEL_FILES[split])}[.gz]: missing; the labels "
                         f"of fashion_mnist/{split} (data.num_classes > 0) are read from it")
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{path}: expected uint8 (N,) labels, got {labels.dtype} "
                         f"{labels.shape}; replace it with a good copy")
    if num_images is not None and labels.shape[0] != num_images:
        raise ValueError(f"{path}: {labels.shape[0]} labels for {num_images} images; "
                         "replace it with a good copy")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{path}: label {int(labels.max())} outside [0, "
                         f"{len(CLASS_NAMES)}); replace it with a good copy")
    return labels.astype(np.int64)


def load_labeled_fashion_mnist(split: str, root: str | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 28, 28, 1)`` and int32 labels ``(N,)`` of ``split``, from the IDX
    files in ``root`` (default: Debian's), else from TensorFlow Datasets (no download)."""
    root = root or DEBIAN_ROOT
    label_path = find_idx_file(root, LABEL_FILES[split])
    if label_path is not None and find_idx_file(root, SPLIT_FILES[split]) is not None:
        images = load_fashion_mnist_images(root, split)
        return images, load_fashion_mnist_labels(root, split, len(images)).astype(np.int32)
    import tensorflow_datasets as tfds

    try:
        data = tfds.as_numpy(tfds.load("fashion_mnist", split=split, batch_size=-1,
                                       download=False))
    except Exception as err:  # noqa: BLE001  (TFDS raises many kinds; one line for the user)
        raise FileNotFoundError(
            f"fashion_mnist/{split}: no IDX files in {root} and no prepared TFDS copy "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return data["image"].astype(np.uint8), data["label"].astype(np.int32)


def make_fashion_mnist(data_config: Any) -> ImageSource:
    """Factory for ``data.name = "fashion_mnist"`` (keys: split, root, image_size, channels,
    num_classes: > 0 reads the labels too, with ``CLASS_NAMES``)."""
    split = validate.one_of(*entry(data_config, "split"), tuple(SPLIT_FILES))
    labelled = get_num_classes(data_config) > 0
    root = get_root(data_config)
    if root:
        if not os.path.isdir(root):
            raise validate.fail("data.root", root, "not a folder")
        if find_idx_file(root, SPLIT_FILES[split]) is None:
            raise validate.fail("data.root", root, f"holds no {SPLIT_FILES[split]}[.gz]")
    elif find_idx_file(DEBIAN_ROOT, SPLIT_FILES[split]) is not None:
        root = DEBIAN_ROOT
    if root:
        if labelled and find_idx_file(root, LABEL_FILES[split]) is None:
            load_fashion_mnist_labels(root, split)  # the one line naming the missing file
        images = load_fashion_mnist_images(root, split)
        labels = load_fashion_mnist_labels(root, split, len(images)) if labelled else None
        source: ImageSource = ArraySource(f"fashion_mnist/{split}", images, labels,
                                          CLASS_NAMES if labelled else None)
    else:  # No local files: fall back to TensorFlow Datasets.
        from sagd_jax.data.tfds_source import TfdsSource

        download = validate.boolean(*entry(data_config, "download"))
        source = TfdsSource("fashion_mnist", split, download=download,
                            label_key="label" if labelled else None)
    return source
