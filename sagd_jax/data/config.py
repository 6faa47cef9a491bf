"""Default data configuration and the checks applied to every value the package reads.

All errors are one-line ``ValueError``s that start with the full key, e.g.
``data.image_size=0: must be a positive integer``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

CORRUPTION_KINDS = ("none", "stripes", "band_noise")


def default_data_config() -> ml_collections.ConfigDict:
    """Every key read by ``sagd_jax.data``, with its default value.

    name:          source name: "fashion_mnist", "natural_patches", "grf", "folder", "tfds:NAME"
    split:         dataset split ("train" / "test" for fashion_mnist, any TFDS split string).
    image_size:    H = W of the images, in pixels.
    channels:      1 (grayscale) or 3 (RGB).
    root:          folder with the data ("" = the source's default location).
    num_examples:  size of the virtual natural_patches and grf datasets.
    seed:          seed of the natural_patches crops and grf fields (the dataset, not its order).
    image_key:     TFDS feature holding the image.
    download:      allow TFDS to download and prepare a missing dataset.
    random_flip:   random horizontal flips in ``load_batch``.
    grf:           spectrum of the "grf" source: std * (rho + rho0)^-gamma (see data.grf).
    corruption:    additive band-limited pattern (see ``sagd_jax.data.corruption``);
                   lo/hi in radial-frequency units (axis Nyquist = 1), amplitude in [-1, 1]
                   image units, seed fixing each example's pattern.
    """
    cfg = ml_collections.ConfigDict()
    cfg.name = "fashion_mnist"
    cfg.split = "train"
    cfg.image_size = 28
    cfg.channels = 1
    cfg.root = ""
    cfg.num_examples = 50_000
    cfg.seed = 0
    cfg.image_key = "image"
    cfg.download = False
    cfg.random_flip = False
    cfg.grf = ml_collections.ConfigDict()
    cfg.grf.gamma = 2.0
    cfg.grf.rho0 = 0.1
    cfg.grf.std = 0.5
    cfg.corruption = ml_collections.ConfigDict()
    cfg.corruption.kind = "none"
    cfg.corruption.lo = 0.5
    cfg.corruption.hi = 0.6
    cfg.corruption.amplitude = 0.1
    cfg.corruption.seed = 0
    return cfg


_DEFAULTS = default_data_config()


def config_error(key: str, value: Any, reason: str) -> ValueError:
    """A one-line ``ValueError`` naming ``data.<key>`` and its offending value."""
    return ValueError(f"data.{key}={value!r}: {reason}")


def get_value(cfg: Any, key: str) -> Any:
    """``cfg.<key>`` (dotted keys allowed), or its default when absent."""
    node, default = cfg, _DEFAULTS
    for part in key.split("."):
        default = default[part]
        if node is None:
            continue
        if isinstance(node, Mapping | ml_collections.ConfigDict):
            node = node.get(part, None)
        else:
            node = getattr(node, part, None)
    return default if node is None else node


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def get_int(cfg: Any, key: str, minimum: int) -> int:
    """Integer value of ``data.<key>``, checked to be >= ``minimum``."""
    value = get_value(cfg, key)
    if not _is_int(value) or value < minimum:
        raise config_error(key, value, f"must be an integer >= {minimum}")
    return int(value)


def get_float(cfg: Any, key: str, lo: float, hi: float) -> float:
    """Finite float value of ``data.<key>`` in the closed interval [lo, hi]."""
    value = get_value(cfg, key)
    ok = (_is_int(value) or isinstance(value, float | np.floating)) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise config_error(key, value, f"must be a number in [{lo:g}, {hi:g}]")
    return float(value)


def get_bool(cfg: Any, key: str) -> bool:
    value = get_value(cfg, key)
    if not isinstance(value, bool | np.bool_):
        raise config_error(key, value, "must be True or False")
    return bool(value)


def get_str(cfg: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
    """String value of ``data.<key>``; non-empty, and one of ``choices`` when given."""
    value = get_value(cfg, key)
    if not isinstance(value, str) or (choices is None and not value):
        raise config_error(key, value, "must be a non-empty string")
    if choices is not None and value not in choices:
        raise config_error(key, value, f"must be one of {', '.join(choices)}")
    return value


def get_image_size(cfg: Any) -> int:
    return get_int(cfg, "image_size", 1)


def get_channels(cfg: Any) -> int:
    value = get_value(cfg, "channels")
    if not _is_int(value) or value not in (1, 3):
        raise config_error("channels", value, "must be 1 (grayscale) or 3 (RGB)")
    return int(value)


def get_root(cfg: Any) -> str:
    """``data.root`` as a string ("" when unset)."""
    value = get_value(cfg, "root")
    if not isinstance(value, str):
        raise config_error("root", value, "must be a folder path (string) or '' for the default")
    return value


def check_image_shape(cfg: Any, shape: tuple[int, int, int], what: str) -> None:
    """Check that a source's (H, W, C) matches ``data.image_size`` and ``data.channels``."""
    size, channels = get_image_size(cfg), get_channels(cfg)
    h, w, c = shape
    if (h, w) != (size, size):
        raise config_error("image_size", size, f"{what} has {h}x{w} images")
    if c != channels:
        raise config_error("channels", channels, f"{what} has {c}-channel images")
