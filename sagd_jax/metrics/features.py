"""Feature-space metrics of image sets (float64 numpy): Frechet distance, KID, Inception Score,
and reference statistics files.

Features are any ``(N, D)`` arrays; ``sagd_jax.metrics.classifier`` provides those of a
Fashion-MNIST classifier trained in-project, an Inception network those of FID/KID/IS.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile

import numpy as np

from sagd_jax.files import write_npz


@dataclasses.dataclass(frozen=True)
class GaussianStats:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased) of a feature set, float64, and the
    number of images they were computed from (``None``: unknown, e.g. a pytorch-fid file)."""

    mean: np.ndarray
    cov: np.ndarray
    num_images: int | None = None

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"features: need (N >= 2, D), got {f.shape}")
        return cls(f.mean(axis=0), np.cov(f, rowvar=False), len(f))

    def save(self, path: str) -> None:
        """Write ``mu``, ``sigma`` (and ``num_images`` when known) to the ``.npz`` at ``path``,
        the keys pytorch-fid and EDM read; an existing file is never overwritten
        (``FileExistsError``)."""
        arrays = {"mu": np.asarray(self.mean, np.float64),
                  "sigma": np.asarray(self.cov, np.float64)}
        if self.num_images is not None:
            arrays["num_images"] = np.int64(self.num_images)
        try:
            write_npz(path, exclusive=True, **arrays)
        except FileExistsError:
            raise FileExistsError(f"{path}: exists already; reference statistics are never "
                                  "overwritten") from None

    @functools.cached_property
    def cov_sqrt(self) -> np.ndarray:
        """The PSD square root of ``cov`` (computed once: a reference used many times)."""
        return _psd_sqrt(self.cov)

    @classmethod
    def load(cls, path: str) -> GaussianStats:
        """Statistics saved by ``save``, pytorch-fid or EDM; see ``load_reference_stats``."""
        return load_reference_stats(path)


def _read_array(path: str, npz: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        value = npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        why = " ".join(f"{type(err).__name__}: {err}".split())
        raise ValueError(f"{path}: key {key!r} unreadable ({why})") from None
    if value.dtype.kind not in "biuf":
        raise ValueError(f"{path}: key {key!r} has dtype {value.dtype}, need real numbers")
    return value


def load_reference_stats(path: str) -> GaussianStats:
    """Feature statistics from the ``.npz`` at ``path`` with keys ``mu: (D,)`` and
    ``sigma: (D, D)``: the format of pytorch-fid / TTUR reference files, of EDM's ``fid.py ref``
    (``np.savez(dest, mu=mu, sigma=sigma)``) and of ``GaussianStats.save`` (which adds a
    scalar ``num_images``). Other keys (e.g. ADM's ``arr_0``, ``mu_s``) are ignored and not
    read. Values come back as float64. A missing file, a file that is not an ``.npz``, missing
    keys, shapes that do not fit or non-finite values raise a one-line ``ValueError`` naming
    ``path``."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (reference statistics)")
    with open(path, "rb") as f:  # np.load(path) leaks the file when the zip is unreadable
        try:
            npz = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            raise ValueError(f"{path}: not an .npz file") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not an .npz with 'mu' and 'sigma'")
        missing = [key for key in ("mu", "sigma") if key not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {', '.join(missing)} (has: "
                             f"{', '.join(npz.files) or 'none'})")
        mu, sigma = _read_array(path, npz, "mu"), _read_array(path, npz, "sigma")
        num_images = None
        if "num_images" in npz.files:
            count = _read_array(path, npz, "num_images")
            if count.shape != () or count.dtype.kind not in "iu" or count < 1:
                raise ValueError(f"{path}: num_images must be a positive integer scalar, got "
                                 f"{count.dtype} of shape {count.shape}")
            num_images = int(count)
    if mu.ndim != 1 or len(mu) < 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: need mu (D,) and sigma (D, D), got {mu.shape} and "
                         f"{sigma.shape}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    for key, value in (("mu", mu), ("sigma", sigma)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: {key} has {int(np.sum(~np.isfinite(value)))} non-finite "
                             "value(s)")
    return GaussianStats(mu, sigma, num_images)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``.

    The cross term uses the symmetric form, whose eigenvalues are those of ``S_a S_b``, so no
    complex square root appears; negative round-off eigenvalues are clipped to 0. Pass a
    reference used repeatedly as ``a``: its square root is kept (``cov_sqrt``).
    """
    root_a = a.cov_sqrt
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


@dataclasses.dataclass(frozen=True)
class InceptionScore:
    """Inception Score: ``mean`` and ``std`` (``ddof=0``, as torch-fidelity and the original
    OpenAI code compute it) of the per-split scores over ``num_splits`` splits."""

    mean: float
    std: float
    num_splits: int


def inception_score(logits: np.ndarray, num_splits: int = 10,
                    seed: int | None = None) -> InceptionScore:
    """Inception Score of classifier ``logits: (N, C)`` (pre-softmax, e.g. Inception-v3's 1008
    logits): per split of rows, ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the split's
    mean of ``p(y|x)``; softmax in float64.

    Splits are the consecutive row ranges ``[i N // S, (i + 1) N // S)`` (sizes differ by one at
    most when ``S`` does not divide ``N``). ``seed=None`` (the default) keeps the rows in order,
    as the original OpenAI code does; ``seed=k`` first permutes the rows with
    ``np.random.RandomState(k).permutation(N)``, which reproduces torch-fidelity's ``isc``
    exactly (it shuffles by default with ``k = 2020``). Terms with ``p(y|x) = 0`` count 0 (no
    NaN for classes that no row predicts).
    """
    x = np.asarray(logits, np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"inception_score: need logits (N, C), got shape {x.shape}")
    if num_splits < 1:
        raise ValueError(f"inception_score: num_splits must be >= 1, got {num_splits}")
    if len(x) < num_splits:
        raise ValueError(f"inception_score: need at least one row per split, got {len(x)} rows "
                         f"for {num_splits} splits")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"inception_score: {int(np.sum(~np.isfinite(x)))} non-finite logits")
    if seed is not None:
        x = x[np.random.RandomState(seed).permutation(len(x))]  # torch-fidelity's generator
    shifted = x - x.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(num_splits):
        rows = slice(i * len(x) // num_splits, (i + 1) * len(x) // num_splits)
        p_split, log_p_split = p[rows], log_p[rows]
        with np.errstate(divide="ignore", invalid="ignore"):  # classes no row predicts
            log_marginal = np.log(p_split.mean(axis=0, keepdims=True))
            terms = np.where(p_split > 0, p_split * (log_p_split - log_marginal), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return InceptionScore(float(np.mean(scores)), float(np.std(scores)), num_splits)
