"""Building blocks of the DDPM++ U-Net: initialisers, group norm, resampling, attention.

All feature maps are NHWC. Layers take a compute ``dtype`` and keep parameters in
``param_dtype``; softmax and group-norm statistics are always reduced in float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagd_jax.models.conv import Conv

Dtype = Any

# Resolution-preserving residual paths are rescaled by 1/sqrt(2) after each addition.
SKIP_SCALE = 1.0 / math.sqrt(2.0)
# DDPM++ group-norm epsilon and the smallest number of channels a group may hold.
NORM_EPS = 1e-6
MIN_CHANNELS_PER_GROUP = 4


def xavier_uniform(gain: float = 1.0) -> nn.initializers.Initializer:
    """Glorot-uniform initialiser with the weights multiplied by ``gain``.

    Fans count the receptive field, so a (k, k, c_in, c_out) kernel has
    fan_in = k*k*c_in and fan_out = k*k*c_out. The bound is gain * sqrt(6 / (fan_in + fan_out)).
    """
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


# Output layers of each residual branch start almost at zero; attention qkv is shrunk.
ZERO_GAIN = 1e-5
QKV_GAIN = math.sqrt(0.2)


def group_count(channels: int, num_groups: int) -> int:
    """Number of norm groups for ``channels``: ``num_groups``, capped so a group has >= 4 channels.

    Raises ValueError when the resulting count does not divide ``channels``.
    """
    groups = max(1, min(num_groups, channels // MIN_CHANNELS_PER_GROUP))
    if channels % groups:
        raise ValueError(
            f"group norm over {channels} channels with {groups} groups does not divide evenly; "
            f"choose model.num_groups (={num_groups}) or model.ch so that it does"
        )
    return groups


class GroupNorm(nn.Module):
    """Group norm with the DDPM++ group-count rule: (B, H, W, C) -> (B, H, W, C)."""

    num_groups: int = 32
    eps: float = NORM_EPS
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = group_count(x.shape[-1], self.num_groups)
        return nn.GroupNorm(
            num_groups=groups,
            epsilon=self.eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="norm",
        )(x)


def conv(
    features: int, kernel: int, gain: float, dtype: Dtype, param_dtype: Dtype, name: str
) -> Conv:
    """Square stride-1 'same' convolution with Glorot-uniform weights times ``gain``, zero bias."""
    return Conv(
        features,
        kernel,
        kernel_init=xavier_uniform(gain),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def dense(features: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Dense:
    """Fully connected layer with Glorot-uniform weights and zero bias."""
    return nn.Dense(
        features,
        kernel_init=xavier_uniform(),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def downsample(x: jax.Array) -> jax.Array:
    """2x2 box-filter downsampling (resample filter [1, 1]): (B, H, W, C) -> (B, H//2, W//2, C)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def upsample(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling (resample filter [1, 1]): (B, H, W, C) -> (B, 2H, 2W, C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual: (B, H, W, C) -> (B, H, W, C).

    Returns (x + proj(attention(norm(x)))) / sqrt(2). The logits and softmax are computed in
    float32 whatever the compute dtype.
    """

    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = GroupNorm(self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(
            x
        )
        qkv = conv(3 * c, 1, QKV_GAIN, self.dtype, self.param_dtype, "qkv")(y)
        # The 3C channels are laid out channel-major, (C, 3): q, k, v interleave.
        qkv = qkv.reshape(b, h * w, c, 3)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        logits = jnp.einsum(
            "bqc,bkc->bqk", q.astype(jnp.float32), k.astype(jnp.float32)
        ) / math.sqrt(c)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        a = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c)
        a = conv(c, 1, ZERO_GAIN, self.dtype, self.param_dtype, "proj")(a)
        return (a + x) * SKIP_SCALE


def check_inputs(network: str, x: jax.Array, noise_labels: jax.Array,
                 class_labels: jax.Array | None, num_classes: int) -> None:
    """A denoiser's inputs: NHWC ``x``, ``noise_labels`` ``(B,)``, and ``class_labels``
    ``(B,)`` given exactly when ``num_classes > 0``; a ``ValueError`` naming ``network``."""
    if x.ndim != 4:
        raise ValueError(f"{network} expects NHWC images of rank 4, got shape {x.shape}")
    if noise_labels.shape != (x.shape[0],):
        raise ValueError(
            f"noise_labels must have shape ({x.shape[0]},), got {noise_labels.shape}")
    if (class_labels is None) != (num_classes == 0):
        raise ValueError(f"{network} with num_classes={num_classes}: class_labels must be "
                         + ("given" if num_classes else "None"))
    if class_labels is not None and class_labels.shape != (x.shape[0],):
        raise ValueError(
            f"class_labels must have shape ({x.shape[0]},), got {class_labels.shape}")
