"""A stride-1 'SAME' 2-D convolution with a faster kernel gradient on CPU.

XLA's CPU backend computes the kernel gradient of a convolution (``conv backprop filter``) an
order of magnitude slower than the forward pass on large feature maps. Writing that gradient as
``dW[i, j] = sum_{b,h,w} x_pad[b, h+i, w+j, :]^T dy[b, h, w, :]`` (k*k plain matmuls run in a
loop, see ``kernel_grad``) is faster: ``python benchmarks/conv_grad.py`` on the 2-core
development CPU (benchmarks/RESULTS.md) gave 2.7 -> 33.7 GFLOP/s (32 channels, 28x28, batch
64), 5.0 -> 60.1 (128 channels, 32x32, batch 32), 21.7 -> 46.3 (128 -> 64 channels, 14x14),
but 38.9 -> 38.0 on 7x7 maps. So the shifted matmuls are used on the CPU backend for maps of
at least ``SHIFTED_MATMUL_MIN_PIXELS``; the forward pass and the input gradient stay XLA
convolutions. The backend is the one the program is traced for: this process's default, or
the platform ``traced_for`` names."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")
SHIFTED_MATMUL_MIN_PIXELS = 14 * 14
_UNROLL_TAPS = False  # read when tracing; see ``unrolled_taps``
_PLATFORM: str | None = None  # read when tracing; see ``traced_for``


@contextlib.contextmanager
def traced_for(platform: str) -> Iterator[None]:
    """Trace convolutions as they are traced on ``platform`` (``cpu``, ``gpu``, ``tpu``)
    rather than on this process's default backend: compiling for a TPU from a CPU process
    must not pick the CPU's kernel gradient (``sagd_jax.aot``)."""
    global _PLATFORM
    previous, _PLATFORM = _PLATFORM, platform
    try:
        yield
    finally:
        _PLATFORM = previous


@contextlib.contextmanager
def unrolled_taps() -> Iterator[None]:
    """Trace kernel gradients with their taps unrolled (the same arithmetic, straight-line).

    XLA's cost analysis counts a loop body once, so a step traced normally under-reports the
    taps' FLOPs by ``k*k``; benchmarks lower the step inside this context to count them.
    """
    global _UNROLL_TAPS
    previous, _UNROLL_TAPS = _UNROLL_TAPS, True
    try:
        yield
    finally:
        _UNROLL_TAPS = previous


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMS)


def conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x: (B, H, W, C_in)``, ``kernel: (k, k, C_in, C_out)``, odd k -> ``(B, H, W, C_out)``."""
    large = x.shape[1] * x.shape[2] >= SHIFTED_MATMUL_MIN_PIXELS
    if large and (_PLATFORM or jax.default_backend()) == "cpu":
        return _conv_shifted_grad(x, kernel)
    return _conv(x, kernel)


@jax.custom_vjp
def _conv_shifted_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _conv(x, kernel)


def _fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv(x, kernel), (x, kernel)


def _bwd(residuals: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    _, x_vjp = jax.vjp(functools.partial(_conv, kernel=kernel), x)
    (dx,) = x_vjp(dy)
    return dx, kernel_grad(x, dy, kernel.shape[0]).astype(kernel.dtype)


def kernel_grad(x: jax.Array, dy: jax.Array, size: int) -> jax.Array:
    """``d<dy, conv(x, W)>/dW`` as ``size * size`` shifted matmuls, float32 accumulation.

    Each tap is ``x_shift^T dy`` with both operands flattened to ``(B*H*W, C)`` and the
    transpose written out: ``(C_in, N) @ (N, C_out)``, the operand order XLA's CPU dot runs
    fastest (45 against 34 GFLOP/s for ``einsum("bhwc,bhwo->co")`` at 128 channels, 32x32,
    batch 32, on the 2-core development CPU; the formulations tried: benchmarks/RESULTS.md).
    The taps run one after another in a ``lax.scan``, so one shifted copy of ``x`` is alive at
    a time (unrolled, XLA kept them all: the DDPM++ 64 ch, batch 32 step's temp buffer was 6.57
    GB against 3.32 GB looped, benchmarks/RESULTS.md).
    """
    if size % 2 == 0:
        raise ValueError(f"conv2d_same needs an odd kernel size, got {size}")
    half = size // 2
    batch, height, width, channels = x.shape
    padded = jnp.pad(x, ((0, 0), (half, half), (half, half), (0, 0)))
    dy_flat = dy.reshape(-1, dy.shape[-1])
    offsets = jnp.array([(i, j) for i in range(size) for j in range(size)], jnp.int32)

    def tap(carry: None, offset: jax.Array) -> tuple[None, jax.Array]:
        shifted = jax.lax.dynamic_slice(padded, (0, offset[0], offset[1], 0),
                                        (batch, height, width, channels))
        return carry, jnp.matmul(shifted.reshape(-1, channels).T, dy_flat,
                                 preferred_element_type=jnp.float32)

    _, taps = jax.lax.scan(tap, None, offsets, unroll=_UNROLL_TAPS)
    return taps.reshape(size, size, channels, dy.shape[-1])


_conv_shifted_grad.defvjp(_fwd, _bwd)


class Conv(nn.Module):
    """Drop-in for ``nn.Conv(features, (k, k), padding="SAME")`` (same parameters: ``kernel``
    ``(k, k, C_in, C_out)`` and ``bias``), using ``conv2d_same``; 1x1 kernels are a matmul."""

    features: int
    kernel_size: int
    kernel_init: nn.initializers.Initializer
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        if k == 1:
            return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0]) + bias
        return conv2d_same(x, kernel) + bias
