"""Stateless batching: the batch of a step is a pure function of its arguments.

The example order is an endless stream of epochs, each a permutation of 0 .. N - 1 drawn from
(seed, epoch). Global step s covers stream positions [s * B, (s + 1) * B) for global batch size
B (a batch may straddle two epochs), and process p of P takes the p-th contiguous slice of
B / P positions. Resuming at any step therefore needs no iterator state, and concatenating the
slices of all processes gives the single-process batch.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import entry
from sagd_jax.data.corruption import Corruption, corruption_from_config
from sagd_jax.data.sources import ImageSource

_PERMUTATION_TAG = 0x5E01  # separates the random streams of the package
_FLIP_TAG = 0xF11F


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Read-only int64 (N,) permutation of 0 .. N - 1 for ``epoch``, from (seed, epoch)."""
    rng = np.random.default_rng([seed, _PERMUTATION_TAG, epoch])
    perm = rng.permutation(num_examples).astype(np.int64)
    perm.setflags(write=False)
    return perm


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Examples per process; ``global_batch_size`` must be a multiple of ``process_count``."""
    if global_batch_size % process_count:
        raise validate.fail("global_batch_size", global_batch_size,
                            f"not divisible by process_count={process_count}")
    return global_batch_size // process_count


def batch_indices(
    num_examples: int,
    seed: int,
    step: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """int64 (global_batch_size // process_count,) example indices of this process at ``step``.

    Example order: epoch e = position // num_examples is the permutation drawn from (seed, e).
    """
    num_examples = validate.integer("num_examples", num_examples, 1)
    seed = validate.integer("seed", seed, 0)
    step = validate.integer("step", step, 0)
    global_batch_size = validate.integer("global_batch_size", global_batch_size, 1)
    process_count = validate.integer("process_count", process_count, 1)
    process_index = validate.integer("process_index", process_index, 0)
    if process_index >= process_count:
        raise validate.fail("process_index", process_index,
                            f"must be < process_count={process_count}")
    local = local_batch_size(global_batch_size, process_count)
    start = step * global_batch_size + process_index * local  # Python int: no overflow
    epochs, offsets = divmod(np.arange(local, dtype=np.int64) + np.int64(start), num_examples)
    out = np.empty(local, dtype=np.int64)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        out[here] = epoch_permutation(num_examples, seed, int(epoch))[offsets[here]]
    return out


def flip_mask(
    seed: int, step: int, global_batch_size: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
    """bool (local batch,) horizontal-flip decisions, a pure function of (seed, step, position).

    Drawn for the whole global batch, so the slices of all processes match one process.
    """
    local = local_batch_size(global_batch_size, process_count)
    rng = np.random.default_rng([int(seed), _FLIP_TAG, int(step)])
    flips = rng.random(global_batch_size) < 0.5
    return flips[process_index * local : (process_index + 1) * local]


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) in [0, 255] -> float32 (N, H, W, C) in [-1, 1]."""
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def batch_options(data_config: Any, image_shape: tuple[int, int, int]) -> tuple[Corruption, bool]:
    """The checked ``data.corruption`` (its band holding a DFT bin of (H, W, C) images) and
    ``data.random_flip`` that ``load_batch`` applies: checks those keys before anything loads."""
    corruption = corruption_from_config(data_config)
    random_flip = validate.boolean(*entry(data_config, "random_flip"))
    corruption.check_image_size(image_shape[0], image_shape[1])
    return corruption, random_flip


def load_batch(
    source: ImageSource,
    data_config: Any,
    seed: int,
    step: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """float32 (global_batch_size // process_count, H, W, C) batch of this process at ``step``.

    uint8 pixels are scaled to [-1, 1] (float32 sources are taken as they are); the configured
    corruption (``data.corruption``) is added per example index, then ``data.random_flip``
    flips images horizontally. Values may leave [-1, 1] by the corruption's amplitude (no
    clipping).
    """
    corruption, random_flip = batch_options(data_config, source.image_shape)
    idx = batch_indices(len(source), seed, step, global_batch_size, process_index, process_count)
    raw = source.get(idx)
    if raw.dtype not in (np.uint8, np.float32) or raw.shape != (idx.size, *source.image_shape):
        raise ValueError(
            f"{source.name}: get() returned {raw.dtype} {raw.shape}, expected uint8 or float32 "
            f"{(idx.size, *source.image_shape)}"
        )
    images = corruption.apply(to_float(raw) if raw.dtype == np.uint8 else raw.copy(), idx)
    if random_flip:
        flips = flip_mask(seed, step, global_batch_size, process_index, process_count)
        images[flips] = images[flips, :, ::-1, :]
    return images
