"""Pixels and model units, the one place that converts between them, and sample grids as PNG
files.

Model units: float32 in [-1, 1], ``x / 127.5 - 1`` of 8-bit pixels ``x`` in [0, 255].
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from sagd_jax import files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # the image files read as data or sample sets


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 in [0, 255] -> float32 in [-1, 1] (``x / 127.5 - 1``), any shape."""
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def as_model_units(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 model units (``to_float``); float input is taken as already in
    model units and returned as float32."""
    images = np.asarray(images)
    return to_float(images) if images.dtype == np.uint8 else images.astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float ``(N, H, W, C)`` in [-1, 1] -> uint8 in [0, 255] (clipped)."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
        np.uint8)


def image_grid(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """Tile ``(N, H, W, C)`` uint8 into one ``(rows*(H+pad)+pad, cols*(W+pad)+pad, C)`` image."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid


def save_grid(images: np.ndarray, path: str) -> bool:
    """Write a PNG grid of ``(N, H, W, C)`` images in [-1, 1] to a new file at ``path``.

    Never overwrites: returns False (writing nothing) when ``path`` exists.
    """
    if files.exists(path):
        return False
    grid = image_grid(to_uint8(images))
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    with files.atomic_open(path, "wb", exclusive=True) as f:
        Image.fromarray(grid[..., 0] if mode == "L" else grid, mode).save(f, format="PNG")
    return True
