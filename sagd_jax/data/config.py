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
    num_classes:   classes of the labels the pipeline reads (``check_labels``,
                   ``batch_labels``): 0 = none read (unconditional); K > 0 = the source must
                   have labels of exactly K classes (fashion_mnist: its label files, 10;
                   tfds: the feature ``label_key``; folder: one class per sub-folder).
    label_key:     TFDS feature holding the class label (read only when num_classes > 0).
    download:      allow TFDS to download and prepare a missing dataset.
    random_flip:   random horizontal flips (probability 1/2 per image).
    crop:          "center" or "random": the image_size square taken from each image after
                   resizing (``sagd_jax.data.preprocess``).
    resize:        scale every image so that its shorter side is image_size (antialiased);
                   False: crop at the source's own resolution.
    center_crop_fraction: keep this centred fraction of the shorter side first (1 = all;
                   CelebA's customary 140x140 face crop: 140 / 178).
    num_workers:   threads that read and preprocess batches ahead of the step (grain).
    prefetch:      batches each reader prepares ahead.
    grf:           spectrum of the "grf" source: std * (rho + rho0)^-gamma (see data.grf).
    corruption:    additive band-limited pattern (see ``sagd_jax.data.corruption``);
                   lo/hi in radial-frequency units (axis Nyquist = 1), amplitude in [-1, 1]
                   image units, seed fixing each example's pattern.
    autoencoder:   "" = diffusion in pixel space; else a diffusers ``AutoencoderKL`` folder or
                   ``.safetensors`` file: diffusion in its latent space
                   (``sagd_jax.data.latent_space``).
    latent_channels, latent_downsample: the autoencoder's latent grid, known without its
                   file: (image_size / latent_downsample)^2 x latent_channels (SD's VAE: 4, 8);
                   checked against the file when it is loaded.
    latent_cache:  folder of the encoded training sets ("" = ``files.cache_dir()/latents``;
                   a shared folder, e.g. ``gs://``, lets the hosts of a run split the encoding).
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
    cfg.num_classes = 0
    cfg.label_key = "label"
    cfg.download = False
    cfg.random_flip = False
    cfg.crop = "center"
    cfg.resize = True
    cfg.center_crop_fraction = 1.0
    cfg.num_workers = 2
    cfg.prefetch = 2
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
    cfg.autoencoder = ""
    cfg.latent_channels = 4
    cfg.latent_downsample = 8
    cfg.latent_cache = ""
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



def get_num_classes(cfg: Any) -> int:
    """``data.num_classes`` (an integer >= 0; 0: the source's labels are not read)."""
    return validate.integer(*entry(cfg, "num_classes"), 0)


def get_label_key(cfg: Any) -> str:
    """``data.label_key``: the TFDS feature holding the class label (a non-empty string)."""
    return validate.text(*entry(cfg, "label_key"))
