"""DDPM++ U-Net (the architecture of EDM's ``SongUNet`` with its DDPM++ settings), Flax linen.

Layout for ``ch_mult`` of length L, with r = image side / 2**level at each level:

* Noise embedding: sinusoidal embedding of the noise label (``ch`` channels), plus, for a
  class-conditional network (``num_classes > 0``), a learned embedding of the class label
  (``num_classes + 1`` rows, the last the null label of classifier-free guidance), as EDM's
  DDPM++ adds its label map to the noise embedding; then two dense layers with SiLU to
  ``4 * ch`` channels.
* Encoder: a 3x3 input conv to ``ch`` channels; at every level below the first, a downsampling
  residual block; then ``num_res_blocks`` residual blocks to ``ch * mult`` channels, with
  self-attention when r is in ``attn_resolutions``. Every encoder output is kept as a skip.
* Decoder: at the lowest resolution two residual blocks (the first with attention), at the
  others an upsampling residual block; then ``num_res_blocks + 1`` residual blocks, each fed
  the concatenation of the running features and one encoder skip (attention only in the last
  of them, when r is in ``attn_resolutions``).
* Output: group norm, SiLU, a near-zero-initialised 3x3 conv to ``out_channels``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagd_jax.models.embeddings import positional_embedding
from sagd_jax.models.layers import (
    SKIP_SCALE,
    ZERO_GAIN,
    GroupNorm,
    SelfAttention,
    check_inputs,
    conv,
    dense,
    downsample,
    upsample,
)

Dtype = Any

# The noise-embedding MLP is this many times wider than ``ch``.
EMB_MULT = 4
# The class embedding's initial scale: that of EDM's label map (a Kaiming-uniform linear layer
# on one-hot labels scaled by sqrt(num_classes): variance 1/3), beside the sin/cos entries of
# the noise embedding (variance 1/2).
LABEL_INIT_STD = 3**-0.5


def check_image_size(height: int, width: int, ch_mult: tuple[int, ...]) -> None:
    """Raise ValueError unless an H x W image halves cleanly len(ch_mult) - 1 times."""
    factor = 2 ** (len(ch_mult) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"image size {height}x{width} is not divisible by {factor}, which "
            f"model.ch_mult={tuple(ch_mult)} needs ({len(ch_mult)} resolutions, "
            f"{len(ch_mult) - 1} halvings); use a shorter model.ch_mult"
        )


def check_attn_resolutions(height: int, width: int, ch_mult: tuple[int, ...],
                           attn_resolutions: tuple[int, ...]) -> None:
    """One warning line when ``attn_resolutions`` is not empty and names none of the
    feature-map sides (heights) of an H x W image's levels: the network has no attention,
    though attention was asked for. A warning, not a refusal: one config serves several image
    sizes (``experiments/configs/paper.py``, the tests' tiny overrides), each size using the
    entries that exist for it."""
    from sagd_jax import console

    sides = [height // 2**level for level in range(len(ch_mult))]
    if attn_resolutions and not set(attn_resolutions) & set(sides):
        console.warning(
            "model.attn_resolutions=%s: no such feature-map side, so no attention layer; the "
            "%dx%d images with model.ch_mult=%s have %s", tuple(attn_resolutions), height,
            width, tuple(ch_mult), ", ".join(map(str, sides)))


def placeholder_labels(model: nn.Module, batch: int) -> jax.Array | None:
    """Class labels ``(batch,)`` of zeros to trace a conditional network with (init, cost
    estimates); None for an unconditional one, which takes none."""
    return jnp.zeros((batch,), jnp.int32) if getattr(model, "num_classes", 0) else None


class ResBlock(nn.Module):
    """DDPM++ residual block, optionally resampling and with self-attention.

    (B, H, W, C_in), emb (B, E) -> (B, H', W', out_channels), where H' is H/2, 2H or H for
    ``down``, ``up`` or neither. The residual sum is scaled by 1/sqrt(2).
    """

    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    dropout: float = 0.0
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        dt, pdt = self.dtype, self.param_dtype
        resample = upsample if self.up else downsample if self.down else (lambda a: a)

        h = nn.silu(GroupNorm(self.num_groups, dtype=dt, param_dtype=pdt, name="norm0")(x))
        h = conv(self.out_channels, 3, 1.0, dt, pdt, "conv0")(resample(h))
        h = h + dense(self.out_channels, dt, pdt, "affine")(emb)[:, None, None, :]
        h = nn.silu(GroupNorm(self.num_groups, dtype=dt, param_dtype=pdt, name="norm1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.out_channels, 3, ZERO_GAIN, dt, pdt, "conv1")(h)

        skip = x
        if self.up or self.down or x.shape[-1] != self.out_channels:
            skip = conv(self.out_channels, 1, 1.0, dt, pdt, "skip")(resample(x))
        x = (h + skip) * SKIP_SCALE

        if self.attention:
            x = SelfAttention(self.num_groups, dtype=dt, param_dtype=pdt, name="attn")(x)
        return x


class UNet(nn.Module):
    """DDPM++ U-Net denoiser: (B, H, W, C) images and (B,) noise labels -> (B, H, W, C_out).

    Fields (the architecture has no defaults here: ``sagd_jax.models.build_model`` builds it
    from the ``model`` config section, whose one default is ``default_config().model``):
        ch: base channel count; level i has ``ch * ch_mult[i]`` channels.
        ch_mult: per-resolution channel multipliers, one resolution per entry.
        num_res_blocks: residual blocks per resolution in the encoder (decoder: one more).
        attn_resolutions: feature-map side lengths (the height, for non-square images) at which
            blocks carry self-attention.
        dropout: dropout probability inside residual blocks (active only when ``train``).
        out_channels: output channels; None means the input's channel count.
        num_groups: group-norm groups, capped so each group keeps at least 4 channels.
        dtype: compute dtype (float32 or bfloat16); the output is always float32.
        param_dtype: parameter dtype.
        num_classes: 0 for an unconditional network (no label input, no label parameters);
            K > 0: the network takes ``class_labels`` in 0 .. K, K being the null label (the
            unconditional prediction of classifier-free guidance).
        remat: recompute each residual block's activations in the backward pass instead of
            keeping them (``nn.remat``): less memory for larger batches, one more forward, on
            GPU/TPU; XLA's CPU backend drops the barriers and saves nothing
            (benchmarks/remat_memory.py).

    ``noise_labels`` are unitless scalars (the trainer passes 1000 * t, t in [0, 1]);
    ``class_labels``: int ``(B,)``, given exactly when ``num_classes > 0``. Height and
    width must be divisible by 2 ** (len(ch_mult) - 1). ``train=True`` with dropout > 0 needs a
    "dropout" rng.
    """

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float = 0.1
    out_channels: int | None = None
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    num_classes: int = 0

    def _block(self, out_channels: int, name: str, **kwargs: Any) -> ResBlock:
        # Argument 3 of ResBlock.__call__(self, x, emb, train) is a Python bool.
        block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        return block(
            out_channels,
            dropout=self.dropout,
            num_groups=self.num_groups,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            **kwargs,
        )

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array,
                 class_labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        check_inputs("UNet", x, noise_labels, class_labels, self.num_classes)
        _, height, width, in_channels = x.shape
        check_image_size(height, width, self.ch_mult)
        dt, pdt = self.dtype, self.param_dtype
        out_channels = in_channels if self.out_channels is None else self.out_channels
        num_levels = len(self.ch_mult)
        attn_res = set(self.attn_resolutions)

        # Noise-level embedding: (B,) -> (B, EMB_MULT * ch).
        emb = positional_embedding(noise_labels, self.ch)
        if self.num_classes:
            table = nn.Embed(self.num_classes + 1, self.ch, param_dtype=pdt, name="map_label",
                             embedding_init=nn.initializers.normal(LABEL_INIT_STD))
            emb = emb + table(class_labels).astype(jnp.float32)
        emb = nn.silu(dense(EMB_MULT * self.ch, dt, pdt, "map_layer0")(emb))
        emb = nn.silu(dense(EMB_MULT * self.ch, dt, pdt, "map_layer1")(emb))

        # Encoder.
        h = conv(self.ch, 3, 1.0, dt, pdt, "enc_conv_in")(x.astype(dt))
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            if level > 0:
                h = self._block(h.shape[-1], f"enc{level}_down", down=True)(h, emb, train)
                skips.append(h)
            res = h.shape[1]
            for i in range(self.num_res_blocks):
                block = self._block(
                    self.ch * mult, f"enc{level}_block{i}", attention=res in attn_res
                )
                h = block(h, emb, train)
                skips.append(h)

        # Decoder.
        for level in reversed(range(num_levels)):
            mult = self.ch_mult[level]
            if level == num_levels - 1:
                h = self._block(h.shape[-1], f"dec{level}_mid0", attention=True)(h, emb, train)
                h = self._block(h.shape[-1], f"dec{level}_mid1")(h, emb, train)
            else:
                h = self._block(h.shape[-1], f"dec{level}_up", up=True)(h, emb, train)
            res = h.shape[1]
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                attention = i == self.num_res_blocks and res in attn_res
                block = self._block(self.ch * mult, f"dec{level}_block{i}", attention=attention)
                h = block(h, emb, train)

        h = nn.silu(GroupNorm(self.num_groups, dtype=dt, param_dtype=pdt, name="out_norm")(h))
        h = conv(out_channels, 3, ZERO_GAIN, dt, pdt, "out_conv")(h)
        return h.astype(jnp.float32)
