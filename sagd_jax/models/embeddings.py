"""Noise-level embeddings for the U-Net."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
