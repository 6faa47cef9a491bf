"""Inception-v3 as FID defines it, in Flax: 2048-d pool features and 1008 logits.

The network is the TensorFlow graph of 2015-12-05 that FID, KID and the Inception Score are
defined on, as ported by pytorch-fid and torch-fidelity: torchvision's Inception-v3 with the
FID patches (average pools that exclude the padding, a max pool in the last block's pool
branch, 1008 classes), TF1's bilinear resize to 299x299 (no half-pixel centres) and the input
scaling ``(x - 128) / 128`` of uint8 pixels.

    features = InceptionFeatures.from_file(path)       # pt_inception-2015-12-05-6726825d.pth
    f = features(images)                               # uint8 (N, H, W, 3 or 1) -> (N, 2048)
    f, logits = features.features_and_logits(images)   # + (N, 1008), bias-free as torch-fidelity

Weights: the torch state dict that users download for pytorch-fid
(``pt_inception-2015-12-05-6726825d.pth``; torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` holds the same tensors), read without torch; or an
``.npz`` with the same tensor names. ``weights_path`` finds it: ``--inception_weights``,
``$SAGD_JAX_INCEPTION``, the cache folder, else a download when online, else a one-line error
saying where to get the file and where to put it. Nothing is ever committed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sagd_jax import console, files
from sagd_jax.errors import one_line

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
ENV_VAR = "SAGD_JAX_INCEPTION"
URL_ENV_VAR = "SAGD_JAX_INCEPTION_URL"
# torch.hub's HASH_REGEX (``-([a-f0-9]*)\.``), anchored on the last ``-`` of the name.
HASH_REGEX = re.compile(r"-([a-f0-9]+)\.[^-]*$")
DOWNLOAD_CHUNK = 1 << 20
INPUT_SIZE = 299
FEATURE_DIM, NUM_CLASSES = 2048, 1008
BN_EPSILON = 1e-3
PRECISION = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on accelerators: FID is exact
# On a CPU, XLA (jaxlib 0.10) hands every convolution to YNNPACK, which runs this network's
# unpadded 3x3 convolutions 3-7x slower than padded ones; compiled without it, the network is
# 2.25x faster (benchmarks/inception_throughput.py; the same features to 1e-6). Only for this
# program: the training step is faster with YNNPACK.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


class BasicConv(nn.Module):
    """Conv (no bias) -> batch norm with the stored statistics (eps 1e-3) -> ReLU; NHWC."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (ph, pw) = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.strides,
                    padding=((ph, ph), (pw, pw)), use_bias=False, precision=PRECISION,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average over the valid pixels only (TF's pool; count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 2, pad: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """The last two blocks; the FID graph's second one pools by max, not average."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)],
                             axis=-1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                             axis=-1)
        pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool_same(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """``(N, 299, 299, 3)`` float in ``[-1, 1]`` -> (pool features ``(N, 2048)``, bias-free
    logits ``(N, 1008)``: ``features @ fc.kernel``, torch-fidelity's ``logits_unbiased``)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_CLASSES, use_bias=False, precision=PRECISION, name="fc")(features)
        return features, logits


@functools.lru_cache(maxsize=8)
def _tf1_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres) along one axis:
    source ``out * (in / out)`` in float32, its floor, the next index (clamped) and the
    fraction; the same arithmetic as torch-fidelity's TF1-compatible resize."""
    grid = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
    lo = grid.astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (grid - lo.astype(np.float32)).astype(np.float32)


def resize_tf1(x: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """``(N, H, W, C)`` float -> ``(N, size, size, C)`` by TF1's bilinear resize."""
    ylo, yhi, dy = _tf1_bilinear_taps(x.shape[1], size)
    xlo, xhi, dx = _tf1_bilinear_taps(x.shape[2], size)
    rows_lo, rows_hi = x[:, ylo], x[:, yhi]
    dx = dx[None, None, :, None]
    top = rows_lo[:, :, xlo] + (rows_lo[:, :, xhi] - rows_lo[:, :, xlo]) * dx
    bottom = rows_hi[:, :, xlo] + (rows_hi[:, :, xhi] - rows_hi[:, :, xlo]) * dx
    return top + (bottom - top) * dy[None, :, None, None]


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """uint8 ``(N, H, W, C)``, C in {1, 3} -> float32 ``(N, size, size, 3)`` network input."""
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return (resize_tf1(x, size) - 128.0) / 128.0


def variables_from_state_dict(state: dict[str, np.ndarray], where: str = "weights"
                              ) -> dict[str, Any]:
    """Flax variables of ``InceptionV3`` from the torch state dict's tensors (names as in
    pytorch-fid / torch-fidelity). Every tensor is checked against the model's shape; a
    missing, extra or misshapen one is a one-line ``ValueError`` starting with ``where``."""
    template = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
    expected: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        keys = tuple(k.key for k in path)  # (collection, module..., variable)
        collection, *modules, variable = keys
        torch_name = {"kernel": "weight", "scale": "weight", "bias": "bias",
                      "mean": "running_mean", "var": "running_var"}[variable]
        expected[".".join([*modules, torch_name])] = (keys, leaf.shape)
    names = {k for k in state if not k.endswith("num_batches_tracked") and k != "fc.bias"}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        raise ValueError(f"{where}: not the FID Inception-v3 state dict ("
                         + "; ".join(f"{label}: {', '.join(v[:3])}" + (" ..." if len(v) > 3
                                                                        else "")
                                     for label, v in (("missing", missing), ("unexpected", extra))
                                     if v) + ")")
    variables: dict[str, Any] = {}
    for name, (keys, shape) in expected.items():
        value = np.asarray(state[name], np.float32)
        if value.ndim == 4:  # torch conv (O, I, kh, kw) -> flax (kh, kw, I, O)
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:  # torch linear (out, in) -> flax (in, out)
            value = value.T
        if value.shape != shape:
            raise ValueError(f"{where}: {name} has shape {value.shape} (as flax), expected {shape}")
        node = variables
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return variables


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict of the network's tensor names and shapes with random values (He-normal
    kernels so activations stay O(1), random batch-norm statistics): for tests, benchmarks
    and tiny runs where the real weights cannot be downloaded. ``np.savez(path, **it)`` gives
    a file that ``read_weights`` takes."""
    rng = np.random.default_rng(seed)
    template = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
    state: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        _, *modules, variable = (k.key for k in path)
        shape = leaf.shape
        if variable == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            name = "weight"
        else:
            name = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                    "var": "running_var"}[variable]
            positive = variable in ("scale", "var")
            value = (rng.uniform(0.5, 1.5, shape) if positive else rng.normal(0, 0.1, shape))
        state[".".join([*modules, name])] = np.asarray(value, np.float32)
    state["fc.bias"] = rng.normal(0, 0.1, NUM_CLASSES).astype(np.float32)
    return state


def read_weights(path: str) -> tuple[dict[str, Any], np.ndarray]:
    """The network's variables and the fc bias ``(1008,)`` from a torch ``.pth`` state dict or
    an ``.npz`` of the same tensors; one-line ``ValueError`` naming ``path`` on any problem."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except Exception as err:
            raise ValueError(f"{path}: unreadable .npz ({one_line(err)})") from None
    else:
        from sagd_jax.metrics.torch_weights import read_state_dict

        state = read_state_dict(path)
    variables = variables_from_state_dict(state, where=path)
    bias = np.asarray(state["fc.bias"], np.float32)
    if bias.shape != (NUM_CLASSES,):
        raise ValueError(f"{path}: fc.bias has shape {bias.shape}, expected ({NUM_CLASSES},)")
    return variables, bias


def _cache_path() -> str:

    return os.path.join(files.cache_dir(), "inception", WEIGHTS_FILE)


def hash_prefix(url: str) -> str | None:
    """The SHA-256 prefix in the name of ``url``'s file as torch.hub reads it (hex digits after
    a ``-``, before the extension: ``...-6726825d.pth`` -> ``6726825d``; the last such part),
    or None."""
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    match = HASH_REGEX.search(name)
    return match.group(1) if match else None


def _size_text(size: int | None) -> str:
    if size is None:
        return "size unknown"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def _fetch(url: str, dest: str, timeout_s: float) -> None:
    """One try of ``_download``: stream ``url`` into a hidden temporary file beside ``dest``,
    hashing it, then link it into place if it checks out; the temporary file never stays."""
    prefix = hash_prefix(url)
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        folder = os.path.dirname(dest)
        os.makedirs(folder, exist_ok=True)
        console.info("inception weights: downloading %s (%s) to %s", url, _size_text(size), dest)
        part = os.path.join(folder, f".{os.path.basename(dest)}.{uuid.uuid4().hex[:12]}.partial")
        try:
            sha256, received = hashlib.sha256(), 0
            with open(part, "xb") as f:  # open(): the umask's permissions, as torch.hub
                while chunk := response.read(DOWNLOAD_CHUNK):
                    sha256.update(chunk)
                    f.write(chunk)
                    received += len(chunk)
            if size is not None and received != size:
                raise ConnectionError(f"{url}: the connection ended after {received} of "
                                      f"{size} bytes")
            digest = sha256.hexdigest()
            if prefix:  # torch.hub's check: the digest starts with the name's hash prefix
                if not digest.startswith(prefix):
                    raise ValueError(f"SHA-256 {digest} of the download does not start with "
                                     f"{prefix}, the hash in the file's name: {url}")
            else:
                read_weights(part)  # no hash to check: an error page is still not cached
            with contextlib.suppress(FileExistsError):
                os.link(part, dest)  # never replaces a file another process put there
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)


def _download(url: str, dest: str, timeout_s: float, retries: int = 1) -> None:
    """``url`` into ``dest``, kept only if its SHA-256 starts with the hash prefix in the URL's
    file name (torch.hub's ``download_url_to_file(..., hash_prefix)``), or, a name without
    one, if it reads as the network's weights; a network error is tried ``retries`` more
    times (not a 4xx answer). ``ValueError`` (one line, both hashes) on a mismatch."""
    for attempt in range(retries + 1):
        try:
            _fetch(url, dest, timeout_s)
            return
        except (OSError, http.client.HTTPException) as err:
            final = isinstance(err, urllib.error.HTTPError) and err.code < 500
            if final or attempt == retries:
                raise
            console.warning("inception weights: %s (%s); trying again", url, one_line(err))


def weights_path(flag: str | None = None, *, download: bool = True, url: str | None = None,
                 timeout_s: float = 20.0) -> str:
    """Where the Inception weights are: ``flag`` (``--inception_weights``), else
    ``$SAGD_JAX_INCEPTION``, else ``<cache>/inception/pt_inception-...pth``, fetched first
    when absent and ``download`` from ``url`` (default ``$SAGD_JAX_INCEPTION_URL``, e.g. a
    cluster's mirror, else pytorch-fid's release; checked by ``_download``, one retry). A
    given path that does not exist, or no file and no good download: a one-line
    ``ValueError`` saying why, where to get the file and where to put it (nothing is kept)."""
    url = url or os.environ.get(URL_ENV_VAR) or WEIGHTS_URL
    for label, given in (("--inception_weights", flag), (f"${ENV_VAR}", os.environ.get(ENV_VAR))):
        if given:
            if not os.path.isfile(given):
                raise ValueError(f"{label}={given}: no such file")
            return given
    cached = _cache_path()
    if os.path.isfile(cached):
        return cached
    problem = "downloads are off"
    if download:
        try:
            _download(url, cached, timeout_s)
            return cached
        except (OSError, ValueError, http.client.HTTPException) as err:
            problem = f"download failed: {one_line(err, limit=600)}"
    raise ValueError(f"Inception weights: no {WEIGHTS_FILE} ({problem}); get it from "
                     f"{WEIGHTS_URL} and put it at {cached}, or pass --inception_weights=PATH "
                     f"or set ${ENV_VAR}")


class InceptionFeatures:
    """FID Inception-v3 on uint8 images, jitted and sharded over the batch axis of a mesh.

    ``__call__(images)``: ``(N, H, W, C)`` uint8, C = 1 (replicated) or 3 -> float32
    ``(N, 2048)``. ``features_and_logits(images)`` adds the bias-free logits ``(N, 1008)``
    (the Inception Score's input, as torch-fidelity). Images go through in batches of
    ``batch_size`` (rounded up to the device count; the last one padded: one compiled shape
    per input size; a set smaller than a batch goes as one batch of its own size).
    ``input_size``: the network's input, 299 as FID defines it; a smaller one (>= 75) makes
    other, cheaper features, for tests only (it is part of ``name``)."""

    def __init__(self, variables: dict[str, Any], fc_bias: np.ndarray, *,
                 mesh: jax.sharding.Mesh | None = None, batch_size: int = 100,
                 name: str = WEIGHTS_FILE, input_size: int = INPUT_SIZE):
        from sagd_jax.sharding import batch_sharding, make_mesh, replicate

        if input_size < 75:
            raise ValueError(f"input_size={input_size}: Inception-v3 needs at least 75")
        self.name = name if input_size == INPUT_SIZE else f"{name}@{input_size}px"
        self.fc_bias = np.asarray(fc_bias, np.float32)
        self.mesh = mesh if mesh is not None else make_mesh()
        count = self.mesh.devices.size
        self.batch_size = -(-batch_size // count) * count
        self._variables = replicate(variables, self.mesh)
        model = InceptionV3()
        self._sharding = batch_sharding(self.mesh)

        # Two programs: the resize (one compile per input size, cheap) and the network (one
        # compile for every input size).
        self._preprocess = jax.jit(functools.partial(preprocess, size=input_size),
                                   out_shardings=self._sharding)
        shardings = (self._sharding, self._sharding)
        self._network = jax.jit(model.apply, out_shardings=shardings)
        self._fallback = None
        if self.mesh.devices.flat[0].platform == "cpu":  # see CPU_COMPILER_OPTIONS
            self._fallback = self._network
            self._network = jax.jit(model.apply, out_shardings=shardings,
                                    compiler_options=CPU_COMPILER_OPTIONS)

    @classmethod
    def from_file(cls, path: str | None = None, **kwargs: Any) -> InceptionFeatures:
        """Load the weights at ``path`` (default: ``weights_path()``)."""
        path = path or weights_path()
        variables, bias = read_weights(path)
        return cls(variables, bias, name=os.path.basename(path), **kwargs)

    def features_and_logits(self, images: np.ndarray,
                            progress: Callable[[int], None] | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """float32 features ``(N, 2048)`` and bias-free logits ``(N, 1008)`` of uint8
        ``images (N, H, W, C)``; ``progress(n)`` after each batch of ``n`` images."""
        images = check_images(images)
        devices = self.mesh.devices.size
        # A set smaller than a batch goes as one smaller batch (not padded to batch_size).
        size = min(self.batch_size, -(-len(images) // devices) * devices)
        outs: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(images), size):
            chunk = images[start:start + size]
            count = len(chunk)
            if count < size:
                chunk = np.concatenate(
                    [chunk, np.zeros((size - count, *chunk.shape[1:]), np.uint8)])
            x = self._preprocess(jax.device_put(chunk, self._sharding))
            feats, logits = self._apply_network(x)
            outs.append((np.asarray(feats)[:count], np.asarray(logits)[:count]))
            if progress is not None:
                progress(count)
        return (np.concatenate([f for f, _ in outs]), np.concatenate([g for _, g in outs]))

    def _apply_network(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        try:
            return self._network(self._variables, x)
        except jax.errors.JaxRuntimeError as err:  # an XLA without the option: the default
            if self._fallback is None or "compile option" not in str(err).lower():
                raise
            self._network, self._fallback = self._fallback, None
            return self._network(self._variables, x)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.features_and_logits(images)[0]


def check_images(images: Any, where: str = "images") -> np.ndarray:
    """``images`` as uint8 ``(N, H, W, C)`` with C in {1, 3} and N >= 1, else a one-line
    ``ValueError``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: Inception takes uint8 pixels, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise ValueError(f"{where}: need (N >= 1, H, W, 1 or 3) images, got {images.shape}")
    return images


__all__: Sequence[str] = ("InceptionFeatures", "InceptionV3", "preprocess", "random_state_dict",
                          "read_weights", "resize_tf1", "variables_from_state_dict",
                          "weights_path")
