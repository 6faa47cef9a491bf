"""Shared test helpers: dense float64 references of the spectral operators."""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
import pytest

# One persistent XLA compilation cache for the whole test session (subprocesses started by the
# tests inherit it through the environment): the trainer tests compile the same tiny programs
# many times, and on a 2-core CPU compiling costs far more than running them.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sagd-jax-test-xla-cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def unitary_dft_matrix(height: int, width: int) -> np.ndarray:
    """The unitary 2-D DFT on row-major flattened (H, W) images, complex128 (H*W, H*W)."""

    def dft(n: int) -> np.ndarray:
        k = np.arange(n)
        return np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)

    return np.kron(dft(height), dft(width))


def dense_multiplier(full_multiplier: np.ndarray) -> np.ndarray:
    """``F^H diag(m) F`` for a multiplier on the full (H, W) grid, float64 (real part)."""
    height, width = full_multiplier.shape
    f = unitary_dft_matrix(height, width)
    dense = f.conj().T @ np.diag(full_multiplier.reshape(-1).astype(np.complex128)) @ f
    assert np.abs(dense.imag).max() < 1e-10 * max(1.0, np.abs(dense.real).max())
    return dense.real


def dense_operator(op, height: int, width: int) -> np.ndarray:
    """The matrix of a linear image operator, from its action on the identity basis."""
    basis = np.eye(height * width, dtype=np.float32).reshape(height * width, height, width, 1)
    columns = np.asarray(op(basis), np.float64).reshape(height * width, height * width)
    return columns.T


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
