"""Denoiser networks: the DDPM++ U-Net and the Diffusion Transformer (DiT), their
config-driven constructor and size/cost helpers.

``build_model`` reads the keys of the ``model`` section directly (their one default is in
``sagd_jax.config.default_config().model``; a missing key is an error, not a fallback):
  name             "unet" (the DDPM++ U-Net) or "dit" (the Diffusion Transformer)
  dtype            "float32" or "bfloat16", the compute dtype
  remat            bool, recompute residual/transformer blocks in the backward pass
  num_classes      int >= 0, class labels the network is conditioned on (0: unconditional)
  dropout          float in [0, 1); a DiT has none: it must be 0 there
the U-Net's (read only for name=unet):
  ch               int >= 4, base channel count
  ch_mult          non-empty sequence of positive ints, per-resolution channel multipliers
  num_res_blocks   positive int, residual blocks per resolution
  attn_resolutions sequence of positive ints, feature-map sides with self-attention (a
                   warning when none is a side of the network)
  num_groups       positive int, group-norm groups (capped at channels // 4)
the DiT's (read only for name=dit; ``dit.configure_dit`` sets the published sizes):
  patch_size       positive int dividing the image sides
  hidden_size      int, divisible by num_heads and by 4
  depth            positive int, transformer blocks
  num_heads        positive int, attention heads
  mlp_ratio        float > 0, MLP hidden units per channel
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sagd_jax import validate
from sagd_jax.models.dit import DIT_SIZES, DiT, check_patch_size, configure_dit
from sagd_jax.models.stats import count_params, flops_per_image
from sagd_jax.models.unet import (
    UNet,
    check_attn_resolutions,
    check_image_size,
    placeholder_labels,
)

__all__ = ["DIT_SIZES", "DiT", "UNet", "build_model", "configure_dit", "count_params",
           "flops_per_image", "placeholder_labels"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODEL_NAMES = ("unet", "dit")


def build_model(model_config: Any, image_shape: Sequence[int]) -> nn.Module:
    """Validate the ``model`` config section and build the network ``model.name`` names (a
    ``UNet`` or a ``DiT``) for (H, W, C) images.

    The output has as many channels as the input. Raises a one-line ValueError naming the
    offending key (``model.ch=2: ...``, ``model.dropout: missing from the config``), or the
    image size and ``model.ch_mult`` (``model.patch_size``) when the image does not halve
    cleanly at every resolution (is not cut into whole patches).
    """
    def entry(key: str) -> tuple[str, Any]:
        return validate.entry(model_config, key, "model")

    name = validate.one_of(*entry("name"), MODEL_NAMES)
    dropout = validate.number(*entry("dropout"), 0.0, 1.0, open_hi=True)
    dtype = _DTYPES[validate.one_of(*entry("dtype"), tuple(_DTYPES))]
    remat = validate.boolean(*entry("remat"))
    num_classes = validate.integer(*entry("num_classes"), 0)
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(validate.is_int(s) and s > 0 for s in shape):
        raise validate.fail("image_shape", shape, "must be (H, W, C) positive ints")
    if name == "dit":
        return _build_dit(model_config, shape, dropout, dtype, remat, num_classes)

    ch = validate.integer(*entry("ch"), 1)
    if ch < 4:
        raise validate.fail("model.ch", ch, "must be at least 4 (embedding and group norm)")
    ch_mult = validate.positive_ints(*entry("ch_mult"))
    num_res_blocks = validate.integer(*entry("num_res_blocks"), 1)
    attn_resolutions = validate.positive_ints(*entry("attn_resolutions"), allow_empty=True)
    num_groups = validate.integer(*entry("num_groups"), 1)
    check_image_size(shape[0], shape[1], ch_mult)
    check_attn_resolutions(shape[0], shape[1], ch_mult, attn_resolutions)

    return UNet(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        attn_resolutions=attn_resolutions,
        dropout=dropout,
        num_groups=num_groups,
        dtype=dtype,
        remat=remat,
        num_classes=num_classes,
    )


def _build_dit(model_config: Any, shape: tuple[int, ...], dropout: float, dtype: Any,
               remat: bool, num_classes: int) -> DiT:
    """The ``DiT`` of ``model.name=dit``: its keys checked in one line each."""
    def entry(key: str) -> tuple[str, Any]:
        return validate.entry(model_config, key, "model")

    if dropout:
        raise validate.fail("model.dropout", dropout,
                            "DiT has no dropout (model.name=dit): set model.dropout=0")
    patch_size = validate.integer(*entry("patch_size"), 1)
    hidden_size = validate.integer(*entry("hidden_size"), 4)
    depth = validate.integer(*entry("depth"), 1)
    num_heads = validate.integer(*entry("num_heads"), 1)
    mlp_ratio = validate.number(*entry("mlp_ratio"), 0.0, open_lo=True)
    if hidden_size % num_heads:
        raise validate.fail("model.hidden_size", hidden_size,
                            f"must be divisible by model.num_heads={num_heads}")
    if hidden_size % 4:
        raise validate.fail("model.hidden_size", hidden_size,
                            "must be divisible by 4 (the 2-D sin-cos position embedding)")
    if int(hidden_size * mlp_ratio) < 1:
        raise validate.fail("model.mlp_ratio", mlp_ratio,
                            f"gives no MLP units at model.hidden_size={hidden_size}")
    check_patch_size(shape[0], shape[1], patch_size)
    return DiT(patch_size=patch_size, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
               mlp_ratio=mlp_ratio, dtype=dtype, remat=remat, num_classes=num_classes)
