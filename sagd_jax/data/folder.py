"""Every PNG / JPEG under ``data.root`` as an ``ImageSource`` (``data.name = "folder"``).

Files are found recursively and sorted by their path relative to the root, so example i is the
same file on every host. All images must be ``data.image_size`` x ``data.image_size`` and
8-bit grayscale (mode "L", ``data.channels = 1``) or RGB (mode "RGB", ``data.channels = 3``);
headers are checked when the source is built. Folders up to ``max_cache_bytes`` of pixels are
decoded once and held in memory, larger ones are decoded on every ``get``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import get_channels, get_image_size, get_root
from sagd_jax.data.sources import ImageSource, check_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}


def list_image_files(root: str) -> list[str]:
    """Sorted paths of all files under ``root`` whose extension is PNG / JPEG (any case)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return [os.path.join(root, rel) for rel in sorted(found)]


class FolderSource:
    """uint8 (N, S, S, C) images read with Pillow from ``paths`` (already sorted)."""

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int,
        max_cache_bytes: int = 1 << 30,
    ):
        from PIL import Image

        self._image_module = Image
        self.name = f"folder:{root}"
        self.image_shape = (image_size, image_size, channels)
        self.paths = list_image_files(root)
        if not self.paths:
            raise validate.fail("data.root", root, f"holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        mode = _MODES[channels]
        for path in self.paths:
            try:
                with Image.open(path) as img:
                    size, img_mode = img.size, img.mode
            except OSError as err:
                raise ValueError(f"{path}: not a readable image ({err})") from err
            if size != (image_size, image_size):
                raise ValueError(
                    f"{path}: image is {size[0]}x{size[1]} (W x H) but data.image_size={image_size}"
                )
            if img_mode != mode:
                raise ValueError(
                    f"{path}: image mode {img_mode!r} but data.channels={channels} "
                    f"needs mode {mode!r}"
                )
        self._cache: np.ndarray | None = None
        if len(self.paths) * int(np.prod(self.image_shape)) <= max_cache_bytes:
            self._cache = self._decode(np.arange(len(self.paths)))

    def _decode(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((idx.size, *self.image_shape), dtype=np.uint8)
        for j, i in enumerate(idx):
            with self._image_module.open(self.paths[i]) as img:
                pixels = np.asarray(img, dtype=np.uint8)
            out[j] = pixels.reshape(self.image_shape)
        return out

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: np.ndarray) -> np.ndarray:
        idx = check_indices(indices, len(self))
        return self._cache[idx] if self._cache is not None else self._decode(idx)

    def __repr__(self) -> str:
        return f"FolderSource({self.name!r}, n={len(self)}, shape={self.image_shape})"


def make_folder(data_config: Any) -> ImageSource:
    """Factory for ``data.name = "folder"`` (keys: root, image_size, channels)."""
    root = get_root(data_config)
    if not root or not os.path.isdir(root):
        raise validate.fail("data.root", root, "the folder source needs an existing folder")
    return FolderSource(root, get_image_size(data_config), get_channels(data_config))
