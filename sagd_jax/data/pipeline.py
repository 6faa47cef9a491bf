"""The input pipeline on grain: the batch of a step is a pure function of (seed, step, process).

    positions q = 0, 1, 2, ...             # an endless stream of epochs
        -> example perm_e(q mod N), e = q // N, read      # a permutation per (seed, epoch)
        -> resize + crop, scale to [-1, 1], corruption, flip   (one element, one rng)
        -> batch(B / P)[p::P]               # process p of P: its slice of every global batch

Stream position q holds example ``perm_e(q mod N)`` of epoch ``e = q // N``: a numpy
permutation drawn from (seed, e), cached per epoch (grain's own index shuffle costs about
16 ms / N per element: 1.3 ms at N = 12, the tests' and small folders' sizes); its crop
offsets and flip come from grain's per-position generator (``random_map``). Global step s
covers positions ``[s B, (s + 1) B)`` and process p reads only
``[s B + p B / P, s B + (p + 1) B / P)``, so the global batch is the same for any process count
and resuming at any step needs no iterator state. ``batches(...)`` is a ``grain.MapDataset``:
``batches[s]`` is the batch of step s (random access); ``iterate`` reads ahead with
``data.num_workers`` threads.

Class labels (``data.num_classes > 0``) follow the same positions without reading images:
``batch_labels(...)[s]`` is the labels of ``batches(...)[s]``, example by example (flips and
crops do not change a label).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from sagd_jax import validate
from sagd_jax.data.config import entry
from sagd_jax.data.corruption import Corruption, corruption_from_config
from sagd_jax.data.preprocess import Preprocess
from sagd_jax.data.sources import ImageSource, check_labels, read_image
from sagd_jax.images import as_model_units

_SEED_TAG = 0x5E01  # separates the pipeline's grain seed from the other streams


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Examples per process; ``global_batch_size`` must be a multiple of ``process_count``."""
    if global_batch_size % process_count:
        raise validate.fail("global_batch_size", global_batch_size,
                            f"not divisible by process_count={process_count}")
    return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """What turns a source image into a training image: ``data.*`` resize/crop, corruption
    and flips, checked."""

    preprocess: Preprocess
    corruption: Corruption
    random_flip: bool
    num_workers: int
    prefetch: int


def batch_options(data_config: Any, source_shape: tuple[int, int, int] | None = None,
                  what: str = "the source", dtype: Any = np.uint8) -> BatchOptions:
    """The checked ``data.*`` keys of the pipeline, for a source of ``source_shape`` images
    (``None``: sizes vary); one-line ``ValueError`` naming the key, before anything loads."""
    preprocess = Preprocess.from_config(data_config)
    out_shape = preprocess.output_shape(source_shape, what, dtype)
    corruption = corruption_from_config(data_config)
    corruption.check_image_size(out_shape[0], out_shape[1])
    return BatchOptions(
        preprocess, corruption, validate.boolean(*entry(data_config, "random_flip")),
        validate.integer(*entry(data_config, "num_workers"), 0),
        validate.integer(*entry(data_config, "prefetch"), 1))


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Read-only int64 ``(N,)`` permutation of 0 .. N - 1 for ``epoch``, from (seed, epoch)."""
    perm = np.random.default_rng([seed, _SEED_TAG, epoch]).permutation(num_examples)
    perm.setflags(write=False)
    return perm


class _Stream:
    """grain's random-access data source over the endless stream of shuffled epochs:
    position q -> (example index, image)."""

    def __init__(self, source: ImageSource, seed: int):
        self.source, self.seed, self.num_examples = source, seed, len(source)

    def __len__(self) -> int:
        return sys.maxsize  # endless: positions are never taken modulo a length

    def __getitem__(self, position: int) -> tuple[int, np.ndarray]:
        epoch, offset = divmod(int(position), self.num_examples)
        index = int(epoch_permutation(self.num_examples, self.seed, epoch)[offset])
        return index, read_image(self.source, index)


class _Transform(grain.transforms.RandomMap):
    """(index, image) -> float32 (S, S, C) training image (crop, scale, corruption, flip)."""

    def __init__(self, options: BatchOptions, source_name: str):
        self.options, self.source_name = options, source_name

    def random_map(self, element: tuple[int, np.ndarray], rng: np.random.Generator
                   ) -> np.ndarray:
        index, image = element
        image = self.options.preprocess(image, rng, what=f"{self.source_name}[{index}]")
        x = as_model_units(image)
        if self.options.corruption.kind != "none":
            x = self.options.corruption.apply(x[None], np.array([index]))[0]
        if self.options.random_flip and rng.random() < 0.5:
            x = x[:, ::-1]
        return np.ascontiguousarray(x, dtype=np.float32)


def stream_arguments(source: Any, seed: int, global_batch_size: int,
                      process_index: int, process_count: int) -> tuple[int, int]:
    """``(seed, B / P)``, checked (one line naming the argument); ``source``: sized, with a
    ``name`` (an ``ImageSource``, a latent dataset)."""
    seed = validate.integer("seed", seed, 0)
    process_count = validate.integer("process_count", process_count, 1)
    if not 0 <= process_index < process_count:
        raise validate.fail("process_index", process_index,
                            f"must be in [0, {process_count})")
    local = local_batch_size(validate.integer("global_batch_size", global_batch_size, 1),
                             process_count)
    if len(source) < 1:
        raise ValueError(f"{source.name}: no examples")
    return seed, local


def batches(source: ImageSource, data_config: Any, seed: int, global_batch_size: int,
            process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """This process's batches: ``batches(...)[s]`` is float32 ``(B / P, S, S, C)`` of step
    ``s`` (``S = data.image_size``); an endless ``grain.MapDataset``."""
    options = batch_options(data_config, getattr(source, "image_shape", None), source.name)
    seed, local = stream_arguments(source, seed, global_batch_size, process_index,
                                   process_count)
    elements = stream(source, seed).random_map(_Transform(options, source.name))
    return elements.batch(local, batch_fn=np.stack)[process_index::process_count]


def stream(source: Any, seed: int) -> grain.MapDataset:
    """The endless stream of shuffled epochs: ``[q]`` is ``(example index,
    read_image(source, index))`` of position q, with grain's per-position generator of
    ``seed`` (the crops' and flips' randomness; ``random_map`` hands it on). ``source``: an
    ``ImageSource``, or any sized object with ``read(i)`` (the latent datasets)."""
    grain_seed = (seed * 0x9E3779B1 + _SEED_TAG) % 2**32
    return grain.MapDataset.source(_Stream(source, seed)).seed(grain_seed)


class BatchLabels:
    """The class labels of every step's batch (``batch_labels``): ``[s]`` is int32
    ``(B / P,)``, the labels of the examples of ``batches(...)[s]`` in the same order.

    Stream position q holds example ``epoch_permutation(N, seed, q // N)[q % N]``; step s of
    process p covers positions ``s B + p B / P + j``, j = 0 .. B / P - 1. Only labels are
    read (a lookup in the source's ``(N,)`` array): microseconds per step, no images.
    ``len()`` is endless (``sys.maxsize``) like the image batches'.
    """

    def __init__(self, labels: np.ndarray, seed: int, global_batch_size: int,
                 local_batch_size: int, process_index: int):
        self.labels = labels.astype(np.int32)
        self.seed, self.global_batch_size = seed, global_batch_size
        self.local_batch_size, self.process_index = local_batch_size, process_index

    def __len__(self) -> int:
        return sys.maxsize

    def positions(self, step: int) -> np.ndarray:
        """int64 ``(B / P,)``: the stream positions of this process's examples of ``step``."""
        first = step * self.global_batch_size + self.process_index * self.local_batch_size
        return first + np.arange(self.local_batch_size, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """int64 ``(B / P,)``: the source indices of this process's examples of ``step``."""
        step = validate.integer("step", step, 0)
        num_examples = len(self.labels)
        epochs, offsets = np.divmod(self.positions(step), num_examples)
        out = np.empty(self.local_batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):  # a batch spans one epoch, or two at a boundary
            where = epochs == epoch
            out[where] = epoch_permutation(num_examples, self.seed, int(epoch))[offsets[where]]
        return out

    def __getitem__(self, step: int) -> np.ndarray:
        """int32 ``(B / P,)``: the labels of ``batches(...)[step]``, example by example."""
        return self.labels[self.indices(step)]

    def __repr__(self) -> str:
        return (f"BatchLabels(n={len(self.labels)}, seed={self.seed}, "
                f"batch={self.global_batch_size}, local={self.local_batch_size}, "
                f"process={self.process_index})")


def batch_labels(source: ImageSource, data_config: Any, seed: int, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> BatchLabels:
    """This process's class labels per step, matching ``batches(...)`` with the same
    arguments: ``batch_labels(...)[s]`` is int32 ``(B / P,)``, entry j the label of example j
    of ``batches(...)[s]`` (shape ``(B / P, S, S, C)``). Reads the source's labels only.

    Needs ``data.num_classes = K > 0`` and a source whose labels pass ``check_labels``
    (checked here, in one line, before anything is read); values lie in [0, K).
    """
    num_classes = check_labels(source, data_config)
    if num_classes == 0:
        raise validate.fail("data.num_classes", 0,
                            "labels per step need data.num_classes > 0 (the number of "
                            "classes of the source); 0 reads no labels")
    seed, local = stream_arguments(source, seed, global_batch_size, process_index,
                                   process_count)
    return BatchLabels(np.asarray(source.labels), seed, local * int(process_count), local,
                       int(process_index))


def load_batch(source: ImageSource, data_config: Any, seed: int, step: int,
               global_batch_size: int, process_index: int = 0, process_count: int = 1
               ) -> np.ndarray:
    """float32 ``(global_batch_size // process_count, S, S, C)``: this process's batch of
    ``step`` (``batches(...)[step]``)."""
    step = validate.integer("step", step, 0)
    return batches(source, data_config, seed, global_batch_size, process_index,
                   process_count)[step]


def iterate(dataset: grain.MapDataset, start: int, stop: int, num_workers: int,
            prefetch: int) -> Iterator[np.ndarray]:
    """The batches of steps ``start .. stop - 1`` in order, read ahead by ``num_workers``
    threads (0: in the caller's thread), ``prefetch`` batches per thread."""
    if start >= stop:
        return iter(())
    options = grain.ReadOptions(num_threads=num_workers,
                                prefetch_buffer_size=max(1, num_workers * prefetch))
    return iter(dataset[start:stop].to_iter_dataset(options))


def clean_images(source: ImageSource, data_config: Any, count: int, start: int = 0
                 ) -> np.ndarray:
    """Examples ``start .. start + count - 1`` (in source order) as uint8 ``(count, S, S, C)``
    training images, centre-cropped, without corruption or flips (reference images); float
    sources give float32."""
    options = batch_options(data_config, getattr(source, "image_shape", None), source.name)
    center = dataclasses.replace(options.preprocess, crop="center")
    return np.stack([center(read_image(source, i), None, f"{source.name}[{i}]")
                     for i in range(start, start + count)])
