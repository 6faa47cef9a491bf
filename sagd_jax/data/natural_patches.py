"""Random crops of the photographs bundled with scikit-image (``data.name = "natural_patches"``).

A fixed virtual dataset of ``data.num_examples`` square patches of side ``data.image_size``.
Patch i is a pure function of (``data.seed``, i): a generator seeded with both picks a
photograph (with probability proportional to its number of possible crop positions) and a
uniform crop position in it. With ``data.channels = 1`` all photographs are used, colour ones
turned into luma (ITU-R BT.601 weights); with ``data.channels = 3`` only the colour ones.
Photographs smaller than the patch are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import entry, get_channels, get_image_size
from sagd_jax.data.sources import ImageSource, check_indices

# Real photographs shipped inside the scikit-image wheel (no pooch download needed).
GRAY_PHOTOS = ("camera", "coins", "moon", "brick", "grass", "gravel")
COLOR_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
)
_LUMA = np.array([0.299, 0.587, 0.114])
_STREAM_TAG = 0x6E70  # separates these seeds from the other random streams of the package


def load_photographs(channels: int) -> dict[str, np.ndarray]:
    """The bundled photographs as uint8 (H, W, channels) arrays, keyed by skimage name."""
    import skimage.data

    names = COLOR_PHOTOS if channels == 3 else GRAY_PHOTOS + COLOR_PHOTOS
    photos = {}
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype != np.uint8:
            raise ValueError(f"skimage.data.{name}: expected uint8, got {image.dtype}")
        if image.ndim == 3:
            image = image[..., :3]
            if channels == 1:
                image = np.rint(image @ _LUMA).astype(np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        photos[name] = image
    return photos


class NaturalPatches:
    """Virtual dataset of uint8 (size, size, channels) crops; see the module docstring."""

    def __init__(self, image_size: int, channels: int, num_examples: int, seed: int):
        photos = load_photographs(channels)
        self.photos = [
            (name, img) for name, img in photos.items() if min(img.shape[:2]) >= image_size
        ]
        if not self.photos:
            largest = max(min(img.shape[:2]) for img in photos.values())
            raise validate.fail("data.image_size", image_size,
                                f"natural_patches photographs allow at most {largest}")
        positions = np.array(
            [
                (img.shape[0] - image_size + 1) * (img.shape[1] - image_size + 1)
                for _, img in self.photos
            ],
            dtype=np.float64,
        )
        self._by_name = dict(self.photos)
        self._cumulative = np.cumsum(positions / positions.sum())
        self.name = f"natural_patches/{'rgb' if channels == 3 else 'gray'}{image_size}"
        self.image_shape = (image_size, image_size, channels)
        self.num_examples = num_examples
        self.seed = seed

    def __len__(self) -> int:
        return self.num_examples

    def crop_location(self, index: int) -> tuple[str, int, int]:
        """(photograph name, top row, left column) of patch ``index``."""
        rng = np.random.default_rng([self.seed, _STREAM_TAG, int(index)])
        k = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        k = min(k, len(self.photos) - 1)
        name, img = self.photos[k]
        size = self.image_shape[0]
        top = int(rng.integers(0, img.shape[0] - size + 1))
        left = int(rng.integers(0, img.shape[1] - size + 1))
        return name, top, left

    def get(self, indices: np.ndarray) -> np.ndarray:
        idx = check_indices(indices, len(self))
        size = self.image_shape[0]
        out = np.empty((idx.size, *self.image_shape), dtype=np.uint8)
        for j, i in enumerate(idx):
            name, top, left = self.crop_location(int(i))
            out[j] = self._by_name[name][top : top + size, left : left + size]
        return out

    def __repr__(self) -> str:
        return f"NaturalPatches({self.name!r}, n={len(self)}, seed={self.seed})"


def make_natural_patches(data_config: Any) -> ImageSource:
    """Factory for ``data.name = "natural_patches"``.

    Keys: image_size, channels, num_examples, seed.
    """
    return NaturalPatches(
        image_size=get_image_size(data_config),
        channels=get_channels(data_config),
        num_examples=validate.integer(*entry(data_config, "num_examples"), 1),
        seed=validate.integer(*entry(data_config, "seed"), 0),
    )
