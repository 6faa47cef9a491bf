"""The convolution with the shifted-matmul kernel gradient equals XLA's convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.models.conv import (
    SHIFTED_MATMUL_MIN_PIXELS,
    _conv,
    conv2d_same,
    kernel_grad,
    unrolled_taps,
)


@pytest.mark.parametrize("shape, k", [((3, 28, 28, 5), 3), ((2, 24, 30, 4), 5), ((2, 7, 9, 3), 3)])
def test_value_and_gradients_match_xla(shape, k):
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (k, k, shape[-1], 6))
    dy = jax.random.normal(ky, (*shape[:-1], 6))
    y, vjp = jax.vjp(conv2d_same, x, w)
    y_ref, vjp_ref = jax.vjp(_conv, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(dy), vjp_ref(dy), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(kernel_grad(x, dy, k), vjp_ref(dy)[1], rtol=1e-4, atol=1e-3)
    assert (shape[1] * shape[2] >= SHIFTED_MATMUL_MIN_PIXELS) == (shape[1] >= 14)


def test_unrolled_taps_same_values_and_all_flops_counted():
    """The taps run in a loop; unrolled (for cost analysis) they compute the same and XLA
    counts all k*k matmuls: 2 * B*H*W * k*k * C_in * C_out FLOPs."""
    b, h, w, c, o, k = 2, 16, 16, 4, 6, 3
    x = jax.random.normal(jax.random.key(3), (b, h, w, c))
    dy = jax.random.normal(jax.random.key(4), (b, h, w, o))

    def flops(fn):
        cost = jax.jit(fn).lower(x, dy).cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    looped = flops(lambda x, dy: kernel_grad(x, dy, k))
    looped_value = jax.jit(lambda x, dy: kernel_grad(x, dy, k))(x, dy)
    with unrolled_taps():
        unrolled = flops(lambda x, dy: kernel_grad(x, dy, k))
        unrolled_value = jax.jit(lambda x, dy: kernel_grad(x, dy, k))(x, dy)
    np.testing.assert_allclose(unrolled_value, looped_value, rtol=1e-6, atol=1e-6)
    matmuls = 2 * b * h * w * k * k * c * o
    assert matmuls <= unrolled < 1.1 * matmuls
    assert looped < unrolled / 4


def test_bfloat16_and_even_kernel_error():
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 4)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(2), (3, 3, 4, 4)).astype(jnp.bfloat16)
    g = jax.grad(lambda w: jnp.sum(conv2d_same(x, w).astype(jnp.float32) ** 2))(w)
    g_ref = jax.grad(lambda w: jnp.sum(_conv(x, w).astype(jnp.float32) ** 2))(w)
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32),
                               rtol=0.05, atol=0.5)
    with pytest.raises(ValueError, match="odd kernel"):
        kernel_grad(x, x, 2)
