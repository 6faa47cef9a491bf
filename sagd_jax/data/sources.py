"""The ``ImageSource`` interface and the registry that maps ``data.name`` to a source.

A source is a fixed, random-access list of images, always the same pixels for the same index:
uint8 ``(h, w, C)`` images (or float32 ones already in model units, for synthetic data such as
``grf``), of one shape (``image_shape``) or of varying sizes (``image_shape = None``, read one
at a time with ``read(i)``). Shuffling, resizing and cropping, scaling to [-1, 1] and
corruption live in ``sagd_jax.data.pipeline``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import get_num_classes, read

TFDS_PREFIX = "tfds:"


@runtime_checkable
class ImageSource(Protocol):
    """Random-access image dataset.

    name:        identifier, e.g. "fashion_mnist/train".
    image_shape: (H, W, C) of every image, in pixels / channels; None when sizes vary.
    len(source): number of examples N; valid indices are 0 .. N - 1.
    get(idx):    uint8 array (len(idx), H, W, C) for a 1-D integer array ``idx`` (float32 in
                 model units for synthetic sources, which the pipeline does not rescale);
                 sources of varying sizes need not have it.
    read(i):     optional: one image (h, w, C); ``read_image`` falls back to ``get``.

    Optional attributes of a labelled source (read with ``getattr(source, "labels", None)``:
    an unlabelled source has neither, or has them set to None; ``check_labels`` checks them
    against ``data.num_classes``):

    labels:      int64 array (N,): the class of each example, in [0, K); None: no labels.
    class_names: K strings, the name of each class (index = label); None: unnamed (K is
                 then the largest label + 1).

    The factories read labels only when ``data.num_classes > 0``.
    """

    name: str
    image_shape: tuple[int, int, int] | None

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> np.ndarray: ...


def check_indices(indices: Any, num_examples: int) -> np.ndarray:
    """``indices`` as a 1-D int64 array, checked to lie in [0, num_examples)."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_examples):
        raise ValueError(f"indices must lie in [0, {num_examples}), got [{idx.min()}, {idx.max()}]")
    return idx


def read_image(source: ImageSource, index: int) -> np.ndarray:
    """Example ``index`` of ``source`` as one ``(h, w, C)`` array (``read``, else ``get``)."""
    read = getattr(source, "read", None)
    if read is not None:
        return read(index)
    return source.get(np.array([index], dtype=np.int64))[0]


def as_nhwc_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """Check a uint8 (N, H, W) or (N, H, W, C) array and return it as NHWC."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{what}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{what}: images must be (N, H, W[, C]), got shape {images.shape}")
    return images


def as_labels(labels: Any, num_examples: int, what: str) -> np.ndarray:
    """Class labels checked to be one integer per example: read-only int64 ``(N,)`` (their
    range is ``check_labels``'s business)."""
    array = np.asarray(labels)
    integral = np.issubdtype(array.dtype, np.integer) or (array.size == 0 and array.ndim == 1)
    if array.ndim != 1 or array.shape[0] != num_examples or not integral:
        raise ValueError(f"{what}: labels must be an integer array ({num_examples},), one per "
                         f"example, got {array.dtype} {array.shape}")
    array = array.astype(np.int64)  # a copy: the caller's array stays writable and its own
    array.setflags(write=False)
    return array


def as_class_names(class_names: Any, what: str) -> list[str] | None:
    """``class_names`` as a list of strings (None stays None)."""
    if class_names is None:
        return None
    ok = not isinstance(class_names, str | bytes) and hasattr(class_names, "__len__")
    names = list(class_names) if ok else []
    if not ok or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what}: class_names must be a list of strings, got "
                         f"{class_names!r:.80}")
    return names


class ArraySource:
    """An in-memory ``ImageSource`` over a uint8 array of shape (N, H, W[, C]).

    ``labels``: optional integer ``(N,)`` class of each image (kept as int64);
    ``class_names``: optional names of the classes (only with labels).
    """

    def __init__(self, name: str, images: np.ndarray, labels: Any = None,
                 class_names: Any = None):
        self.name = name
        self.images = as_nhwc_uint8(images, name)
        h, w, c = self.images.shape[1:]
        self.image_shape = (int(h), int(w), int(c))
        if labels is None and class_names is not None:
            raise ValueError(f"{name}: class_names without labels")
        self.labels: np.ndarray | None = (
            None if labels is None else as_labels(labels, len(self), name))
        self.class_names: list[str] | None = as_class_names(class_names, name)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.images[check_indices(indices, len(self))]

    def __repr__(self) -> str:
        labelled = "" if self.labels is None else ", labelled"
        return f"ArraySource({self.name!r}, n={len(self)}, shape={self.image_shape}{labelled})"


def check_labels(source: ImageSource, data_config: Any) -> int:
    """The number of classes K of the run, checked against ``source``'s labels, in one line
    naming ``data.num_classes`` before anything expensive starts.

    ``data.num_classes == 0``: returns 0 and reads nothing (``source.labels`` untouched).
    ``data.num_classes = K > 0``: ``source.labels`` must be an integer ``(N,)`` array with
    values in [0, K), and the source's class count (``len(source.class_names)``, else the
    largest label + 1) must be K; returns K.
    """
    num_classes = get_num_classes(data_config)
    if num_classes == 0:
        return 0
    key, name = f"data.num_classes={num_classes}", getattr(source, "name", repr(source))
    labels = getattr(source, "labels", None)
    if labels is None:
        raise ValueError(
            f"{key}: the source {name!r} has no labels (set data.num_classes=0 for "
            "unconditional training; labelled sources: fashion_mnist, tfds:NAME with a "
            "class-label feature data.label_key, folder with one sub-folder per class)")
    labels = as_labels(labels, len(source), f"{key}: the source {name!r}")
    if labels.size == 0:
        raise ValueError(f"{key}: the source {name!r} has no examples")
    lo, hi = int(labels.min()), int(labels.max())
    outside = (f"{key}: the labels of {name!r} lie in [{lo}, {hi}], outside "
               f"[0, {num_classes})")
    if lo < 0:
        raise ValueError(outside)
    class_names = getattr(source, "class_names", None)
    if class_names is not None:
        count = len(class_names)
        shown = ", ".join(map(str, list(class_names)[:5])) + (", ..." if count > 5 else "")
        how = f"class names: {shown}"
    else:
        count, how = hi + 1, f"labels 0 .. {hi}"
    if count != num_classes:
        raise ValueError(f"{key}: the source {name!r} has {count} classes ({how}), not "
                         f"{num_classes}")
    if hi >= num_classes:
        raise ValueError(outside)
    return num_classes


SourceFactory = Callable[[Any], ImageSource]
_REGISTRY: dict[str, SourceFactory] = {}


def register_source(name: str, factory: SourceFactory, *, overwrite: bool = False) -> None:
    """Make ``data.name == name`` build its source with ``factory(data_config)``.

    The factory receives the full ``data`` ConfigDict and must validate the keys it reads with
    ``sagd_jax.validate`` under their full key (``validate.integer(*entry(cfg, "seed"), 0)``,
    ``entry`` from ``sagd_jax.data.config``), so errors name the key. Registering the name
    "tfds" serves every ``data.name`` of the form "tfds:NAME".
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise validate.fail("name", name, "a source name must be a non-empty string without ':'")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"source {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[name] = factory


def known_sources() -> list[str]:
    """Sorted names accepted by ``get_source`` ("tfds" shown as "tfds:NAME")."""
    return sorted(f"{TFDS_PREFIX}NAME" if n == "tfds" else n for n in _REGISTRY)


def get_source(data_config: Any) -> ImageSource:
    """Build the source named by ``data_config.name`` (a full ``data`` section)."""
    name = read(data_config, "name")
    key = name
    if isinstance(name, str) and name.startswith(TFDS_PREFIX):
        key = "tfds" if name[len(TFDS_PREFIX) :] else None
    if not isinstance(key, str) or key not in _REGISTRY:
        raise validate.fail("data.name", name,
                            f"unknown source; known: {', '.join(known_sources())}")
    return _REGISTRY[key](data_config)
