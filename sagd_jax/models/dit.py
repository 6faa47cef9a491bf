"""The Diffusion Transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"), Flax linen, for the same inputs and outputs as the U-Net.

Layout, for (B, H, W, C) images, patch size p and hidden size D (T = H W / p^2 tokens):

* Patchify: a p x p stride-p convolution to D channels (DiT's ``PatchEmbed``, computed as a
  matrix product of the non-overlapping patches), plus the fixed 2-D sin-cos position
  embedding (``embeddings.sincos_2d_embedding``; not a parameter): (B, T, D).
* Conditioning c (B, D): DiT's sinusoidal embedding of the noise label (256 frequencies, max
  period 10000) through Linear-SiLU-Linear; for a class-conditional network
  (``num_classes = K > 0``) plus a learned embedding of the label (K + 1 rows, the last the
  null label of classifier-free guidance; the train step drops labels, not the network).
* ``depth`` DiT blocks with adaLN-Zero: from SiLU(c), a linear layer gives shift, scale and
  gate for the attention and for the MLP branch; each branch is
  ``x + gate * branch(LayerNorm(x) * (1 + scale) + shift)`` (LayerNorm without affine,
  eps 1e-6). Attention: multi-head, qkv with bias, through ``jax.nn.dot_product_attention``;
  MLP: ``mlp_ratio * D`` hidden units, tanh-approximated GELU.
* Final layer: LayerNorm, adaLN shift/scale from c, a linear layer to p * p * C_out per
  token, unpatchify to (B, H, W, C_out).

Initialisation as DiT's: Xavier-uniform linear layers with zero bias (the patch embedding
Xavier on its flattened (p p C, D) kernel), normal(0.02) for the label table and the noise
MLP, zero for every adaLN modulation and the final linear layer (the network starts at 0).
DiT's ``learn_sigma`` (a second set of C output channels for the variance) is not used: the
output is the C channels of eps, v, x0 or EDM's F, as the U-Net's. DiT has no dropout.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagd_jax.models.embeddings import sincos_2d_embedding, timestep_embedding
from sagd_jax.models.layers import check_inputs, dense

Dtype = Any

# Published DiT sizes (Peebles & Xie 2023, table 1): hidden size, depth (blocks), heads.
DIT_SIZES: dict[str, dict[str, int]] = {
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
    "L": dict(hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16),
}
# DiT's sinusoidal noise-label embedding: this many channels, this maximum period.
FREQUENCY_EMBEDDING_SIZE = 256
MAX_PERIOD = 10_000.0
NORM_EPS = 1e-6
INIT_STD = 0.02  # the label table and the noise MLP


def configure_dit(model_config: Any, name: str) -> Any:
    """Set a config's ``model`` section to the published DiT ``name`` (``"XL/2"``, ``"B/4"``,
    ``"S/2"``, ...: size and patch size): ``name``, ``hidden_size``, ``depth``, ``num_heads``,
    ``patch_size``, ``mlp_ratio`` 4 and ``dropout`` 0 (DiT has none). Returns the section."""
    size, _, patch = name.partition("/")
    if size not in DIT_SIZES or not patch.isdigit() or int(patch) < 1:
        raise ValueError(f"DiT {name!r}: expected SIZE/PATCH with SIZE in "
                         f"{', '.join(DIT_SIZES)} (XL/2, B/4)")
    model_config.update(dict(name="dit", patch_size=int(patch), mlp_ratio=4.0, dropout=0.0,
                             **DIT_SIZES[size]))
    return model_config


def check_patch_size(height: int, width: int, patch_size: int) -> None:
    """Raise a one-line ValueError unless ``patch_size`` divides both sides of the image."""
    if height % patch_size or width % patch_size:
        raise ValueError(f"model.patch_size={patch_size}: does not divide the {height}x{width} "
                         "images (DiT cuts them into non-overlapping patches)")


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: (B, T, D) with (B, D) shift and scale -> ``x * (1 + scale) + shift``."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def zero_dense(features: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Dense:
    """A linear layer initialised to zero (adaLN-Zero's modulation, the output layer)."""
    return nn.Dense(features, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype,
                    name=name)


def layer_norm(dtype: Dtype) -> nn.LayerNorm:
    """LayerNorm without scale or bias (statistics in float32)."""
    return nn.LayerNorm(epsilon=NORM_EPS, use_bias=False, use_scale=False, dtype=dtype)


class PatchEmbed(nn.Module):
    """p x p stride-p convolution to ``features``: (B, H, W, C) -> (B, H/p * W/p, features).

    The kernel ``(p, p, C, features)`` is a convolution's (HWIO); the non-overlapping patches
    make it one matrix product, the same arithmetic on every backend. Xavier-uniform over the
    flattened kernel (fan in p p C, fan out ``features``), zero bias. Tokens are row-major.
    """

    features: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        p = self.patch_size
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                                out_axis=-1)
        kernel = self.param("kernel", init, (p, p, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        patches = x.reshape(b, height // p, p, width // p, p, c)
        tokens = jnp.einsum("bhpwqc,pqcd->bhwd", patches.astype(self.dtype),
                            kernel.astype(self.dtype))
        tokens = tokens + bias.astype(self.dtype)
        return tokens.reshape(b, -1, self.features)


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias: (B, T, D) -> (B, T, D).

    ``jax.nn.dot_product_attention`` (softmax in float32) computes the heads; ``implementation``
    is passed to it (None: JAX's choice, XLA's attention; ``"cudnn"``: cuDNN's fused kernel on
    NVIDIA GPUs, for bfloat16/float16 only). The qkv features are laid out (3, heads, D / heads),
    as timm's ``Attention``.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        head_dim = d // self.num_heads
        qkv = dense(3 * d, self.dtype, self.param_dtype, "qkv")(x)
        qkv = qkv.reshape(b, t, 3, self.num_heads, head_dim)
        out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                           implementation=self.implementation)
        return dense(d, self.dtype, self.param_dtype, "proj")(out.reshape(b, t, d))


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning: (B, T, D), c (B, D) -> (B, T, D)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        dt, pdt = self.dtype, self.param_dtype
        d = x.shape[-1]
        mod = zero_dense(6 * d, dt, pdt, "adaLN_modulation")(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, -1)
        attn = Attention(self.num_heads, dt, pdt, self.attention_implementation, name="attn")
        x = x + gate_msa[:, None, :] * attn(modulate(layer_norm(dt)(x), shift_msa, scale_msa))
        h = modulate(layer_norm(dt)(x), shift_mlp, scale_mlp)
        h = dense(int(d * self.mlp_ratio), dt, pdt, "mlp_fc1")(h)
        h = dense(d, dt, pdt, "mlp_fc2")(nn.gelu(h, approximate=True))
        return x + gate_mlp[:, None, :] * h


class DiT(nn.Module):
    """Diffusion Transformer denoiser: (B, H, W, C) images and (B,) noise labels ->
    (B, H, W, C_out), float32.

    Fields (``sagd_jax.models.build_model`` builds it from the ``model`` config section):
        patch_size: side p of the square patches; must divide H and W.
        hidden_size: token width D; divisible by ``num_heads`` and by 4 (the 2-D positions).
        depth: number of DiT blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden units per token channel.
        out_channels: output channels; None means the input's channel count.
        dtype: compute dtype (float32 or bfloat16); the output is always float32.
        param_dtype: parameter dtype.
        num_classes: 0 for an unconditional network (no label input or parameters); K > 0:
            ``class_labels`` in 0 .. K, K being the null label.
        remat: recompute each block's activations in the backward pass (``nn.remat``).
        attention_implementation: ``jax.nn.dot_product_attention``'s ``implementation``.

    ``noise_labels`` are unitless scalars (the trainer passes 1000 * t, DiT's timestep scale);
    ``class_labels``: int ``(B,)``, given exactly when ``num_classes > 0``. ``train`` is
    accepted for the U-Net's signature and changes nothing (no dropout).
    """

    patch_size: int
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    num_classes: int = 0
    remat: bool = False
    attention_implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array,
                 class_labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        del train  # DiT has no dropout
        check_inputs("DiT", x, noise_labels, class_labels, self.num_classes)
        b, height, width, in_channels = x.shape
        p, d = self.patch_size, self.hidden_size
        check_patch_size(height, width, p)
        if d % self.num_heads or d % 4:
            raise ValueError(f"DiT hidden_size={d}: must be divisible by num_heads="
                             f"{self.num_heads} and by 4")
        dt, pdt = self.dtype, self.param_dtype
        out_channels = in_channels if self.out_channels is None else self.out_channels
        gh, gw = height // p, width // p

        tokens = PatchEmbed(d, p, dt, pdt, name="x_embedder")(x)
        tokens = tokens + jnp.asarray(sincos_2d_embedding(gh, gw, d), dt)[None]

        normal = nn.initializers.normal(INIT_STD)
        c = timestep_embedding(noise_labels, FREQUENCY_EMBEDDING_SIZE, MAX_PERIOD)
        c = nn.Dense(d, kernel_init=normal, dtype=dt, param_dtype=pdt, name="t_embedder_fc1")(c)
        c = nn.Dense(d, kernel_init=normal, dtype=dt, param_dtype=pdt,
                     name="t_embedder_fc2")(nn.silu(c))
        if self.num_classes:
            table = nn.Embed(self.num_classes + 1, d, param_dtype=pdt, embedding_init=normal,
                             name="y_embedder")
            c = c + table(class_labels).astype(c.dtype)

        block = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            tokens = block(self.num_heads, self.mlp_ratio, dt, pdt,
                           self.attention_implementation, name=f"blocks_{i}")(tokens, c)

        shift, scale = jnp.split(zero_dense(2 * d, dt, pdt, "final_adaLN_modulation")(
            nn.silu(c)), 2, -1)
        h = modulate(layer_norm(dt)(tokens), shift, scale)
        h = zero_dense(p * p * out_channels, dt, pdt, "final_linear")(h)
        # (B, T, p p C) -> (B, gh, gw, p, p, C) -> (B, gh, p, gw, p, C) -> (B, H, W, C).
        h = h.reshape(b, gh, gw, p, p, out_channels).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, height, width, out_channels).astype(jnp.float32)

