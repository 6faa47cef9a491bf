"""Denoiser networks: the DDPM++ U-Net, its config-driven constructor and size/cost helpers.

Config keys read from the ``model`` section (missing keys take the ``UNet`` defaults):
  ch               positive int, base channel count
  ch_mult          non-empty sequence of positive ints, per-resolution channel multipliers
  num_res_blocks   positive int, residual blocks per resolution
  attn_resolutions sequence of positive ints, feature-map sides with self-attention
  dropout          float in [0, 1)
  num_groups       positive int, group-norm groups (capped at channels // 4)
  dtype            "float32" or "bfloat16", the compute dtype
  remat            bool, recompute residual blocks in the backward pass (memory for time)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from sagd_jax.models.stats import count_params, flops_per_image
from sagd_jax.models.unet import UNet, check_image_size

__all__ = ["UNet", "build_model", "count_params", "flops_per_image"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(key: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"model.{key}={value!r}: must be a positive integer")
    return value


def _positive_ints(key: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    ok = ok and all(_is_int(v) and v > 0 for v in value) and (allow_empty or len(value) > 0)
    if not ok:
        kind = "a sequence" if allow_empty else "a non-empty sequence"
        raise ValueError(f"model.{key}={value!r}: must be {kind} of positive integers")
    return tuple(value)


def build_model(model_config: Any, image_shape: Sequence[int]) -> UNet:
    """Validate the ``model`` config section and build a ``UNet`` for (H, W, C) images.

    The output has as many channels as the input. Raises a one-line ValueError naming the
    offending key, or the image size and ``model.ch_mult`` when the image does not halve
    cleanly at every resolution.
    """
    cfg = dict(model_config)
    default = UNet()

    def get(key: str) -> Any:
        return cfg.get(key, getattr(default, key))

    ch = _positive_int("ch", get("ch"))
    if ch < 4:
        raise ValueError(f"model.ch={ch}: must be at least 4 (embedding and group norm)")
    ch_mult = _positive_ints("ch_mult", get("ch_mult"), allow_empty=False)
    num_res_blocks = _positive_int("num_res_blocks", get("num_res_blocks"))
    attn_resolutions = _positive_ints("attn_resolutions", get("attn_resolutions"), allow_empty=True)
    num_groups = _positive_int("num_groups", get("num_groups"))
    dropout = get("dropout")
    if _is_int(dropout):
        dropout = float(dropout)
    if not isinstance(dropout, float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout!r}: must be a float in [0, 1)")
    dtype_name = cfg.get("dtype", "float32")
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise ValueError(f"model.dtype={dtype_name!r}: must be one of {sorted(_DTYPES)}")

    remat = cfg.get("remat", False)
    if not isinstance(remat, bool):
        raise ValueError(f"model.remat={remat!r}: must be True or False")

    if len(image_shape) != 3 or not all(_is_int(s) and s > 0 for s in image_shape):
        raise ValueError(f"image_shape={tuple(image_shape)!r}: must be (H, W, C) positive ints")
    height, width, _ = image_shape
    check_image_size(height, width, ch_mult)

    return UNet(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        attn_resolutions=attn_resolutions,
        dropout=dropout,
        num_groups=num_groups,
        dtype=_DTYPES[dtype_name],
        remat=remat,
    )
