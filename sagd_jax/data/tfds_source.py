"""Any TensorFlow Datasets image dataset as an ``ImageSource`` (``data.name = "tfds:NAME"``).

Random access goes through ``tfds.data_source`` (ArrayRecord files, nothing held in memory).
Datasets prepared in a format without random access are read once with ``tfds.load`` and kept
in memory. Nothing is downloaded unless ``data.download`` is True. TensorFlow is imported only
when a TFDS source is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import check_image_shape, entry, get_root
from sagd_jax.data.sources import TFDS_PREFIX, ImageSource, as_nhwc_uint8, check_indices


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class TfdsSource:
    """Images of one TFDS split, feature ``image_key``, as uint8 (N, H, W, C).

    All images must share one shape (H, W, C); a 2-D image feature gets C = 1.
    """

    def __init__(
        self,
        dataset: str,
        split: str,
        image_key: str = "image",
        data_dir: str | None = None,
        download: bool = False,
    ):
        import tensorflow_datasets as tfds

        self.name = f"{TFDS_PREFIX}{dataset}/{split}"
        self.image_key = image_key
        self._images: np.ndarray | None = None
        self._random_access: Any = None
        self._batched_reads = True
        kwargs = {"split": split, "data_dir": data_dir, "download": download}
        try:
            self._random_access = tfds.data_source(dataset, **kwargs)
        except Exception as access_err:  # any failure: try the tf.data path
            try:
                self._images = self._load_into_memory(tfds, dataset, kwargs)
            except Exception as load_err:
                raise ValueError(
                    f"data.name='{TFDS_PREFIX}{dataset}': cannot open split {split!r} "
                    f"(tfds.data_source: {_first_line(access_err)}; "
                    f"tfds.load: {_first_line(load_err)}); prepare it with `tfds build {dataset}` "
                    "or set data.download=True"
                ) from load_err
        if len(self) == 0:
            raise ValueError(f"{self.name}: the split is empty")
        first = self._read(np.zeros(1, dtype=np.int64))
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in first.shape[1:])

    def _load_into_memory(self, tfds: Any, dataset: str, kwargs: dict[str, Any]) -> np.ndarray:
        ds = tfds.load(dataset, shuffle_files=False, **kwargs)
        chunks = [
            as_nhwc_uint8(np.asarray(batch[self.image_key]), self.name)
            for batch in tfds.as_numpy(
                ds.map(lambda ex: {self.image_key: ex[self.image_key]}).batch(1024)
            )
        ]
        if not chunks:
            return np.zeros((0, 1, 1, 1), dtype=np.uint8)
        return np.concatenate(chunks)

    def __len__(self) -> int:
        if self._images is not None:
            return int(self._images.shape[0])
        return len(self._random_access)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if self._images is not None:
            return self._images[idx]
        keys = [int(i) for i in idx]
        records = None
        if self._batched_reads:
            try:
                records = self._random_access.__getitems__(keys)
            except (AttributeError, TypeError):  # source without working batched reads
                self._batched_reads = False
        if records is None:
            records = [self._random_access[k] for k in keys]
        images = []
        for key, record in zip(keys, records, strict=True):
            if self.image_key not in record:
                raise ValueError(
                    f"data.image_key={self.image_key!r}: {self.name} has no such feature; "
                    f"features: {', '.join(sorted(record))}"
                )
            image = np.asarray(record[self.image_key])
            if image.ndim == 2:
                image = image[..., None]
            if image.dtype != np.uint8 or image.ndim != 3:
                raise ValueError(
                    f"{self.name}[{key}]: {self.image_key!r} is {image.dtype} {image.shape}, "
                    "expected uint8 (H, W, C)"
                )
            if images and image.shape != images[0].shape:
                raise ValueError(
                    f"{self.name}[{key}]: image shape {image.shape} differs from "
                    f"{images[0].shape}; variable-size datasets are not supported"
                )
            images.append(image)
        return np.stack(images) if images else np.zeros((0, 1, 1, 1), np.uint8)

    def get(self, indices: np.ndarray) -> np.ndarray:
        idx = check_indices(indices, len(self))
        if idx.size == 0:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        images = self._read(idx)
        if images.shape[1:] != self.image_shape:
            raise ValueError(
                f"{self.name}: image shape {images.shape[1:]} differs from {self.image_shape}; "
                "variable-size datasets are not supported"
            )
        return images

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, n={len(self)}, shape={self.image_shape})"


def make_tfds(data_config: Any) -> ImageSource:
    """Factory for ``data.name = "tfds:NAME"``.

    Keys: split, image_key, root (TFDS data_dir; "" = TFDS default), download,
    image_size, channels (must match the dataset's images).
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
    )
    check_image_shape(data_config, source.image_shape, source.name)
    return source
