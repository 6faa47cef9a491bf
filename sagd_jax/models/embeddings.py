"""Noise-level embeddings (the U-Net's and DiT's) and DiT's fixed 2-D position embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def positional_embedding(
    labels: jax.Array, num_channels: int, max_period: float = 10_000.0
) -> jax.Array:
    """Sinusoidal embedding of scalar noise labels: (B,) -> (B, num_channels), float32.

    Uses num_channels // 2 frequencies spaced geometrically from 1 down to exactly
    1 / max_period (both ends included) and returns [sin(l * f), cos(l * f)].
    """
    half = num_channels // 2
    if half < 2:
        raise ValueError(f"positional embedding needs at least 4 channels, got {num_channels}")
    exponents = jnp.arange(half, dtype=jnp.float32) / (half - 1)
    freqs = (1.0 / max_period) ** exponents
    angles = labels.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def timestep_embedding(labels: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """DiT's (GLIDE's) sinusoidal embedding of noise labels: (B,) -> (B, dim), float32.

    ``dim // 2`` frequencies ``max_period ** (-k / (dim // 2))``, k = 0 .. dim // 2 - 1 (the
    last stops short of ``1 / max_period``), returned as ``[cos(l * f), sin(l * f)]``, with a
    zero column appended when ``dim`` is odd.
    """
    half = dim // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = labels.astype(jnp.float32)[:, None] * freqs[None, :]
    out = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    return jnp.pad(out, ((0, 0), (0, dim % 2)))


def sincos_2d_embedding(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding of a ``grid_h x grid_w`` token grid (MAE's and
    DiT's), tokens in row-major order: -> (grid_h * grid_w, dim), float32 (computed in float64).

    The first ``dim / 2`` channels encode the token's column, the last ``dim / 2`` its row,
    each as ``[sin(pos * w), cos(pos * w)]`` with ``w_k = 10000 ** (-k / (dim / 4))``,
    k = 0 .. dim / 4 - 1. ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10_000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                             np.arange(grid_w, dtype=np.float64), indexing="ij")

    def one_axis(pos: np.ndarray) -> np.ndarray:
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(cols), one_axis(rows)], axis=1).astype(np.float32)
