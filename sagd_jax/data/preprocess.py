"""Turning a source's image of any size into a training image of ``data.image_size`` pixels.

uint8 ``(h, w, C)`` in, uint8 ``(S, S, C)`` out (``S = data.image_size``), in this order:

1. ``data.center_crop_fraction = f < 1``: keep the centred square of side ``round(f *
   min(h, w))`` (CelebA's customary 140x140 face crop of its 178x218 images is
   ``f = 140 / 178``).
2. ``data.resize`` (default True): scale so that the shorter side is ``S``, with
   antialiasing: halve with a box filter while the shorter side is at least ``2 S``, then one
   bicubic resize to ``(round(w * s), round(h * s))``, ``s = S / min(h, w)`` (the recipe of
   guided-diffusion's ``center_crop_arr``). Pillow resamples uint8 images in fixed-point
   integer arithmetic: the result is the same on every machine. Skipped when the shorter side
   is already ``S``.
3. ``data.crop``: an ``S x S`` square, ``"center"`` (offsets ``(h - S) // 2``, ``(w - S) // 2``)
   or ``"random"`` (offsets uniform over all positions, from the element's generator). Without
   resizing, an image smaller than ``S`` is refused.

An image already ``S x S`` passes unchanged (no Pillow call). Float32 images (synthetic sources
in model units) can only be cropped, never resized. The conversion to float32 ``[-1, 1]``
(``x / 127.5 - 1``), the corruption and the flips follow in ``sagd_jax.data.pipeline``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import entry, get_channels, get_image_size

CROPS = ("center", "random")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The resize and crop of ``data.*`` (see the module docstring)."""

    image_size: int
    channels: int
    crop: str = "center"
    resize: bool = True
    center_crop_fraction: float = 1.0

    @classmethod
    def from_config(cls, data_config: Any) -> Preprocess:
        """Checked ``data.image_size``, ``channels``, ``crop``, ``resize``,
        ``center_crop_fraction`` (one-line ``ValueError`` naming the key)."""
        return cls(
            image_size=get_image_size(data_config),
            channels=get_channels(data_config),
            crop=validate.one_of(*entry(data_config, "crop"), CROPS),
            resize=validate.boolean(*entry(data_config, "resize")),
            center_crop_fraction=validate.number(*entry(data_config, "center_crop_fraction"),
                                                 0.0, 1.0, open_lo=True),
        )

    def output_shape(self, shape: tuple[int, int, int] | None, what: str,
                     dtype: Any = np.uint8) -> tuple[int, int, int]:
        """Check that images of ``shape`` (``None``: sizes vary) can become training images;
        returns ``(S, S, C)``. ``what`` names the source in the one-line ``ValueError``."""
        size = self.image_size
        if shape is None:
            return (size, size, self.channels)
        height, width, channels = shape
        if channels != self.channels:
            raise validate.fail("data.channels", self.channels,
                                f"{what} has {channels}-channel images")
        side = self._pre_cropped_side(height, width)
        if (not self.resize or np.dtype(dtype) != np.uint8) and side < size:
            reason = ("float images are never resized" if np.dtype(dtype) != np.uint8
                      else "data.resize=False")
            raise validate.fail("data.image_size", size,
                                f"larger than the {height}x{width} images of {what}; "
                                f"data.crop={self.crop}, {reason}")
        return (size, size, self.channels)

    def _pre_cropped_side(self, height: int, width: int) -> int:
        if self.center_crop_fraction < 1.0:
            return max(1, round(self.center_crop_fraction * min(height, width)))
        return min(height, width)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None,
                 what: str = "image") -> np.ndarray:
        """``image`` ``(h, w, C)`` -> ``(S, S, C)`` of the same dtype; ``rng`` draws the
        offsets of ``crop="random"`` (``None``: centred)."""
        size = self.image_size
        height, width = image.shape[:2]
        if height == width == size and self.center_crop_fraction == 1.0:
            return image
        if self.center_crop_fraction < 1.0:
            side = self._pre_cropped_side(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            image = image[top:top + side, left:left + side]
            height = width = side
        if self.resize and min(height, width) != size:
            if image.dtype != np.uint8:
                raise ValueError(f"{what}: {image.dtype} images are never resized; "
                                 f"data.image_size={size} needs {size}x{size} or larger")
            image = resize_shorter_side(image, size)
            height, width = image.shape[:2]
        if height < size or width < size:
            raise ValueError(f"{what}: {height}x{width} is smaller than data.image_size={size}"
                             f" (data.resize={self.resize})")
        if self.crop == "random" and rng is not None:
            top = int(rng.integers(0, height - size + 1))
            left = int(rng.integers(0, width - size + 1))
        else:
            top, left = (height - size) // 2, (width - size) // 2
        return image[top:top + size, left:left + size]


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(h, w, C)`` scaled so that ``min(h, w) == size``: box halvings while the
    shorter side is at least ``2 * size``, then bicubic (Pillow; antialiased)."""
    from PIL import Image

    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image,
                          "L" if channels == 1 else "RGB")
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.Resampling.BOX)
    scale = size / min(pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size),
                     resample=Image.Resampling.BICUBIC)
    out = np.asarray(pil, dtype=np.uint8)
    return out[..., None] if channels == 1 else out
