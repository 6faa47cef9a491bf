"""Sample sets on disk in the layouts the FID tools use: read any of them, write PNG folders.

A set is one of
* an ``.npz``: ``arr_0`` uint8 ``(N, H, W, C)`` pixels (ADM's, EDM's and this project's layout;
  float images in model units only when asked), an optional ``arr_1`` of N integer labels, and
  this project's optional ``float32`` member (model units, preferred when present);
* a folder of PNG / JPEG files (found recursively, sorted by relative path: pytorch-fid's and
  torch-fidelity's input);
* a ``.zip`` of PNG / JPEG files (StyleGAN's dataset archives), sorted by member name.

Every image of a folder or zip must have the same size; grayscale files (Pillow modes ``1``,
``L``, ``LA``, ``I``, ``I;16``) give one channel when every file is grayscale, else every file is
converted to RGB (alpha dropped). ``channels`` forces one or the other. Any problem is a one-line
``ValueError`` starting ``--samples=PATH:`` and naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sagd_jax import files
from sagd_jax.errors import one_line
from sagd_jax.images import IMAGE_EXTENSIONS, as_model_units, to_uint8

GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclasses.dataclass
class SampleSet:
    """``images``: float32 ``(N, H, W, C)`` in model units; ``manifest``: the
    ``manifest.json`` beside an ``.npz`` (``{}`` if none); ``labels``: ``arr_1`` or None;
    ``layout``: ``npz``, ``folder`` or ``zip``."""

    images: np.ndarray
    manifest: dict[str, Any]
    labels: np.ndarray | None
    layout: str


def load(path: str, model_units: bool = False, channels: int | None = None) -> SampleSet:
    """The set at ``path`` (npz, image folder or zip, by what it is); see the module docstring.
    ``model_units``: a float ``arr_0`` holds images in [-1, 1]."""
    where = f"--samples={path}"
    if files.isdir(path):
        names = _folder_images(path)
        if not names:
            raise ValueError(f"{where}: a folder with no {'/'.join(IMAGE_EXTENSIONS)} files")
        pixels = _decode_all(where, names, lambda name: files.read_bytes(name), channels,
                             lambda name: os.path.relpath(name, path))
        return SampleSet(_checked(where, as_model_units(pixels)), {}, None, "folder")
    if not files.isfile(path):
        raise ValueError(f"{where}: no such file or folder")
    with files.open_file(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # else np.load: a pickle?
        kind = "a .zip" if path.lower().endswith(".zip") else "an .npz"
        raise ValueError(f"{where}: " + ("an .npy file, not an .npz archive"
                                         if magic == b"\x93NUMPY" else
                                         f"not {kind} archive (no zip header)"))
    if path.lower().endswith(".zip"):
        return _load_zip(where, path, channels)
    return _load_npz(where, path, model_units)


def _load_npz(where: str, path: str, model_units: bool) -> SampleSet:
    try:
        with np.load(files.loadable(path), allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise ValueError(f"{where}: no arr_0 array (has: {', '.join(data.files)})")
            arr_0 = data["arr_0"]
            images = data["float32"] if "float32" in data.files else None
            labels = data["arr_1"] if "arr_1" in data.files else None
    except Exception as err:  # a damaged zip raises many kinds: BadZipFile, EOFError,
        # OSError, KeyError, ValueError and tokenize errors from the .npy header, ...
        if isinstance(err, ValueError) and str(err).startswith(where):
            raise
        raise ValueError(f"{where}: unreadable ({one_line(err)})") from None
    floating = np.issubdtype(arr_0.dtype, np.floating)
    if model_units and not floating:
        raise ValueError(f"{where}: --model_units, but arr_0 is {arr_0.dtype}, not float "
                         "images; leave --model_units out")
    if images is None:
        if arr_0.dtype != np.uint8 and not (model_units and floating):
            raise ValueError(
                f"{where}: arr_0 is {arr_0.dtype}, not uint8 pixels"
                + ("; if it holds images in model units ([-1, 1]), pass --model_units"
                   if floating else ""))
        images = as_model_units(arr_0)
    elif not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{where}: float32 is {images.dtype}, not float images")
    else:  # the two members are one set: arr_0 is what the FID tools read
        _agree(where, arr_0, images)
    images = _checked(where, images)
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)
                               or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{where}: arr_1 (labels) is {labels.dtype} {labels.shape}; expected "
                         f"{len(images)} integers, one per image")
    manifest = _manifest(where, path)
    if manifest:
        _check_sum(where, path)
    return SampleSet(images, manifest, labels, "npz")


CHECKSUMS = "checksums.json"  # beside samples.npz: what sagd_jax.sample wrote


def sha256(path: str) -> str:
    """The SHA-256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with files.open_file(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def record_sha256(path: str, **extra: Any) -> None:
    """Record the SHA-256 of the file at ``path`` (and ``extra``) in ``checksums.json``
    beside it (the sampler, once ``samples.npz`` is written)."""
    files.write_json(files.join(files.dirname(path), CHECKSUMS),
                     {os.path.basename(path): {"sha256": sha256(path), **extra}})


def recorded_sha256(path: str) -> str | None:
    """The SHA-256 recorded for the file at ``path`` by ``record_sha256``; None when none is
    (a set from before the checksums, or made elsewhere); a ``ValueError`` naming the record
    when it is unreadable."""
    recorded = files.join(files.dirname(path), CHECKSUMS)
    if not files.exists(recorded):
        return None
    try:
        return str(files.read_json(recorded)[os.path.basename(path)]["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"unreadable {recorded} ({one_line(err)})") from None


def _check_sum(where: str, path: str) -> None:
    """Refuse a set whose file is not the one its sampler recorded in ``checksums.json``."""
    try:
        expected = recorded_sha256(path)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if expected is not None and sha256(path) != expected:
        raise ValueError(f"{where}: not the file its sampler wrote (SHA-256 differs from "
                         f"{CHECKSUMS}): changed since; make the set again (same command)")


def _agree(where: str, arr_0: np.ndarray, images: np.ndarray) -> None:
    """Refuse an npz whose ``arr_0`` is not the uint8 pixels of its ``float32`` member."""
    if arr_0.dtype != np.uint8 or arr_0.shape != images.shape:
        raise ValueError(f"{where}: arr_0 is {arr_0.dtype} {arr_0.shape}, float32 is "
                         f"{images.dtype} {images.shape}: arr_0 must be their uint8 pixels")
    differ = int(np.count_nonzero((to_uint8(images) != arr_0).any(axis=(1, 2, 3))))
    if differ:
        raise ValueError(f"{where}: arr_0 and float32 disagree in {differ} of {len(arr_0)} "
                         "images: the set was changed since it was made")


def _load_zip(where: str, path: str, channels: int | None) -> SampleSet:
    try:
        archive = zipfile.ZipFile(files.loadable(path))
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{where}: unreadable ({one_line(err)})") from None
    with archive:
        names = sorted(n for n in archive.namelist()
                       if n.lower().endswith(IMAGE_EXTENSIONS) and not n.endswith("/"))
        if not names:
            raise ValueError(f"{where}: a zip with no {'/'.join(IMAGE_EXTENSIONS)} files")

        def read(name: str) -> bytes:
            try:
                return archive.read(name)
            except (OSError, zipfile.BadZipFile) as err:  # a CRC mismatch among them
                raise ValueError(f"{where}: {name}: unreadable ({one_line(err)})") from None

        contents = [read(n) for n in names]  # ZipFile is not for many threads at once
        by_name = dict(zip(names, contents, strict=True))
        pixels = _decode_all(where, names, by_name.__getitem__, channels, str)
    return SampleSet(_checked(where, as_model_units(pixels)), {}, None, "zip")


def _folder_images(root: str) -> list[str]:
    """Every PNG / JPEG under ``root``, sorted by relative path (local or remote)."""
    found = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for name in files.listdir(folder):
            full = files.join(folder, name)
            if files.isdir(full):
                stack.append(full)
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(full)
    return sorted(found, key=lambda p: os.path.relpath(p, root))


def _decode_all(where: str, names: Sequence[str], read: Callable[[str], bytes],
                channels: int | None, label: Callable[[str], str]) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` of the image files ``names`` (bytes from ``read``), decoded in
    threads; a file that does not decode, or whose size differs from the first's, is named."""
    from PIL import Image

    def decode(name: str) -> tuple[str, Any]:
        try:
            with Image.open(io.BytesIO(read(name))) as img:
                img.load()
                return img.mode, img.copy()
        except ValueError as err:
            if str(err).startswith(where):
                raise
            raise ValueError(f"{where}: {label(name)}: not a readable image "
                             f"({one_line(err)})") from None
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise ValueError(f"{where}: {label(name)}: not a readable image "
                             f"({one_line(err)})") from None

    with ThreadPoolExecutor(8) as pool:  # Pillow decodes with the GIL released
        decoded = list(pool.map(decode, names))
    if channels is None:
        channels = 1 if all(mode in GRAYSCALE_MODES for mode, _ in decoded) else 3
    first = decoded[0][1].size
    out = np.empty((len(names), first[1], first[0], channels), np.uint8)
    for i, (name, (_, img)) in enumerate(zip(names, decoded, strict=True)):
        if img.size != first:
            raise ValueError(f"{where}: {label(name)} is {img.size[0]}x{img.size[1]}, "
                             f"{label(names[0])} is {first[0]}x{first[1]}: every image must "
                             "have one size")
        if channels == 1:
            array = np.asarray(img.convert("L"), np.uint8)[..., None]
        else:
            array = np.asarray(img.convert("RGB"), np.uint8)
        out[i] = array
    return out


def _checked(where: str, images: np.ndarray) -> np.ndarray:
    """``images`` as float32, refused unless ``(N, H, W, C)``, non-empty and finite."""
    if images.ndim != 4:
        raise ValueError(f"{where}: expected (N, H, W, C) images, got shape {images.shape}")
    if images.size == 0:
        raise ValueError(f"{where}: holds no images (shape {images.shape})")
    bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
    if bad:
        raise ValueError(f"{where}: {bad} non-finite values in the images")
    return images.astype(np.float32, copy=False)


def _manifest(where: str, path: str) -> dict[str, Any]:
    """The ``manifest.json`` of ``sagd_jax.sample`` beside ``path``, or ``{}``."""
    manifest_path = files.join(files.dirname(path), "manifest.json")
    if not files.exists(manifest_path):
        return {}
    try:
        manifest = files.read_json(manifest_path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: unreadable {manifest_path} ({one_line(err)})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{where}: {manifest_path} is not a JSON object")
    return manifest


def write_pngs(images: np.ndarray, folder: str) -> int:
    """Each of ``images`` (uint8 ``(N, H, W, C)``, or float in model units) as
    ``folder/NNNNNN.png`` (its index); files already there are kept as they are (a grown set
    adds its new ones). Returns the number written."""
    from PIL import Image

    pixels = images if images.dtype == np.uint8 else to_uint8(images)
    files.makedirs(folder)
    present = set(files.listdir(folder))
    written = 0
    for i, image in enumerate(pixels):
        name = f"{i:06d}.png"
        if name in present:
            continue
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image,
                                  "L" if image.shape[-1] == 1 else "RGB")
        try:
            with files.atomic_open(files.join(folder, name), "wb", exclusive=True) as f:
                picture.save(f, format="PNG")
        except FileExistsError:  # another writer of the same set
            continue
        written += 1
    return written
