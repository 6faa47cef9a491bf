"""Every PNG / JPEG under ``data.root`` as an ``ImageSource`` (``data.name = "folder"``).

Files are found recursively and sorted by their path relative to the root, so example i is the
same file on every host. Images may have any size and aspect ratio (the pipeline resizes and
crops them, ``sagd_jax.data.preprocess``); each is converted to grayscale (Pillow mode "L",
``data.channels = 1``) or RGB ("RGB", ``data.channels = 3``) when decoded. Every file's header
is read when the source is built (an unreadable file is named then, before training starts);
pixels are decoded one image at a time by ``read(i)``, in the pipeline's worker threads.

With ``data.num_classes > 0`` the folder is read by the ImageFolder convention: each immediate
sub-folder of the root is a class (classes in sorted order of the sub-folder names:
``class_names``), and each image's label is the class folder it lies under (images found
recursively below it). An image directly in the root, or a class folder without images, is a
one-line ``ValueError`` naming it, before any image header is read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import get_channels, get_num_classes, get_root
from sagd_jax.data.sources import ImageSource, as_labels, check_indices
from sagd_jax.images import IMAGE_EXTENSIONS

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


def class_folders(root: str, paths: list[str]) -> tuple[list[str], np.ndarray]:
    """The ImageFolder convention: the sorted names of the immediate sub-folders of ``root``
    (the classes) and int64 ``(len(paths),)`` labels, the class folder each path lies under.
    One-line ``ValueError`` naming ``data.root`` for an image directly in the root or a class
    folder holding no image (``paths``: the images below ``root``, not empty)."""
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.is_dir())
    kinds = "/".join(IMAGE_EXTENSIONS)
    loose = [p for p in paths if os.path.dirname(os.path.relpath(p, root)) == ""]
    if loose:
        raise validate.fail("data.root", root,
                            f"{len(loose)} image(s) lie directly in the root (first: "
                            f"{os.path.basename(loose[0])}); with data.num_classes > 0 each "
                            "image must lie in a class sub-folder (root/CLASS/...)")
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[os.path.relpath(p, root).split(os.sep, 1)[0]] for p in paths],
                      dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise validate.fail("data.root", root,
                            f"class folder {empty[0]!r} holds no {kinds} files"
                            + (f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else "")
                            + "; with data.num_classes > 0 each sub-folder is a class")
    return names, labels


class FolderSource:
    """uint8 ``(h, w, C)`` images of any size, read with Pillow from the files under ``root``.

    ``image_shape``: ``(H, W, C)`` when every image has the same size, else ``None``;
    ``smallest``: ``(path, (h, w, C))`` of the image with the shortest side.

    ``labelled``: one class per immediate sub-folder (``class_folders``): ``labels`` int64
    ``(N,)`` of each path's class, ``class_names`` the sorted sub-folder names; otherwise
    both None.
    """

    def __init__(self, root: str, channels: int, labelled: bool = False):
        from PIL import Image

        self._image_module = Image
        self.name = f"folder:{root}"
        self.channels = channels
        self.mode = _MODES[channels]
        self.paths = list_image_files(root)
        if not self.paths:
            raise validate.fail("data.root", root,
                                f"holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        self.labels: np.ndarray | None = None
        self.class_names: list[str] | None = None
        if labelled:
            self.class_names, labels = class_folders(root, self.paths)
            self.labels = as_labels(labels, len(self.paths), self.name)
        sizes = {}
        for path in self.paths:
            try:
                with Image.open(path) as img:
                    sizes[path] = img.size
            except OSError as err:
                raise ValueError(f"{path}: not a readable image ({err})") from None
        smallest = min(self.paths, key=lambda p: min(sizes[p]))
        width, height = sizes[smallest]
        # the image with the shortest side, for checking data.image_size before training
        self.smallest = (smallest, (height, width, channels))
        self.image_shape = (height, width, channels) if len(set(sizes.values())) == 1 else None

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 ``(h, w, C)``; a file that fails to decode is named."""
        path = self.paths[int(check_indices([index], len(self))[0])]
        try:
            with self._image_module.open(path) as img:
                pixels = np.asarray(img.convert(self.mode), dtype=np.uint8)
        except OSError as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        return pixels[..., None] if self.channels == 1 else pixels

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, C)``: only for a folder whose images share one size."""
        if self.image_shape is None:
            raise ValueError(f"{self.name}: images of several sizes; read them one at a time "
                             "(read) or through the pipeline, which resizes them")
        idx = check_indices(indices, len(self))
        out = np.empty((idx.size, *self.image_shape), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = self.read(int(i))
        return out

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FolderSource({self.name!r}, n={len(self)}, shape={self.image_shape})"


def make_folder(data_config: Any) -> ImageSource:
    """Factory for ``data.name = "folder"`` (keys: root, channels, num_classes: > 0 labels
    the images by their class sub-folder)."""
    root = get_root(data_config)
    if not root or not os.path.isdir(root):
        raise validate.fail("data.root", root, "the folder source needs an existing folder")
    return FolderSource(root, get_channels(data_config), get_num_classes(data_config) > 0)
