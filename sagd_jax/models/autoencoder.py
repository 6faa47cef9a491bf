"""Stable Diffusion's VAE (diffusers' ``AutoencoderKL``) in Flax linen, for latent diffusion.

``Autoencoder.from_pretrained(path)`` reads a diffusers ``AutoencoderKL`` folder (``config.json``
and ``diffusion_pytorch_model.safetensors``, as ``save_pretrained`` writes them; a pipeline
folder holding them in ``vae/`` is accepted too) or one ``.safetensors`` file (diffusers' or the
original LDM parameter names, a whole SD checkpoint's ``first_stage_model.`` included): a file
alone has SD's VAE architecture and scale factor 0.18215. Paths may be local, ``file://`` or
``gs://`` (``sagd_jax.files``); nothing is downloaded. SD's VAE: ``stabilityai/sd-vae-ft-ema``
or ``stabilityai/sd-vae-ft-mse`` on Hugging Face (both files into one folder).

Shapes and units (all NHWC, ``d = downsample = 2 ** (len(block_out_channels) - 1)``, 8 for SD):

* ``encode_mean(images)``: uint8 ``(N, H, W, in_channels)`` in 0..255 -> float32
  ``(N, H/d, W/d, latent_channels)``, the posterior's mean (the first half of ``quant_conv``'s
  output), the images mapped to [-1, 1] first (``x / 255 * 2 - 1``) as diffusers' pipelines
  do. Not yet scaled.
* ``decode(latents)``: those unscaled latents -> uint8 images, the decoder's [-1, 1] output
  mapped as diffusers' image processor does (``round(clip(x / 2 + 0.5, 0, 1) * 255)``);
  ``decode_float`` returns the decoder's float32 output itself, in [-1, 1] units, unclipped.

The scale factor: a diffusion model works on ``(mean - shift_factor) * scale_factor``, latents
of about unit variance (``scale_factor`` is config.json's ``scaling_factor``, 0.18215 for SD 1/2,
``shift_factor`` its ``shift_factor``, 0 where absent); its samples are divided by
``scale_factor`` (and shifted back) before ``decode``. Both methods run jitted, in chunks of
``batch_size`` images (the last chunk padded, so one program serves every chunk), and return
NumPy arrays, so thousands of images go through in host memory.

Architecture (diffusers' names, which are the parameter tree's, ``_i`` for ``.i``): encoder
``conv_in``; per level ``down_blocks.i`` of ``layers_per_block`` ``resnets`` (group norm, SiLU,
3x3 conv, twice; a 1x1 ``conv_shortcut`` where the width changes) and, below the last level,
``downsamplers.0.conv`` (zero pad right and bottom by 1, 3x3 conv of stride 2); ``mid_block``:
resnet, single-head self-attention (group norm, ``to_q``/``to_k``/``to_v``/``to_out.0`` linear
layers, a residual), resnet; group norm, SiLU, ``conv_out`` to ``2 * latent_channels``; then
``quant_conv`` (1x1). Decoder: ``post_quant_conv`` (1x1), ``conv_in``, ``mid_block``, per level
from the coarsest ``up_blocks.i`` of ``layers_per_block + 1`` resnets and (but the last)
``upsamplers.0.conv`` (nearest 2x, 3x3 conv), group norm, SiLU, ``conv_out``. Group norms have
``norm_num_groups`` groups and epsilon 1e-6. Computed in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from sagd_jax import files
from sagd_jax.errors import one_line

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# Tried in this order in a folder (the second is diffusers' half-precision variant).
WEIGHTS_NAMES = (WEIGHTS_NAME, "diffusion_pytorch_model.fp16.safetensors")
NORM_EPS = 1e-6
DEFAULT_BATCH_SIZE = 16
# Safetensors dtypes a weight may have (read as float32).
_FLOAT_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                 "BF16": ml_dtypes.bfloat16}
# Keys a training checkpoint may hold beside the autoencoder's (LDM's loss and EMA state).
_IGNORED_PREFIXES = ("loss.", "model_ema.")
# Older diffusers names of the mid-block attention's layers.
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """The architecture and latent scaling of an ``AutoencoderKL`` (defaults: SD's VAE)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @classmethod
    def from_json(cls, raw: Any, where: str = CONFIG_NAME) -> AutoencoderConfig:
        """The config of diffusers' ``config.json`` dict ``raw`` (a key it lacks takes
        diffusers' default); a one-line ValueError naming ``where`` and the key for another
        architecture or a bad value. ``sample_size`` and ``force_upcast`` are not used."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: not a JSON object but a {type(raw).__name__}")

        def bad(key: str, requirement: str) -> ValueError:
            return ValueError(f"{where}: {key}={raw.get(key)!r}: {requirement}")

        def positive(key: str, default: int) -> int:
            value = raw.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, "must be an integer >= 1")
            return value

        def flag(key: str) -> bool:
            value = raw.get(key, True)
            if not isinstance(value, bool):
                raise bad(key, "must be true or false")
            return value

        def number(key: str, default: float | None) -> float | None:
            value = raw.get(key, default)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not math.isfinite(value)):
                raise bad(key, "must be a finite number")
            return value

        name = raw.get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            raise bad("_class_name", "another architecture; this reads diffusers' AutoencoderKL")
        if raw.get("act_fn", "silu") != "silu":
            raise bad("act_fn", "only silu (AutoencoderKL's) is implemented")
        for key in ("latents_mean", "latents_std"):
            if raw.get(key) is not None:
                raise bad(key, "per-channel latent statistics are not supported")
        channels = raw.get("block_out_channels", [64])
        if (not isinstance(channels, (list, tuple)) or not channels or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)):
            raise bad("block_out_channels", "must be a non-empty list of integers >= 1")
        for key, kind in (("down_block_types", "DownEncoderBlock2D"),
                          ("up_block_types", "UpDecoderBlock2D")):
            types = raw.get(key, [kind] * len(channels))
            if not isinstance(types, (list, tuple)) or list(types) != [kind] * len(channels):
                raise bad(key, f"must be {kind}, once per block_out_channels entry "
                               f"({len(channels)}): another architecture")
        groups = positive("norm_num_groups", 32)
        if any(c % groups for c in channels):
            raise bad("norm_num_groups", f"must divide every block_out_channels {channels}")
        scaling = number("scaling_factor", 0.18215)
        if scaling is None or scaling <= 0:
            raise bad("scaling_factor", "must be a number > 0")
        return cls(
            in_channels=positive("in_channels", 3),
            out_channels=positive("out_channels", 3),
            latent_channels=positive("latent_channels", 4),
            block_out_channels=tuple(channels),
            layers_per_block=positive("layers_per_block", 1),
            norm_num_groups=groups,
            scaling_factor=float(scaling),
            shift_factor=float(number("shift_factor", None) or 0.0),
            use_quant_conv=flag("use_quant_conv"),
            use_post_quant_conv=flag("use_post_quant_conv"),
            mid_block_add_attention=flag("mid_block_add_attention"),
        )

    def to_json(self) -> dict[str, Any]:
        """This config as diffusers' ``config.json`` of an ``AutoencoderKL``."""
        levels = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor or None,
            "use_quant_conv": self.use_quant_conv,
            "use_post_quant_conv": self.use_post_quant_conv,
            "mid_block_add_attention": self.mid_block_add_attention,
        }


SD_CONFIG = AutoencoderConfig()  # a lone weights file's architecture


# --- the networks ---------------------------------------------------------------------------
def _conv(features: int, kernel: int, name: str, stride: int = 1,
          padding: Any = "SAME") -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding, name=name)


def _norm(groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(groups, epsilon=NORM_EPS, use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
    """(B, H, W, C_in) -> (B, H, W, features): x + conv(silu(norm(conv(silu(norm(x))))))."""

    features: int
    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _conv(self.features, 3, "conv1")(nn.silu(_norm(self.groups, "norm1")(x)))
        h = _conv(self.features, 3, "conv2")(nn.silu(_norm(self.groups, "norm2")(h)))
        if x.shape[-1] != self.features:
            x = _conv(self.features, 1, "conv_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, with a residual: (B, H, W, C) -> same."""

    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        y = _norm(self.groups, "group_norm")(x).reshape(b, height * width, c)
        q, k, v = (nn.Dense(c, name=name)(y) for name in ("to_q", "to_k", "to_v"))
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c), axis=-1)
        a = nn.Dense(c, name="to_out_0")(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + a.reshape(b, height, width, c)


class MidBlock(nn.Module):
    """Resnet, attention (unless ``attention`` is False), resnet, at constant width."""

    groups: int
    attention: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = ResnetBlock(c, self.groups, name="resnets_0")(x)
        if self.attention:
            x = Attention(self.groups, name="attentions_0")(x)
        return ResnetBlock(c, self.groups, name="resnets_1")(x)


class Downsample(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, C): zero pad bottom and right by one, 3x3 conv, stride 2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv(x.shape[-1], 3, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
    """(B, H, W, C) -> (B, 2H, 2W, C): nearest-neighbour 2x, 3x3 conv."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, "conv")(x)


class DownBlock(nn.Module):
    """``layers`` resnets to ``features`` channels, then (if ``down``) a downsampler."""

    features: int
    layers: int
    groups: int
    down: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.layers):
            x = ResnetBlock(self.features, self.groups, name=f"resnets_{j}")(x)
        return Downsample(name="downsamplers_0")(x) if self.down else x


class UpBlock(nn.Module):
    """``layers`` resnets to ``features`` channels, then (if ``up``) an upsampler."""

    features: int
    layers: int
    groups: int
    up: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.layers):
            x = ResnetBlock(self.features, self.groups, name=f"resnets_{j}")(x)
        return Upsample(name="upsamplers_0")(x) if self.up else x


class Encoder(nn.Module):
    """(B, H, W, in_channels) in [-1, 1] -> (B, H/d, W/d, 2 * latent_channels): mean, log-var."""

    config: AutoencoderConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        channels, groups = cfg.block_out_channels, cfg.norm_num_groups
        x = _conv(channels[0], 3, "conv_in")(x)
        for i, c in enumerate(channels):
            x = DownBlock(c, cfg.layers_per_block, groups, i < len(channels) - 1,
                          name=f"down_blocks_{i}")(x)
        x = MidBlock(groups, cfg.mid_block_add_attention, name="mid_block")(x)
        x = nn.silu(_norm(groups, "conv_norm_out")(x))
        return _conv(2 * cfg.latent_channels, 3, "conv_out")(x)


class Decoder(nn.Module):
    """(B, h, w, latent_channels) -> (B, h*d, w*d, out_channels) in about [-1, 1]."""

    config: AutoencoderConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        channels, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
        x = _conv(channels[0], 3, "conv_in")(z)
        x = MidBlock(groups, cfg.mid_block_add_attention, name="mid_block")(x)
        for i, c in enumerate(channels):
            x = UpBlock(c, cfg.layers_per_block + 1, groups, i < len(channels) - 1,
                        name=f"up_blocks_{i}")(x)
        x = nn.silu(_norm(groups, "conv_norm_out")(x))
        return _conv(cfg.out_channels, 3, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """The Flax network: ``encode_mean`` (uint8 images -> posterior mean), ``decode_float``
    (latents -> [-1, 1] images), ``decode`` (latents -> uint8 images); ``init`` runs both."""

    config: AutoencoderConfig

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        moments, latent = 2 * cfg.latent_channels, cfg.latent_channels
        self.quant_conv = _conv(moments, 1, "quant_conv") if cfg.use_quant_conv else None
        self.post_quant_conv = (_conv(latent, 1, "post_quant_conv")
                                if cfg.use_post_quant_conv else None)

    def encode_mean(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0 * 2.0 - 1.0
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[..., :self.config.latent_channels]

    def decode_float(self, latents: jax.Array) -> jax.Array:
        z = latents.astype(jnp.float32)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(self, latents: jax.Array) -> jax.Array:
        x = jnp.clip(self.decode_float(latents) / 2.0 + 0.5, 0.0, 1.0)
        return jnp.round(x * 255.0).astype(jnp.uint8)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.decode_float(self.encode_mean(images))


# --- diffusers' parameter names ---------------------------------------------------------------
def _torch_key(path: tuple[str, ...]) -> str:
    """A Flax parameter path -> its diffusers name: ``("encoder", "down_blocks_0", "resnets_1",
    "conv1", "kernel")`` -> ``encoder.down_blocks.0.resnets.1.conv1.weight``."""
    parts = []
    for name in path[:-1]:
        match = re.fullmatch(r"(.+)_(\d+)", name)
        parts += [match.group(1), match.group(2)] if match else [name]
    return ".".join([*parts, "bias" if path[-1] == "bias" else "weight"])


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """The PyTorch shape of a Flax parameter: conv kernels HWIO -> OIHW, linear (in, out) ->
    (out, in)."""
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _to_flax(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def _to_torch(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


_LDM_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
                  "proj_out": "to_out.0"}


def _ldm_key(key: str, levels: int) -> str:
    """An original LDM/CompVis VAE name -> diffusers' (its decoder's ``up.i`` counts from the
    finest level, diffusers' ``up_blocks.i`` from the coarsest)."""

    def up(m: re.Match[str]) -> str:
        block = levels - 1 - int(m.group(1))
        return f"decoder.up_blocks.{block}." + (
            "resnets." if m.group(2) == "block" else "upsamplers.0.")

    key = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", key)
    key = re.sub(r"^encoder\.down\.(\d+)\.downsample\.",
                 r"encoder.down_blocks.\1.downsamplers.0.", key)
    key = re.sub(r"^decoder\.up\.(\d+)\.(block|upsample)\.", up, key)
    key = re.sub(r"\.mid\.block_([12])\.",
                 lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}.", key)
    key = re.sub(r"\.mid\.attn_1\.(norm|q|k|v|proj_out)\.",
                 lambda m: f".mid_block.attentions.0.{_LDM_ATTENTION[m.group(1)]}.", key)
    key = re.sub(r"\.nin_shortcut\.", ".conv_shortcut.", key)
    return re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", key)


def _diffusers_names(tensors: dict[str, np.ndarray], levels: int) -> dict[str, np.ndarray]:
    """``tensors`` under today's diffusers names: a whole SD checkpoint's
    ``first_stage_model.`` keys alone, LDM names and older attention names translated."""
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if "encoder.down.0.block.0.conv1.weight" in tensors:
        tensors = {_ldm_key(k, levels): v for k, v in tensors.items()}
    pattern = re.compile(r"\.attentions\.0\.(query|key|value|proj_attn)\.")
    return {pattern.sub(lambda m: f".attentions.0.{_OLD_ATTENTION[m.group(1)]}.", k): v
            for k, v in tensors.items()}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of the safetensors file ``path`` (float dtypes, bfloat16 included, as
    stored); a one-line ValueError naming ``path`` for a missing, truncated or other file."""
    import safetensors

    try:
        data = files.read_bytes(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    try:
        views = safetensors.deserialize(data)
    except Exception as err:  # SafetensorError: truncated, not safetensors at all
        raise ValueError(f"{path}: not a safetensors file, or truncated "
                         f"({one_line(err, 120)})") from None
    out = {}
    for name, view in views:
        dtype = _FLOAT_DTYPES.get(view["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: {name} has dtype {view['dtype']}, not a float")
        out[name] = np.frombuffer(view["data"], dtype).reshape(view["shape"])
    return out


# --- the autoencoder ----------------------------------------------------------------------------
def _abstract_params(config: AutoencoderConfig) -> Any:
    side = 2 ** (len(config.block_out_channels) - 1)
    images = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.uint8)
    return jax.eval_shape(AutoencoderKL(config).init, jax.random.key(0), images)["params"]


@functools.cache
def _jitted(config: AutoencoderConfig, precision: str | None,
            method: str) -> Callable[[Any, jax.Array], jax.Array]:
    """``AutoencoderKL(config).<method>`` jitted, one per config (autoencoders of one
    architecture share their compiled programs)."""
    module = AutoencoderKL(config)

    def run(params: Any, x: jax.Array) -> jax.Array:
        with jax.default_matmul_precision(precision):
            return module.apply({"params": params}, x, method=getattr(AutoencoderKL, method))

    return jax.jit(run)


def _download(folder: str) -> str:
    return (f"download stabilityai/sd-vae-ft-ema (or sd-vae-ft-mse) from Hugging Face "
            f"({WEIGHTS_NAME} and {CONFIG_NAME}) into {folder}")


def _resolve(path: str, label: str) -> tuple[str | None, str]:
    """(config.json or None, weights file) of ``path``: a folder (or its ``vae/``), its
    config.json, or a lone weights file."""
    if files.isfile(path) and files.normalize(path).rstrip("/").endswith("/" + CONFIG_NAME):
        path = files.dirname(path)
    elif files.isfile(path):
        return None, path
    if not files.isdir(path):
        raise ValueError(f"{label}: no such file or folder; {_download(path)}")
    folder = path
    if not files.exists(files.join(path, CONFIG_NAME)) and files.exists(
            files.join(path, "vae", CONFIG_NAME)):
        folder = files.join(path, "vae")
    config = files.join(folder, CONFIG_NAME)
    if not files.exists(config):
        raise ValueError(f"{label}: a folder without {CONFIG_NAME} (nor vae/{CONFIG_NAME}); "
                         f"{_download(path)}")
    for name in WEIGHTS_NAMES:
        if files.exists(files.join(folder, name)):
            return config, files.join(folder, name)
    others = [n for n in ("diffusion_pytorch_model.bin",) if files.exists(files.join(folder, n))]
    held = f" (it holds {others[0]}, a PyTorch pickle, which is not read)" if others else ""
    raise ValueError(f"{label}: no {WEIGHTS_NAME} in {folder}{held}; {_download(folder)}")


class Autoencoder:
    """A pretrained ``AutoencoderKL``: jitted, batched ``encode_mean`` and ``decode`` (module
    docstring). Attributes: ``config``, ``params`` (the Flax tree), ``scale_factor``,
    ``shift_factor``, ``latent_channels``, ``downsample``, ``batch_size``.

    ``precision``: the matmul and convolution precision (``jax.default_matmul_precision``):
    None keeps JAX's default (float32 on a CPU, TF32 on recent NVIDIA GPUs, bfloat16 passes on
    a TPU), ``"highest"`` computes in float32 everywhere (slower on GPUs and TPUs)."""

    def __init__(self, config: AutoencoderConfig, params: Any,
                 batch_size: int = DEFAULT_BATCH_SIZE, precision: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if precision not in (None, "default", "high", "highest", "bfloat16", "tensorfloat32",
                             "float32"):
            raise ValueError(f"precision={precision!r}: must be None, default, high or highest")
        self.config = config
        self.params = jax.device_put(params)
        self.batch_size = batch_size
        self.scale_factor = config.scaling_factor
        self.shift_factor = config.shift_factor
        self.latent_channels = config.latent_channels
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self._encode_mean = _jitted(config, precision, "encode_mean")
        self._decode_float = _jitted(config, precision, "decode_float")
        self._decode = _jitted(config, precision, "decode")

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, *, key: str | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE,
                        precision: str | None = None) -> Autoencoder:
        """The autoencoder at ``path`` (module docstring); errors are one-line ValueErrors
        naming the file and the first bad key, prefixed ``KEY=PATH`` when ``key`` (the config
        key or flag that gave the path, e.g. ``data.autoencoder``) is given."""
        label = f"{key}={path}" if key else str(path)
        config_file, weights_file = _resolve(path, label)
        config = SD_CONFIG
        if config_file is not None:
            try:
                raw = files.read_json(config_file)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{config_file}: not JSON ({one_line(err, 100)})") from None
            config = AutoencoderConfig.from_json(raw, config_file)
        tensors = read_safetensors(weights_file)
        return cls(config, cls._params(config, tensors, weights_file, config_file),
                   batch_size, precision)

    @staticmethod
    def _params(config: AutoencoderConfig, tensors: dict[str, np.ndarray], where: str,
                config_file: str | None) -> Any:
        """The Flax tree of ``config`` from diffusers-named ``tensors``, every shape checked."""
        arch = f"the architecture of {config_file}" if config_file else "SD's VAE architecture"
        tensors = _diffusers_names(tensors, len(config.block_out_channels))
        expected = jax.tree_util.tree_flatten_with_path(_abstract_params(config))
        leaves, used = [], set()
        for keypath, spec in expected[0]:
            path = tuple(k.key for k in keypath)
            name, leaf = _torch_key(path), path[-1]
            if name not in tensors:
                missing = sum(_torch_key(tuple(k.key for k in p)) not in tensors
                              for p, _ in expected[0])
                raise ValueError(f"{where}: no {name} (one of {missing} parameters of {arch} "
                                 "missing: a truncated file or another architecture)")
            array, want = tensors[name], _torch_shape(spec.shape, leaf)
            if array.ndim == 4 and len(want) == 2 and array.shape[2:] == (1, 1):
                array = array[:, :, 0, 0]  # LDM's attention layers are 1x1 convolutions
            if array.shape != want:
                raise ValueError(f"{where}: {name} has shape {tuple(array.shape)}, {arch} "
                                 f"needs {want}")
            array = _to_flax(np.asarray(array, np.float32), leaf)
            if not np.isfinite(array).all():
                raise ValueError(f"{where}: {name} holds non-finite values")
            leaves.append(array)
            used.add(name)
        extra = [k for k in tensors if k not in used and not k.startswith(_IGNORED_PREFIXES)]
        if extra:
            raise ValueError(f"{where}: unexpected {extra[0]} (one of {len(extra)} parameters "
                             f"that {arch} lacks: another architecture)")
        return jax.tree_util.tree_unflatten(expected[1], leaves)

    @classmethod
    def random(cls, config: AutoencoderConfig | Mapping[str, Any] | None = None, seed: int = 0,
               batch_size: int = DEFAULT_BATCH_SIZE,
               precision: str | None = None) -> Autoencoder:
        """An autoencoder of random weights for ``config`` (a config.json dict, an
        ``AutoencoderConfig``, or None: SD's VAE), for tests and shapes: kernels normal with
        variance 1 / fan-in, norms at scale 1, biases 0 (NumPy's generator of ``seed``:
        compiling Flax's initialisers took 30 s on a 2-core CPU)."""
        if config is None:
            config = SD_CONFIG
        elif not isinstance(config, AutoencoderConfig):
            config = AutoencoderConfig.from_json(config, "config")
        rng = np.random.default_rng(seed)

        def draw(keypath: Any, spec: jax.ShapeDtypeStruct) -> np.ndarray:
            leaf = keypath[-1].key
            if leaf == "kernel":
                fan_in = math.prod(spec.shape[:-1])
                return (rng.standard_normal(spec.shape) / math.sqrt(fan_in)).astype(np.float32)
            return (np.ones if leaf == "scale" else np.zeros)(spec.shape, np.float32)

        params = jax.tree_util.tree_map_with_path(draw, _abstract_params(config))
        return cls(config, params, batch_size, precision)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters under diffusers' names and in PyTorch's layouts (float32)."""
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(self.params))[0]
        out = {}
        for keypath, value in flat:
            path = tuple(k.key for k in keypath)
            out[_torch_key(path)] = np.ascontiguousarray(_to_torch(np.asarray(value), path[-1]))
        return out

    def save_pretrained(self, folder: str) -> None:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` into ``folder``,
        as diffusers' ``save_pretrained`` lays them out (diffusers loads them)."""
        import safetensors.numpy

        files.makedirs(folder)
        files.write_json(files.join(folder, CONFIG_NAME), self.config.to_json())
        files.write_bytes(files.join(folder, WEIGHTS_NAME),
                          safetensors.numpy.save(self.state_dict(), {"format": "pt"}))

    # encoding and decoding ------------------------------------------------------------------
    def encode_mean(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """uint8 ``(N, H, W, in_channels)`` -> float32 ``(N, H/d, W/d, latent_channels)``, the
        posterior mean before the scale factor."""
        images = _array(images, "images")
        n, height, width, channels = _nhwc(images, "images")
        if images.dtype != np.uint8:
            raise ValueError(f"images: dtype {images.dtype}, expected uint8 (0..255)")
        if channels != self.config.in_channels:
            raise ValueError(f"images: {channels} channels, the autoencoder takes "
                             f"{self.config.in_channels}")
        d = self.downsample
        if height % d or width % d or not height or not width:
            raise ValueError(f"images: {height}x{width} pixels, the autoencoder needs sides "
                             f"divisible by {d}")
        shape = (height // d, width // d, self.latent_channels)
        return self._chunks(self._encode_mean, images, shape, np.float32, batch_size)

    def decode(self, latents: Any, batch_size: int | None = None) -> np.ndarray:
        """Unscaled float latents ``(N, h, w, latent_channels)`` -> uint8 images
        ``(N, h*d, w*d, out_channels)``."""
        return self._decoded(self._decode, latents, np.uint8, batch_size)

    def decode_float(self, latents: Any, batch_size: int | None = None) -> np.ndarray:
        """Unscaled float latents -> the decoder's float32 output, in [-1, 1] units, unclipped."""
        return self._decoded(self._decode_float, latents, np.float32, batch_size)

    def _decoded(self, fn: Callable[..., jax.Array], latents: Any, dtype: Any,
                 batch_size: int | None) -> np.ndarray:
        latents = _array(latents, "latents")
        n, height, width, channels = _nhwc(latents, "latents")
        if not np.issubdtype(latents.dtype, np.floating) and latents.dtype != ml_dtypes.bfloat16:
            raise ValueError(f"latents: dtype {latents.dtype}, expected a float dtype")
        if channels != self.latent_channels:
            raise ValueError(f"latents: {channels} channels, the autoencoder's latents have "
                             f"{self.latent_channels}")
        d = self.downsample
        shape = (height * d, width * d, self.config.out_channels)
        return self._chunks(fn, latents, shape, dtype, batch_size)

    def _chunks(self, fn: Callable[..., jax.Array], array: Any, shape: tuple[int, ...],
                dtype: Any, batch_size: int | None) -> np.ndarray:
        """``fn(params, chunk)`` over chunks of ``batch_size`` rows, the last padded; one chunk
        is fetched while the next runs."""
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size={size}: must be >= 1")
        n = array.shape[0]
        size = min(size, n)
        outs: list[np.ndarray] = []
        pending: tuple[jax.Array, int] | None = None
        if n == 0:
            return np.zeros((0, *shape), dtype)
        for start in range(0, n, size):
            chunk = np.asarray(array[start:start + size])
            keep = len(chunk)
            if keep < size:
                pad = np.zeros((size - keep, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            result = fn(self.params, chunk)
            if pending is not None:
                outs.append(np.asarray(pending[0])[:pending[1]])
            pending = (result, keep)
        assert pending is not None
        outs.append(np.asarray(pending[0])[:pending[1]])
        return np.concatenate(outs)


def _array(value: Any, name: str) -> Any:
    """A NumPy or JAX array as it is (chunks are sliced from it), anything else as NumPy."""
    if isinstance(value, (np.ndarray, jax.Array)):
        return value
    try:
        return np.asarray(value)
    except Exception as err:
        raise ValueError(f"{name}: not an array ({one_line(err, 80)})") from None


def _nhwc(array: Any, name: str) -> tuple[int, int, int, int]:
    if array.ndim != 4:
        raise ValueError(f"{name}: shape {tuple(array.shape)}, expected (N, H, W, C)")
    return tuple(int(s) for s in array.shape)  # type: ignore[return-value]
