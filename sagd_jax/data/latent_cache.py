"""The training set of a latent run, encoded once and cached (``data.autoencoder``).

Example i of the source, preprocessed as the pixel pipeline does it (resize, centre crop),
is encoded to ``(encode_mean(pixels) - shift_factor) * scale_factor`` (float32 ``(h, w, c)``,
``sagd_jax.data.latent_space``); with ``data.random_flip`` its horizontal mirror is encoded
too (as DiT's and SiT's latent pipelines do), since the mirror of a latent is not the latent
of the mirror.

The cache is a folder per key under ``data.latent_cache`` (default
``files.cache_dir()/latents``): ``<source>-<split>-<S>px-<hash>/`` where the hash is of the
key (``key.json``): the data's identity (source name and example count, split, root, the
preprocessing keys that change pixels, a folder's file list with sizes and times) and the
autoencoder's (its config and the SHA-256 of its parameters), so a change of any of them makes
a new folder. It holds ``latents_<i>.npy`` (and ``flipped_<i>.npy``): shard i is examples
``i * SHARD_SIZE ..`` , each written atomically once encoded, so a killed encoding resumes at
the first missing shard. Local shards are read a row at a time (nothing is held in memory or
open), remote ones (``gs://``) into memory.

Several processes: each encodes its share of the missing shards (``i % P == p``), waits for
the others, then encodes whatever its folder still lacks (a host-local folder): a shared folder
splits the work, a local one is complete on every host.

The batches (``latent_batches``) are the pixel pipeline's: the same stream of shuffled epochs
(``pipeline.stream``) and, with flips, the same per-position draw (``rng.random() < 0.5``,
the pixel pipeline's first and only draw with ``data.crop=center``), so step s holds the
latents of exactly the examples, mirrored or not, of the pixel batch of step s: a pure function
of (seed, s, process); the class labels (``batch_labels``) are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import grain
import jax
import numpy as np

from sagd_jax import console, files
from sagd_jax.data.config import read
from sagd_jax.data.pipeline import clean_images, stream, stream_arguments
from sagd_jax.data.sources import ImageSource
from sagd_jax.distributed import barrier
from sagd_jax.models.autoencoder import Autoencoder

CACHE_VERSION = 1  # of the layout and the encoding recipe: a change makes new folders
SHARD_SIZE = 1024  # examples per shard file
ENCODE_TIMEOUT_S = 7 * 24 * 3600.0  # the wait for the other processes' shares
# data.* keys that change the pixels the autoencoder sees (every source) ...
PIXEL_KEYS = ("name", "split", "root", "image_key", "image_size", "channels", "resize",
              "center_crop_fraction")
# ... and those that make the dataset of a virtual source
VIRTUAL_KEYS = {"natural_patches": ("num_examples", "seed")}


def weights_sha256(autoencoder: Autoencoder) -> str:
    """SHA-256 of the autoencoder's parameters (names, shapes, float32 bytes, in order)."""
    digest = hashlib.sha256()
    for path, value in jax.tree_util.tree_flatten_with_path(jax.device_get(
            autoencoder.params))[0]:
        value = np.ascontiguousarray(value, np.float32)
        digest.update(f"{jax.tree_util.keystr(path)}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _files_sha256(paths: list[str]) -> str:
    """SHA-256 of a folder source's files: each one's path, size and modification time."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(source: ImageSource, data_config: Any, autoencoder: Autoencoder) -> dict[str, Any]:
    """What the latents of ``source`` are a function of (the module docstring), as JSON."""
    name = read(data_config, "name")
    data = {key: read(data_config, key) for key in PIXEL_KEYS}
    data |= {key: read(data_config, key) for key in VIRTUAL_KEYS.get(name, ())}
    data |= {"source": source.name, "examples": len(source)}
    paths = getattr(source, "paths", None)
    if paths is not None:
        data["files_sha256"] = _files_sha256(list(paths))
    return {"version": CACHE_VERSION, "shard_size": SHARD_SIZE, "data": data,
            "autoencoder": {"config": autoencoder.config.to_json(),
                            "weights_sha256": weights_sha256(autoencoder)}}


def cache_folder(data_config: Any, key: dict[str, Any]) -> str:
    """The folder of ``key`` under ``data.latent_cache`` (default: the user cache folder)."""
    root = read(data_config, "latent_cache") or files.join(files.cache_dir(), "latents")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    data = key["data"]
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", f"{data['name']}-{data['split']}").strip("_")
    return files.join(root, f"{slug}-{data['image_size']}px-{digest}")


class Shard:
    """The rows of one shard file (float32 ``(rows, h, w, c)`` ``.npy``): ``[i]`` is row i.
    A local file is read a row at a time (one ``pread``, no file kept open: a large dataset
    has thousands of shards), a remote one is held in memory."""

    def __init__(self, path: str, shape: tuple[int, ...], offset: int,
                 array: np.ndarray | None = None):
        self.path, self.shape, self.offset, self.array = path, shape, offset, array
        self.row_bytes = int(np.prod(shape[1:])) * 4

    def __getitem__(self, row: int) -> np.ndarray:
        if self.array is not None:
            return self.array[row]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, self.row_bytes, self.offset + row * self.row_bytes)
        finally:
            os.close(fd)
        return np.frombuffer(data, np.float32).reshape(self.shape[1:])


class LatentDataset:
    """The encoded training set: ``len`` examples, ``read(i)`` -> ``(latents, flipped or
    None)`` (float32 ``(h, w, c)`` each, read-only), ``get(indices)`` -> the unflipped
    latents ``(n, h, w, c)``. ``shards``: per kind, the shards in order."""

    def __init__(self, folder: str, num_examples: int, shape: tuple[int, int, int],
                 shards: dict[str, list[Shard]], shard_size: int):
        self.folder, self.num_examples, self.shape = folder, num_examples, shape
        self.shards, self.shard_size = shards, shard_size
        self.name = f"latents:{folder}"
        self.flips = "flipped" in shards

    def __len__(self) -> int:
        return self.num_examples

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        shard, row = divmod(int(index), self.shard_size)
        flipped = self.shards["flipped"][shard][row] if self.flips else None
        return self.shards["latents"][shard][row], flipped

    def get(self, indices: Any) -> np.ndarray:
        return np.stack([np.asarray(self.read(int(i))[0]) for i in np.asarray(indices)])


def _shard_path(folder: str, kind: str, shard: int) -> str:
    return files.join(folder, f"{kind}_{shard:05d}.npy")


def _open_shard(path: str, rows: int, shape: tuple[int, int, int]) -> Shard | None:
    """The shard at ``path``, None when it is missing; a file that is not ``rows`` float32
    latents of ``shape`` in full is set aside (one warning line) and None."""
    if not files.exists(path):
        return None
    want = (rows, *shape)
    try:
        if not files.is_local(path):
            array = np.load(files.loadable(path))
            dtype, found, offset, size = array.dtype, array.shape, 0, array.nbytes
        else:
            with open(files.normalize(path), "rb") as f:
                version = np.lib.format.read_magic(f)
                found, fortran, dtype = (np.lib.format.read_array_header_1_0(f)
                                         if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(f))
                offset, size = f.tell(), os.fstat(f.fileno()).st_size - f.tell()
                array = None
                found = "Fortran order" if fortran else found
        if found == want and dtype == np.float32 and size == 4 * int(np.prod(want)):
            return Shard(files.normalize(path), want, offset, array)
        reason = f"{dtype} {found}, {size} bytes; expected float32 {want}"
    except (OSError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    try:
        aside = files.set_aside(path)
        console.warning("%s: damaged (%s); moved to %s, encoding it again", path, reason,
                        os.path.basename(aside))
    except OSError:  # another process set it aside first
        pass
    return None


def _encode_shard(source: ImageSource, data_config: Any, autoencoder: Autoencoder,
                  folder: str, shard: int, kinds: tuple[str, ...]) -> None:
    """Encode shard ``shard`` of every kind in ``kinds`` and write each atomically."""
    start = shard * SHARD_SIZE
    images = clean_images(source, data_config, min(SHARD_SIZE, len(source) - start), start)
    if images.dtype != np.uint8:
        raise ValueError(f"data.autoencoder: {source.name} gives {images.dtype} images; the "
                         "autoencoder encodes uint8 pixels")
    scale, shift = np.float32(autoencoder.scale_factor), np.float32(autoencoder.shift_factor)
    for kind in kinds:
        pixels = images if kind == "latents" else np.ascontiguousarray(images[:, :, ::-1])
        latents = (autoencoder.encode_mean(pixels) - shift) * scale
        with files.atomic_open(_shard_path(folder, kind, shard), "wb") as f:
            np.save(f, latents.astype(np.float32, copy=False))


def encoded_dataset(source: ImageSource, data_config: Any, autoencoder: Autoencoder,
                    shape: tuple[int, int, int], flips: bool) -> LatentDataset:
    """The cached latents of ``source`` (``shape``: the latent grid), encoding the shards the
    cache lacks first (a progress line); ``flips``: with the mirrored images' latents."""
    key = cache_key(source, data_config, autoencoder)
    folder = cache_folder(data_config, key)
    kinds = ("latents", "flipped") if flips else ("latents",)
    n = len(source)
    count = -(-n // SHARD_SIZE)

    def rows(shard: int) -> int:
        return min(SHARD_SIZE, n - shard * SHARD_SIZE)

    def missing() -> list[int]:
        return [i for i in range(count)
                if any(_open_shard(_shard_path(folder, kind, i), rows(i), shape) is None
                       for kind in kinds)]

    todo = missing()
    if todo:
        files.makedirs(folder)
        try:
            files.write_json(files.join(folder, "key.json"), key, exclusive=True)
        except FileExistsError:
            pass
        process, processes = jax.process_index(), jax.process_count()
        console.info("latents: encoding %d of %d images%s into %s", sum(map(rows, todo)), n,
                     " and their mirrors" if flips else "", folder)
        progress = console.Progress("encoding latents", total=count, unit="shard",
                                    done=count - len(todo))
        for share in (True, False):  # this process's share, then what the folder still lacks
            for i in todo:
                kinds_left = tuple(kind for kind in kinds if _open_shard(
                    _shard_path(folder, kind, i), rows(i), shape) is None)
                if kinds_left and (not share or i % processes == process):
                    _encode_shard(source, data_config, autoencoder, folder, i, kinds_left)
                    progress.update(1)
            if share:
                barrier(f"sagd-latents-{key['autoencoder']['weights_sha256'][:8]}-"
                        f"{os.path.basename(folder)}", ENCODE_TIMEOUT_S)
                todo = missing()
        progress.close()
    else:
        console.info("latents: %d %s cached in %s", n, "images and mirrors" if flips
                     else "images", folder)
    shards: dict[str, list[Shard]] = {kind: [] for kind in kinds}
    for kind in kinds:
        for i in range(count):
            shard = _open_shard(_shard_path(folder, kind, i), rows(i), shape)
            if shard is None:
                raise ValueError(f"data.latent_cache: {folder} lost {kind} shard {i} while it "
                                 "was read; run again to encode it")
            shards[kind].append(shard)
    return LatentDataset(folder, n, shape, shards, SHARD_SIZE)


class _PickFlip(grain.transforms.RandomMap):
    """(index, (latents, flipped)) -> float32 ``(h, w, c)``: the mirrored latents with
    probability 1/2 (the pixel pipeline's draw) when ``random_flip``."""

    def __init__(self, random_flip: bool):
        self.random_flip = random_flip

    def random_map(self, element: tuple[int, tuple[np.ndarray, np.ndarray | None]],
                   rng: np.random.Generator) -> np.ndarray:
        _, (latents, flipped) = element
        if self.random_flip and rng.random() < 0.5:
            latents = flipped
        return np.array(latents, np.float32)  # writable, its own memory


def latent_batches(dataset: LatentDataset, seed: int, global_batch_size: int,
                   random_flip: bool, process_index: int = 0, process_count: int = 1
                   ) -> grain.MapDataset:
    """This process's latent batches: ``[s]`` is float32 ``(B / P, h, w, c)`` of step s, the
    latents of the examples of the pixel pipeline's ``batches(...)[s]`` (module docstring)."""
    if random_flip and not dataset.flips:
        raise ValueError(f"data.random_flip=True: {dataset.folder} holds no mirrored latents")
    seed, local = stream_arguments(dataset, seed, global_batch_size, process_index,
                                   process_count)
    elements = stream(dataset, seed).random_map(_PickFlip(random_flip))
    return elements.batch(local, batch_fn=np.stack)[process_index::process_count]
