"""Any TensorFlow Datasets image dataset as an ``ImageSource`` (``data.name = "tfds:NAME"``).

Random access goes through ``tfds.data_source`` (ArrayRecord files, read one record at a time:
nothing held in memory), for datasets of one image size and of varying sizes alike. A dataset
prepared only as TFRecord (``tfds build``'s default format) has no random access: one whose
images share a size (its image feature's shape is fully defined, e.g. ``cifar10``) is read
once with ``tfds.load`` and kept in memory, up to ``IN_MEMORY_LIMIT`` bytes; any other must be
rebuilt as ArrayRecord. Nothing is downloaded unless ``data.download`` is True (then prepared
as ArrayRecord). TensorFlow is imported only when a TFDS source is built.

With ``data.num_classes > 0`` the source also has ``labels`` (int64 ``(N,)``) from the feature
``data.label_key`` (checked when the source is built; read on first use, ``check_labels``:
every record once, its images left undecoded), and ``class_names`` from the feature's info
when it is a ``ClassLabel``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from sagd_jax import console, validate
from sagd_jax.data.config import (
    entry,
    get_channels,
    get_label_key,
    get_num_classes,
    get_root,
)
from sagd_jax.data.sources import (
    TFDS_PREFIX,
    ImageSource,
    as_labels,
    as_nhwc_uint8,
    check_indices,
)

IN_MEMORY_LIMIT = 4 * 2**30  # bytes of uint8 pixels the TFRecord fallback may hold


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _not_variant_folder_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Variant folder ")


@contextlib.contextmanager
def _absl_quiet(enabled: bool) -> Iterator[None]:
    """Hold back TFDS's ``Variant folder ... has no dataset_info.json`` warnings while a
    dataset is opened: the one-line error of a dataset that is not prepared says it."""
    logger = logging.getLogger("absl")
    if enabled:
        logger.addFilter(_not_variant_folder_warning)
    try:
        yield
    finally:
        logger.removeFilter(_not_variant_folder_warning)


def _file_formats(builder: Any) -> set[str] | None:
    """The file formats a prepared dataset is stored in (None: unknown)."""
    try:
        return {str(getattr(f, "value", f)) for f in builder.info.available_file_formats()}
    except Exception:  # noqa: BLE001 - an older tfds: no way to tell
        return None


def _random_access_formats() -> set[str]:
    from tensorflow_datasets.core import file_adapters

    return {str(f.value) for f in file_adapters.FileFormat.with_random_access()}


def _num_examples(builder: Any, split: str) -> int:
    """Examples in ``split`` by the dataset info (0 when it cannot tell)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except Exception:  # noqa: BLE001 - an unusual split string: tfds.load will judge it
        return 0


def build_command(dataset: str, data_dir: str | None) -> str:
    """The ``tfds build`` command that prepares ``dataset`` for random access."""
    where = f" --data_dir={data_dir}" if data_dir else ""
    return f"tfds build {dataset} --file_format=array_record{where}"


class TfdsSource:
    """Images of one TFDS split, feature ``image_key``, as uint8 ``(h, w, C)`` (a 2-D image
    feature gets C = 1).

    ``image_shape``: the feature's ``(H, W, C)`` when the dataset info fixes it (e.g. cifar10's
    (32, 32, 3), celeb_a's (218, 178, 3)), else None (sizes vary: lsun, imagenet2012);
    ``channels``: C when the info fixes it, else None.

    ``label_key``: a feature holding each example's class (a ``ClassLabel`` or a scalar
    integer); then ``labels`` is int64 ``(N,)`` and ``class_names`` the ClassLabel's names
    (None for a plain integer feature). None (the default): no labels (both None).
    """

    def __init__(
        self,
        dataset: str,
        split: str,
        image_key: str = "image",
        data_dir: str | None = None,
        download: bool = False,
        label_key: str | None = None,
    ):
        tfds = console.import_quietly("tensorflow_datasets")
        self.dataset = dataset
        self.name = f"{TFDS_PREFIX}{dataset}/{split}"
        self.image_key = image_key
        self.label_key = label_key
        self._labels: np.ndarray | None = None
        self.class_names: list[str] | None = None
        self._images: np.ndarray | None = None
        self._memory_labels: np.ndarray | None = None
        self._random_access: Any = None
        self._batched_reads = True
        # tfds prepares TFRecord files when data_dir is given, unless told the format.
        builder_kwargs = {"file_format": "array_record"} if download else None
        with _absl_quiet(not download):
            try:
                self._random_access = tfds.data_source(
                    dataset, split=split, data_dir=data_dir, download=download,
                    builder_kwargs=builder_kwargs)
                features = self._random_access.dataset_info.features
            except Exception as access_err:  # noqa: BLE001 - any failure: find out why
                features = self._open_without_random_access(tfds, split, data_dir, download,
                                                            access_err)
        shape = self._feature_shape(features)
        self.channels: int | None = shape[2]
        self.image_shape: tuple[int, int, int] | None = (
            None if None in shape else (int(shape[0]), int(shape[1]), int(shape[2])))
        if len(self) == 0:
            raise ValueError(f"{self.name}: the split is empty")
        if label_key is not None:
            self.class_names = self._label_feature(features)
            self._label_reader = (tfds, split, data_dir, builder_kwargs, features)

    @property
    def labels(self) -> np.ndarray | None:
        """int64 ``(N,)`` classes of the examples (None without ``label_key``); read on first
        use (every record once, images undecoded; the in-memory copy has them already)."""
        if self.label_key is None:
            return None
        if self._labels is None:
            labels = self._memory_labels
            if labels is None:
                labels = self._read_labels(*self._label_reader)
            self._labels = as_labels(labels, len(self), self.name)
        return self._labels

    def _label_feature(self, features: Any) -> list[str] | None:
        """The class names of the label feature ``label_key`` (None: a plain integer
        feature, or a ClassLabel without names); one-line ``ValueError`` naming
        ``data.label_key`` for a missing or non-integer feature."""
        if self.label_key not in features:
            raise validate.fail("data.label_key", self.label_key,
                                f"{self.name} has no such feature; features: "
                                f"{', '.join(sorted(features.keys()))}")
        feature = features[self.label_key]
        if getattr(feature, "num_classes", None) is not None and hasattr(feature, "names"):
            return [str(n) for n in feature.names]  # a ClassLabel
        shape = tuple(getattr(feature, "shape", (None,)) or ())
        dtype = np.dtype(getattr(feature, "np_dtype", np.object_))
        if shape != () or not np.issubdtype(dtype, np.integer):
            raise validate.fail("data.label_key", self.label_key,
                                f"{self.name} feature is {type(feature).__name__} "
                                f"{dtype.name} {shape}, not a class label (a ClassLabel or "
                                "scalar integer)")
        return None

    def _label(self, key: int, record: Any) -> int:
        value = np.asarray(record[self.label_key])
        if value.shape != () or not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"{self.name}[{key}]: {self.label_key!r} is {value.dtype} "
                             f"{value.shape}, expected one integer class label")
        return int(value)

    def _read_labels(self, tfds: Any, split: str, data_dir: str | None,
                     builder_kwargs: dict[str, Any] | None, features: Any,
                     chunk: int = 4096) -> np.ndarray:
        """int64 ``(N,)``: ``label_key`` of every record, read through a second random-access
        source that leaves the image features undecoded."""
        image_type = tfds.features.Image
        skip = {key: tfds.decode.SkipDecoding() for key in features.keys()
                if key != self.label_key and isinstance(features[key], image_type)}
        skip[self.image_key] = tfds.decode.SkipDecoding()
        with _absl_quiet(True):
            records = tfds.data_source(self.dataset, split=split, data_dir=data_dir,
                                       download=False, builder_kwargs=builder_kwargs,
                                       decoders=skip)
        labels = np.empty(len(self), dtype=np.int64)
        batched = True
        for start in range(0, len(self), chunk):
            keys = list(range(start, min(start + chunk, len(self))))
            chunk_records = None
            if batched:
                try:
                    chunk_records = records.__getitems__(keys)
                except (AttributeError, TypeError):  # source without working batched reads
                    batched = False
            if chunk_records is None:
                chunk_records = [records[k] for k in keys]
            labels[start:start + len(keys)] = [self._label(k, r)
                                               for k, r in zip(keys, chunk_records, strict=True)]
        return labels

    def _feature_shape(self, features: Any) -> tuple[int | None, int | None, int | None]:
        """The image feature's ``(H, W, C)`` (None where it varies); one-line ``ValueError``
        for an unknown or non-image ``data.image_key``."""
        if self.image_key not in features:
            raise validate.fail("data.image_key", self.image_key,
                                f"{self.name} has no such feature; features: "
                                f"{', '.join(sorted(features.keys()))}")
        feature = features[self.image_key]
        shape = tuple(getattr(feature, "shape", ()) or ())
        dtype = np.dtype(getattr(feature, "np_dtype", np.uint8))
        if dtype != np.uint8 or len(shape) not in (2, 3):
            raise validate.fail("data.image_key", self.image_key,
                                f"{self.name} feature is {dtype.name} {shape}, not a uint8 "
                                "image (H, W[, C])")
        return shape if len(shape) == 3 else (*shape, 1)

    def _open_without_random_access(self, tfds: Any, split: str, data_dir: str | None,
                                    download: bool, access_err: BaseException) -> Any:
        """``tfds.data_source`` failed: a one-line ``ValueError`` saying why (not prepared,
        no such dataset, ...), or the in-memory copy of a fixed-size TFRecord dataset."""
        prefix = f"data.name='{TFDS_PREFIX}{self.dataset}'"
        command = build_command(self.dataset, data_dir)
        try:
            builder = tfds.builder(self.dataset, data_dir=data_dir)
            prepared = builder.is_prepared()
        except Exception as err:  # noqa: BLE001 - unknown dataset, bad config name, ...
            raise ValueError(f"{prefix}: {_first_line(err)}") from None
        if not prepared:
            if download:
                raise ValueError(f"{prefix}: download and preparation failed "
                                 f"({_first_line(access_err)}); prepare it with `{command}`")
            raise ValueError(f"{prefix}: not prepared (nothing at {builder.data_dir}); run "
                             f"`{command}` or set data.download=True")
        features = builder.info.features
        shape = self._feature_shape(features)
        if self.label_key is not None:
            self._label_feature(features)  # checked before the dataset is read
        formats = _file_formats(builder)
        if formats is None or formats & _random_access_formats():
            raise ValueError(f"{prefix}: {_first_line(access_err)}")  # not the format
        fix = f"rebuild it with `{command}`"
        what = f"prepared as {'/'.join(sorted(formats))} (no random access)"
        if None in shape:
            raise ValueError(f"{prefix}: {what} and its images vary in size, so it cannot "
                             f"be held in memory; {fix}")
        size = _num_examples(builder, split) * int(np.prod(shape))
        if size > IN_MEMORY_LIMIT:
            raise ValueError(f"{prefix}: {what}; split {split!r} would take "
                             f"{size / 2**30:.2f} GiB in memory (limit "
                             f"{IN_MEMORY_LIMIT / 2**30:.2f} GiB); {fix}")
        try:
            self._images, self._memory_labels = self._load_into_memory(tfds, split, data_dir,
                                                                       download)
        except Exception as load_err:  # noqa: BLE001 - report both attempts, one line
            raise ValueError(
                f"{prefix}: cannot open split {split!r} (tfds.data_source: "
                f"{_first_line(access_err)}; tfds.load: {_first_line(load_err)}); "
                f"prepare it with `{command}` or set data.download=True") from None
        return features

    def _load_into_memory(self, tfds: Any, split: str, data_dir: str | None,
                          download: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 ``(N, H, W, C)`` images and (with ``label_key``) their ``(N,)`` labels."""
        ds = tfds.load(self.dataset, split=split, data_dir=data_dir, download=download,
                       shuffle_files=False)
        keys = [self.image_key] + ([self.label_key] if self.label_key is not None else [])
        chunks, label_chunks = [], []
        for batch in tfds.as_numpy(ds.map(lambda ex: {k: ex[k] for k in keys}).batch(1024)):
            chunks.append(as_nhwc_uint8(np.asarray(batch[self.image_key]), self.name))
            if self.label_key is not None:
                label_chunks.append(np.asarray(batch[self.label_key]))
        if not chunks:
            return np.zeros((0, 1, 1, 1), dtype=np.uint8), None
        return (np.concatenate(chunks),
                np.concatenate(label_chunks) if self.label_key is not None else None)

    def __len__(self) -> int:
        if self._images is not None:
            return int(self._images.shape[0])
        return len(self._random_access)

    def _image(self, key: int, record: Any) -> np.ndarray:
        image = np.asarray(record[self.image_key])
        if image.ndim == 2:
            image = image[..., None]
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"{self.name}[{key}]: {self.image_key!r} is {image.dtype} "
                             f"{image.shape}, expected uint8 (H, W, C)")
        return image

    def read(self, index: int) -> np.ndarray:
        """Example ``index`` as uint8 ``(h, w, C)`` (one record read)."""
        index = int(check_indices(np.array([index]), len(self))[0])
        if self._images is not None:
            return self._images[index]
        return self._image(index, self._random_access[index])

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(len(indices), H, W, C)``; datasets of one image size only."""
        idx = check_indices(indices, len(self))
        if self.image_shape is None:
            raise ValueError(f"{self.name}: images vary in size; read them one at a time "
                             "with read(i)")
        if self._images is not None:
            return self._images[idx]
        if idx.size == 0:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        keys = [int(i) for i in idx]
        records = None
        if self._batched_reads:
            try:
                records = self._random_access.__getitems__(keys)
            except (AttributeError, TypeError):  # source without working batched reads
                self._batched_reads = False
        if records is None:
            records = [self._random_access[k] for k in keys]
        images = [self._image(k, r) for k, r in zip(keys, records, strict=True)]
        for key, image in zip(keys, images, strict=True):
            if image.shape != self.image_shape:
                raise ValueError(f"{self.name}[{key}]: image shape {image.shape} differs from "
                                 f"the dataset's {self.image_shape}")
        return np.stack(images)

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, n={len(self)}, shape={self.image_shape})"


def make_tfds(data_config: Any) -> ImageSource:
    """Factory for ``data.name = "tfds:NAME"``.

    Keys: split, image_key, root (TFDS data_dir; "" = TFDS default), download, channels
    (must match the dataset's images where its info fixes their channels), num_classes and
    label_key (num_classes > 0: the labels are read from the feature label_key). Any image
    size: the pipeline resizes and crops to ``data.image_size``.
    """
    name = validate.text(*entry(data_config, "name"))
    dataset = name[len(TFDS_PREFIX) :]
    if not dataset:
        raise validate.fail("data.name", name, "expected 'tfds:NAME'")
    source = TfdsSource(
        dataset,
        validate.text(*entry(data_config, "split")),
        image_key=validate.text(*entry(data_config, "image_key")),
        data_dir=get_root(data_config) or None,
        download=validate.boolean(*entry(data_config, "download")),
        label_key=get_label_key(data_config) if get_num_classes(data_config) > 0 else None,
    )
    channels = get_channels(data_config)
    if source.channels is not None and source.channels != channels:
        raise validate.fail("data.channels", channels,
                            f"{source.name} has {source.channels}-channel images")
    return source
