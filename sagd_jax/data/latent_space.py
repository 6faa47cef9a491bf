"""Diffusion in an autoencoder's latent space (``data.autoencoder``): the latent grid a config
names, the autoencoder behind it, and its decoder on a run's devices.

A latent run trains, samples and applies SAGD's operator on latents of shape
``(S / d, S / d, c)`` (``S = data.image_size``, ``d = data.latent_downsample``,
``c = data.latent_channels``): model units there are ``(mean - shift_factor) * scale_factor``
of the autoencoder's posterior mean (about unit variance; ``sagd_jax.data.latent_cache`` encodes
the training set once). Samples go back through ``decode``: ``z / scale_factor +
shift_factor``, then the decoder, to pixels of the data's shape ``(S, S, C)``.

``LatentSpace.from_config`` reads the keys alone (no file): what ``Run.from_config(...,
load_data=False)`` needs for the model's and state's shapes. ``load_autoencoder`` reads the
file and checks it against the keys (one line naming the key).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from sagd_jax import validate
from sagd_jax.data.config import entry, get_image_size
from sagd_jax.models.autoencoder import Autoencoder, AutoencoderConfig, AutoencoderKL
from sagd_jax.sharding import BATCH_AXES, batch_sharding, replicate

DECODE_BATCH = 16  # latents decoded at a time per device (bounds the decoder's memory)


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """The latent grid of ``data.*``: ``path`` (``data.autoencoder``), ``channels``,
    ``downsample`` and the data's ``image_size`` (pixels)."""

    path: str
    channels: int
    downsample: int
    image_size: int

    @classmethod
    def from_config(cls, data_config: Any) -> LatentSpace | None:
        """The checked latent keys of ``data_config`` (no file read); None for a pixel run
        (``data.autoencoder=""``). One-line ``ValueError`` naming the key, also for what a
        latent run cannot honour: each image is encoded once, from its clean uint8 pixels
        (no random crops, no corruption, no float ``grf`` fields)."""
        path = validate.text(*entry(data_config, "autoencoder"), empty=True)
        channels = validate.integer(*entry(data_config, "latent_channels"), 1)
        downsample = validate.integer(*entry(data_config, "latent_downsample"), 1)
        if downsample & (downsample - 1):
            raise validate.fail("data.latent_downsample", downsample,
                                "must be a power of 2 (the autoencoder halves per level)")
        validate.text(*entry(data_config, "latent_cache"), empty=True)
        if not path:
            return None
        size = get_image_size(data_config)
        if size % downsample:
            raise validate.fail("data.image_size", size, f"must be divisible by "
                                f"data.latent_downsample={downsample} (data.autoencoder)")
        name = validate.lookup(data_config, "name", "data")
        if name == "grf":
            raise validate.fail("data.autoencoder", path, "the grf source's images are float "
                                "fields, not uint8 pixels an autoencoder encodes")
        if validate.lookup(data_config, "crop", "data") == "random":
            raise validate.fail("data.crop", "random", "not with data.autoencoder (each image "
                                "is encoded once; use data.crop=center)")
        corruption = validate.lookup(data_config, "corruption.kind", "data")
        if corruption != "none":
            raise validate.fail("data.corruption.kind", corruption, "not with "
                                "data.autoencoder (the pattern lives in pixel space; the "
                                "latents are encoded once from the clean images)")
        return cls(path, channels, downsample, size)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(h, w, c)`` of the latents: the model's input shape."""
        side = self.image_size // self.downsample
        return (side, side, self.channels)

    def load_autoencoder(self, image_channels: int) -> Autoencoder:
        """The autoencoder at ``data.autoencoder``, checked against ``data.latent_channels``,
        ``data.latent_downsample`` and ``data.channels`` (``image_channels``). A missing or bad
        file is one line naming ``data.autoencoder`` (and, when missing, what to download and
        where to put it)."""
        autoencoder = Autoencoder.from_pretrained(self.path, key="data.autoencoder")
        check_autoencoder(autoencoder.config, self, image_channels)
        return autoencoder


def check_autoencoder(config: AutoencoderConfig, latent: LatentSpace, image_channels: int
                      ) -> None:
    """One line naming the ``data.*`` key that disagrees with the autoencoder of ``config``."""
    where = f"the autoencoder data.autoencoder={latent.path} has"
    if config.latent_channels != latent.channels:
        raise validate.fail("data.latent_channels", latent.channels,
                            f"{where} {config.latent_channels}-channel latents")
    downsample = 2 ** (len(config.block_out_channels) - 1)
    if downsample != latent.downsample:
        raise validate.fail("data.latent_downsample", latent.downsample,
                            f"{where} downsample {downsample} "
                            f"({len(config.block_out_channels)} levels)")
    if config.in_channels != image_channels or config.out_channels != image_channels:
        raise validate.fail("data.channels", image_channels,
                            f"{where} {config.in_channels}-channel images")


# --- the decoder on a mesh ----------------------------------------------------------------------
def to_autoencoder_units(latents: np.ndarray, autoencoder: Autoencoder) -> np.ndarray:
    """A model's float32 latents -> the autoencoder's: ``z / scale_factor + shift_factor``
    (in NumPy: IEEE division, which XLA's CPU division is not, bit for bit)."""
    return (np.asarray(latents, np.float32) / np.float32(autoencoder.scale_factor)
            + np.float32(autoencoder.shift_factor))


@functools.cache
def _decode_program(config: AutoencoderConfig, mesh: Mesh, per_device: int,
                    uint8: bool) -> Any:
    """jit of ``(params, z) -> pixels``: ``z`` split over the mesh's batch axes, each device
    decoding its rows ``per_device`` at a time (``lax.map``)."""
    module = AutoencoderKL(config)
    method = AutoencoderKL.decode if uint8 else AutoencoderKL.decode_float

    def local(params: Any, z: jax.Array) -> jax.Array:
        n = z.shape[0]
        size = min(per_device, n)
        steps = -(-n // size)
        z = jnp.pad(z, ((0, steps * size - n), (0, 0), (0, 0), (0, 0)))
        out = jax.lax.map(lambda chunk: module.apply({"params": params}, chunk, method=method),
                          z.reshape(steps, size, *z.shape[1:]))
        return out.reshape(steps * size, *out.shape[2:])[:n]

    rows = PartitionSpec(BATCH_AXES)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), rows),
                                 out_specs=rows))


class LatentDecoder:
    """The autoencoder's decoder on ``mesh``: float32 latents ``(N, h, w, c)`` in model units
    (scaled) -> pixels ``(N, H, W, C)`` of the data's shape, on the host. The latents are
    split over every device of the mesh, each decoding its share ``per_device`` at a time;
    several processes pass the same latents and each gets every image. ``uint8``:
    ``Autoencoder.decode``'s pixels; else ``decode_float``'s float32 images in [-1, 1] model
    units, unclipped. Bit for bit the autoencoder's own ``decode`` / ``decode_float`` of
    ``to_autoencoder_units(latents)`` on one CPU device."""

    def __init__(self, autoencoder: Autoencoder, mesh: Mesh, per_device: int = DECODE_BATCH):
        self.autoencoder, self.mesh, self.per_device = autoencoder, mesh, per_device
        self.params = replicate(autoencoder.params, mesh)

    def __call__(self, latents: np.ndarray, *, uint8: bool) -> np.ndarray:
        from jax.experimental import multihost_utils

        z = to_autoencoder_units(latents, self.autoencoder)
        n = len(z)
        z = np.concatenate([z, np.zeros((-n % self.mesh.size, *z.shape[1:]), np.float32)])
        array = jax.make_array_from_callback(z.shape, batch_sharding(self.mesh),
                                             lambda index: z[index])
        program = _decode_program(self.autoencoder.config, self.mesh, self.per_device, uint8)
        pixels = program(self.params, array)
        return np.asarray(multihost_utils.process_allgather(pixels, tiled=True))[:n]
