"""Feature-space distances between two image sets: Frechet distance and KID (float64 numpy).

Features are any ``(N, D)`` arrays; ``sagd_jax.metrics.classifier`` provides those of a
Fashion-MNIST classifier trained in-project.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianStats:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased) of a feature set, float64."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"features: need (N >= 2, D), got {f.shape}")
        return cls(f.mean(axis=0), np.cov(f, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``.

    The cross term uses the symmetric form, whose eigenvalues are those of ``S_a S_b``, so no
    complex square root appears; negative round-off eigenvalues are clipped to 0.
    """
    root_a = _psd_sqrt(a.cov)
    inner = root_a @ b.cov @ root_a
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)))
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * cross)


@dataclasses.dataclass(frozen=True)
class KID:
    """Kernel distance: mean of the unbiased MMD^2 over subsets, their std, and its s.e.

    ``std`` is the spread over subsets (what KID tables usually quote); ``sem = std /
    sqrt(num_subsets)`` is the standard error of ``mean`` if subsets were independent (they
    overlap, so it is optimistic; ``std`` is the conservative figure).
    """

    mean: float
    std: float
    sem: float
    num_subsets: int
    subset_size: int


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kernel_distance(a: np.ndarray, b: np.ndarray, num_subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> KID:
    """KID between feature sets ``a: (N, D)`` and ``b: (M, D)`` with the cubic polynomial
    kernel ``k(x, y) = (x.y / D + 1)^3``; subsets of ``min(subset_size, N, M)`` drawn without
    replacement from a generator seeded with ``seed``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID: need at least 2 features per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = np.array([
        _polynomial_mmd2(a[rng.choice(len(a), size, replace=False)],
                         b[rng.choice(len(b), size, replace=False)])
        for _ in range(num_subsets)
    ])
    std = float(values.std(ddof=1)) if num_subsets > 1 else 0.0
    return KID(float(values.mean()), std, std / np.sqrt(num_subsets), num_subsets, size)


@dataclasses.dataclass(frozen=True)
class BlockKID:
    """KID from disjoint blocks: ``mean`` of the unbiased MMD^2 over ``num_blocks`` pairs of
    disjoint sample and reference blocks of ``block_size`` features, and its standard error
    ``sem = std / sqrt(num_blocks)``, valid because the blocks share no features."""

    mean: float
    sem: float
    num_blocks: int
    block_size: int


def kernel_distance_blocks(a: np.ndarray, b: np.ndarray, num_blocks: int = 10,
                           seed: int = 0) -> BlockKID:
    """KID between ``a: (N, D)`` and ``b: (M, D)`` with a standard error that includes the
    sampling noise of ``a`` itself: both sets are shuffled and cut into ``num_blocks`` disjoint
    blocks of ``min(N, M) // num_blocks`` features (same kernel as ``kernel_distance``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(len(a), len(b)) // num_blocks
    if num_blocks < 2 or size < 2:
        raise ValueError(f"KID blocks: need >= 2 blocks of >= 2 features, got {num_blocks} "
                         f"blocks from {len(a)} and {len(b)} features")
    rng = np.random.default_rng(seed)
    ia, ib = rng.permutation(len(a)), rng.permutation(len(b))
    values = np.array([
        _polynomial_mmd2(a[ia[k * size:(k + 1) * size]], b[ib[k * size:(k + 1) * size]])
        for k in range(num_blocks)
    ])
    return BlockKID(float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_blocks)),
                    num_blocks, size)
