"""Default data configuration (every ``data.*`` key and its one default) and the checks of the
keys several sources share.

Readers take a full ``data`` section (``sagd_jax.config.normalize`` fills in every key) and
check each value with ``sagd_jax.validate`` under its full key, so every error is a one-line
``ValueError`` such as ``data.image_size=0: must be an integer >= 1``; a missing key is
``data.<key>: missing from the config``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sagd_jax import validate

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


def read(cfg: Any, key: str) -> Any:
    """``data.<key>`` (dotted keys allowed) of the data section ``cfg``, no default."""
    return validate.lookup(cfg, key, "data")


def entry(cfg: Any, key: str) -> tuple[str, Any]:
    """``("data.<key>", value)``, to unpack into a check: ``validate.integer(*entry(cfg,
    "seed"), 0)``."""
    return validate.entry(cfg, key, "data")


def get_image_size(cfg: Any) -> int:
    return validate.integer(*entry(cfg, "image_size"), 1)


def get_channels(cfg: Any) -> int:
    value = read(cfg, "channels")
    if not validate.is_int(value) or value not in (1, 3):
        raise validate.fail("data.channels", value, "must be 1 (grayscale) or 3 (RGB)")
    return int(value)


def get_root(cfg: Any) -> str:
    """``data.root`` ("" = the source's default location)."""
    value = read(cfg, "root")
    if not isinstance(value, str):
        raise validate.fail("data.root", value,
                            "must be a folder path (string) or '' for the default")
    return value


def check_image_shape(cfg: Any, shape: tuple[int, int, int], what: str) -> None:
    """Check that a source's (H, W, C) matches ``data.image_size`` and ``data.channels``."""
    size, channels = get_image_size(cfg), get_channels(cfg)
    h, w, c = shape
    if (h, w) != (size, size):
        raise validate.fail("data.image_size", size, f"{what} has {h}x{w} images")
    if c != channels:
        raise validate.fail("data.channels", channels, f"{what} has {c}-channel images")
