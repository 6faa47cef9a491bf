"""Denoiser networks: the DDPM++ U-Net, its config-driven constructor and size/cost helpers.

``build_model`` reads every key of the ``model`` section directly (its one default is in
``sagd_jax.config.default_config().model``; a missing key is an error, not a fallback):
  ch               int >= 4, base channel count
  ch_mult          non-empty sequence of positive ints, per-resolution channel multipliers
  num_res_blocks   positive int, residual blocks per resolution
  attn_resolutions sequence of positive ints, feature-map sides with self-attention (a
                   warning when none is a side of the network)
  dropout          float in [0, 1)
  num_groups       positive int, group-norm groups (capped at channels // 4)
  dtype            "float32" or "bfloat16", the compute dtype
  remat            bool, recompute residual blocks in the backward pass (memory for time)
  num_classes      int >= 0, class labels the network is conditioned on (0: unconditional)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from sagd_jax import validate
from sagd_jax.models.stats import count_params, flops_per_image
from sagd_jax.models.unet import (
    UNet,
    check_attn_resolutions,
    check_image_size,
    placeholder_labels,
)

__all__ = ["UNet", "build_model", "count_params", "flops_per_image", "placeholder_labels"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_config: Any, image_shape: Sequence[int]) -> UNet:
    """Validate the full ``model`` config section and build a ``UNet`` for (H, W, C) images.

    The output has as many channels as the input. Raises a one-line ValueError naming the
    offending key (``model.ch=2: ...``, ``model.dropout: missing from the config``), or the
    image size and ``model.ch_mult`` when the image does not halve cleanly at every resolution.
    """
    def entry(key: str) -> tuple[str, Any]:
        return validate.entry(model_config, key, "model")

    ch = validate.integer(*entry("ch"), 1)
    if ch < 4:
        raise validate.fail("model.ch", ch, "must be at least 4 (embedding and group norm)")
    ch_mult = validate.positive_ints(*entry("ch_mult"))
    num_res_blocks = validate.integer(*entry("num_res_blocks"), 1)
    attn_resolutions = validate.positive_ints(*entry("attn_resolutions"), allow_empty=True)
    num_groups = validate.integer(*entry("num_groups"), 1)
    dropout = validate.number(*entry("dropout"), 0.0, 1.0, open_hi=True)
    dtype = _DTYPES[validate.one_of(*entry("dtype"), tuple(_DTYPES))]
    remat = validate.boolean(*entry("remat"))
    num_classes = validate.integer(*entry("num_classes"), 0)

    shape = tuple(image_shape)
    if len(shape) != 3 or not all(validate.is_int(s) and s > 0 for s in shape):
        raise validate.fail("image_shape", shape, "must be (H, W, C) positive ints")
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
