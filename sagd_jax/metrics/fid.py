"""FID, KID and Inception Score of image sets in the FID Inception-v3's features, and the
reference statistics of a dataset's split, computed once and cached.

The reference of a split (``python -m sagd_jax.fid_reference`` makes one ahead of a run) is
``<cache>/inception_reference/NAME.npz`` with ``mu``, ``sigma`` (float64; pytorch-fid's and
EDM's layout, so any FID tool reads it), ``features`` (float32 ``(N, 2048)``, for KID) and
``num_images``. ``NAME`` spells the dataset, split,
resolution and count and hashes every preprocessing key (crop, resize, centre crop fraction),
so a changed preprocessing never reuses a stale reference. Published statistics (pytorch-fid's
or EDM's reference ``.npz``: ``mu``, ``sigma``) are read with ``load_reference``; they give
FID but not KID (no features).

Images are uint8 pixels; the data's clean images (no corruption, no flips, centre crop) are
rounded to uint8 the way generated samples are (``sagd_jax.images.to_uint8``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from sagd_jax import console, files
from sagd_jax.images import to_uint8
from sagd_jax.metrics.features import (
    GaussianStats,
    frechet_distance,
    inception_score,
    kernel_distance,
    load_reference_stats,
)

DEFAULT_SPLITS = 10  # Inception Score splits (the literature's and torch-fidelity's)
PREPROCESSING_KEYS = ("image_size", "channels", "crop", "resize", "center_crop_fraction",
                      "image_key", "grf", "seed", "num_examples")


@dataclasses.dataclass(frozen=True)
class Reference:
    """Inception statistics of a reference set; ``features`` ``(N, 2048)`` when known (KID)."""

    stats: GaussianStats
    features: np.ndarray | None
    name: str


def load_reference(path: str, dim: int = 2048) -> Reference:
    """A reference ``.npz``: ours (with features), pytorch-fid's or EDM's (``mu``, ``sigma``)
    of ``dim``-d features (the FID Inception's 2048). One-line ``ValueError`` naming ``path``
    when it is not one, or of another feature size."""
    stats = load_reference_stats(path)
    if len(stats.mean) != dim:
        raise ValueError(f"{path}: statistics of {len(stats.mean)}-d features (mu "
                         f"{stats.mean.shape}, sigma {stats.cov.shape}), the FID Inception's "
                         f"are {dim}-d; use a reference of its pool features")
    features = None
    with np.load(path, allow_pickle=False) as data:
        if "features" in data.files:
            features = np.asarray(data["features"], np.float32)
            if features.ndim != 2 or features.shape[1] != len(stats.mean):
                raise ValueError(f"{path}: features {features.shape} do not fit mu "
                                 f"{stats.mean.shape}")
    return Reference(stats, features, os.path.splitext(os.path.basename(path))[0])


def reference_name(data_config: Any, split: str, count: int, weights: str) -> str:
    """The cache name of a data split's reference: dataset, split, size, count and a hash of
    the preprocessing keys and the Inception weights' file name."""
    cfg = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
    keyed = {k: cfg.get(k) for k in PREPROCESSING_KEYS} | {"weights": weights}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
    size = f"{cfg['image_size']}x{cfg['image_size']}x{cfg['channels']}"
    name = f"{cfg['name']}-{split}-{size}-{count}-{digest[:10]}"
    return name.replace(":", "_").replace("/", "_")


def clean_pixels(data_config: Any, split: str, max_images: int, chunk: int = 500
                 ) -> tuple[int, Iterator[np.ndarray]]:
    """``(count, chunks)``: the first ``min(len, max_images)`` clean images of ``split`` of the
    data (no corruption or flips, centre crop) as uint8 ``(n, S, S, C)`` chunks."""
    from sagd_jax.data import clean_images, get_source

    cfg = data_config.copy_and_resolve_references()
    with cfg.ignore_type():
        cfg.split = split
        cfg.corruption.kind = "none"
        cfg.random_flip = False
    source = get_source(cfg)
    count = min(len(source), max_images)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, count, chunk):
            images = clean_images(source, cfg, min(chunk, count - start), start)
            yield images if images.dtype == np.uint8 else to_uint8(images)

    return count, chunks()


def reference_cache_dir() -> str:

    return os.path.join(files.cache_dir(), "inception_reference")


def compute_reference(data_config: Any, extractor: Any, split: str = "train",
                      max_images: int = 50_000, out: str | None = None) -> tuple[Reference, str]:
    """The reference of ``split`` of the data, from the cache (``out``, default
    ``<cache>/inception_reference/NAME.npz``) or computed and written there (never
    overwritten; a concurrent writer's file is kept). Returns it and its path."""
    count, chunks = clean_pixels(data_config, split, max_images)
    name = reference_name(data_config, split, count, extractor.name)
    path = out or os.path.join(reference_cache_dir(), f"{name}.npz")
    if files.exists(path):
        console.info("reference: %s", path)
        return load_reference(path), path
    progress = console.Progress(f"reference features ({name})", total=count, unit="image")
    features = np.concatenate([extractor.features_and_logits(c, progress.update)[0]
                               for c in chunks])
    stats = GaussianStats.of(features)
    try:
        files.write_npz(path, exclusive=True, mu=stats.mean, sigma=stats.cov,
                        features=features.astype(np.float32), num_images=np.int64(count))
    except FileExistsError:  # another process computed the same reference first
        return load_reference(path), path
    console.info("reference: %d images -> %s", count, path)
    return Reference(stats, features, name), path


def inception_metrics(images: np.ndarray, extractor: Any, reference: Reference,
                      num_subsets: int = 100, subset_size: int = 1000,
                      num_splits: int = DEFAULT_SPLITS) -> dict[str, Any]:
    """``fid``, ``kid`` (when the reference has features) and ``inception_score`` of uint8
    ``images (N, H, W, C)`` against ``reference``."""
    features, logits = extractor.features_and_logits(images)
    results: dict[str, Any] = {
        "fid": frechet_distance(reference.stats, GaussianStats.of(features)),
        "inception_reference": reference.name, "inception_weights": extractor.name}
    if reference.features is not None:
        kid = kernel_distance(features, reference.features, num_subsets, subset_size)
        results["kid"] = dataclasses.asdict(kid)
    score = inception_score(logits, min(num_splits, len(images)))
    results["inception_score"] = dataclasses.asdict(score)
    return results
