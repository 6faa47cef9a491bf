"""Inception Score, KID and FID on feature arrays against float64 references written from the
definitions and against torch-fidelity's own functions; reference-statistics files."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

from sagd_jax.metrics.features import (
    GaussianStats,
    frechet_distance,
    inception_score,
    kernel_distance,
    load_reference_stats,
)


@pytest.fixture(scope="module")
def fidelity() -> types.SimpleNamespace:
    """torch-fidelity's metric modules, imported without its package ``__init__`` and
    ``utils`` (both import torchvision): a bare package and a stub ``utils`` whose names (the
    image pipelines, unused on feature arrays) are placeholders. ``sys.modules`` is restored
    afterwards, so other tests see what they saw before."""
    pytest.importorskip("torch")
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch-fidelity is not installed")
    before = {name: module for name, module in sys.modules.items()
              if name.split(".")[0] == "torch_fidelity"}
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("torch_fidelity.utils")

    def _unused(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch_fidelity.utils is stubbed in these tests")

    def _placeholder(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return _unused

    utils.__getattr__ = _placeholder  # type: ignore[attr-defined]
    sys.modules["torch_fidelity"], sys.modules["torch_fidelity.utils"] = package, utils
    for name in [n for n in sys.modules if n.startswith("torch_fidelity.metric_")]:
        del sys.modules[name]
    try:
        return types.SimpleNamespace(
            isc=importlib.import_module("torch_fidelity.metric_isc"),
            kid=importlib.import_module("torch_fidelity.metric_kid"),
            fid=importlib.import_module("torch_fidelity.metric_fid"),
        )
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "torch_fidelity"]:
            del sys.modules[name]
        sys.modules.update(before)


def _reference_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """IS straight from the definition, row by row in float64, splits [iN/S, (i+1)N/S)."""
    n = len(logits)
    scores = []
    for i in range(splits):
        part = logits[i * n // splits:(i + 1) * n // splits].astype(np.float64)
        p = np.exp(part) / np.exp(part).sum(axis=1, keepdims=True)
        marginal = p.mean(axis=0)
        kl = [np.sum(row * (np.log(row) - np.log(marginal))) for row in p]
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_the_definition_and_torch_fidelity(fidelity):
    import torch

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((1003, 50)) * 3).astype(np.float32)  # 10 does not divide N
    ours = inception_score(logits, num_splits=10)
    mean, std = _reference_is(logits, 10)
    assert ours.num_splits == 10
    assert ours.mean == pytest.approx(mean, rel=1e-12) and ours.std == pytest.approx(std, rel=1e-9)

    theirs = fidelity.isc.isc_features_to_metric(torch.from_numpy(logits), splits=10,
                                                 shuffle=False)
    assert ours.mean == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert ours.std == pytest.approx(theirs["inception_score_std"], rel=1e-9)
    # torch-fidelity's default: rows shuffled by RandomState(2020) first; seed=2020 mirrors it.
    shuffled = inception_score(logits, num_splits=10, seed=2020)
    theirs = fidelity.isc.isc_features_to_metric(torch.from_numpy(logits), splits=10)
    assert shuffled.mean == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert shuffled.std == pytest.approx(theirs["inception_score_std"], rel=1e-9)
    assert abs(shuffled.std - ours.std) > 1e-3 * ours.std  # the shuffle does change the splits


def test_inception_score_closed_forms():
    num_classes, confidence = 7, 3.0
    one_hot = np.tile(np.eye(num_classes), (4 * 5, 1))  # each split of 5 holds every class 4x
    # p(y|x) = softmax(c e_k), p(y) uniform: IS = K exp(-H(p(y|x))).
    top = np.exp(confidence) / (np.exp(confidence) + num_classes - 1)
    rest = 1 / (np.exp(confidence) + num_classes - 1)
    entropy = -(top * np.log(top) + (num_classes - 1) * rest * np.log(rest))
    soft = inception_score(confidence * one_hot, num_splits=5)
    assert soft.mean == pytest.approx(num_classes * np.exp(-entropy), rel=1e-12)
    assert soft.std == pytest.approx(0.0, abs=1e-12)
    sure = inception_score(1000.0 * one_hot, num_splits=5)  # exact zeros in p(y|x): no NaN
    assert sure.mean == pytest.approx(num_classes, rel=1e-12) and sure.std < 1e-12

    row = np.random.default_rng(1).standard_normal(10)
    same = inception_score(np.tile(row, (40, 1)), num_splits=4)
    assert same.mean == pytest.approx(1.0, abs=1e-12) and same.std < 1e-12

    # A class no row predicts (p = 0 exactly everywhere) changes nothing.
    logits = np.random.default_rng(2).standard_normal((60, 4))
    padded = np.concatenate([logits, np.full((60, 1), -1e4)], axis=1)
    assert inception_score(padded, 3).mean == pytest.approx(inception_score(logits, 3).mean,
                                                            rel=1e-12)


def test_inception_score_rejects_fewer_rows_than_splits():
    with pytest.raises(ValueError, match="9 rows for 10 splits") as err:
        inception_score(np.zeros((9, 5)), num_splits=10)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="non-finite"):
        inception_score(np.full((20, 5), np.nan), num_splits=2)


class _NumpyDrawingLikeOurs:
    """numpy, except that ``random.RandomState(seed)`` is ``default_rng(seed)``: put in place of
    torch-fidelity's ``np`` it draws KID's subsets exactly as ``kernel_distance`` does."""

    random = types.SimpleNamespace(RandomState=np.random.default_rng)

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)


def test_kid_matches_torch_fidelity_on_the_same_subsets(fidelity, monkeypatch):
    import torch

    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 32))
    b = rng.standard_normal((250, 32)) * 1.2 + 0.2
    ours = kernel_distance(a, b, num_subsets=20, subset_size=100, seed=5)
    monkeypatch.setattr(fidelity.kid, "np", _NumpyDrawingLikeOurs())
    theirs = fidelity.kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=100,
        rng_seed=5, verbose=False)  # defaults: poly kernel, degree 3, gamma 1/D, coef0 1
    assert ours.mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-10)
    # torch-fidelity's std has ddof=0, ours ddof=1.
    assert ours.std == pytest.approx(theirs["kernel_inception_distance_std"] * np.sqrt(20 / 19),
                                     rel=1e-9)
    assert ours.mean > 3 * ours.std > 0


def test_kid_on_whole_sets_matches_torch_fidelity_unpatched(fidelity):
    # Subsets as large as the sets are permutations of them, whatever the generator, and the
    # unbiased MMD^2 does not depend on the order: both must agree without sharing draws.
    import torch

    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((120, 16)), rng.standard_normal((120, 16)) + 0.1
    ours = kernel_distance(a, b, num_subsets=2, subset_size=120)
    theirs = fidelity.kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=2, kid_subset_size=120,
        verbose=False)
    assert ours.mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-10)


def test_frechet_distance_matches_torch_fidelity(fidelity):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    b = rng.standard_normal((300, 16)) * np.linspace(0.5, 2, 16) + 0.3
    sa, sb = GaussianStats.of(a), GaussianStats.of(b)
    theirs = fidelity.fid.fid_statistics_to_metric(
        {"mu": sa.mean, "sigma": sa.cov}, {"mu": sb.mean, "sigma": sb.cov}, verbose=False)
    assert frechet_distance(sa, sb) == pytest.approx(theirs["frechet_inception_distance"],
                                                     rel=1e-6)


def test_reference_stats_round_trip_and_are_never_overwritten(tmp_path):
    features = np.random.default_rng(6).standard_normal((50, 8))
    stats = GaussianStats.of(features)
    path = str(tmp_path / "ref.npz")
    stats.save(path)
    for loaded in (GaussianStats.load(path), load_reference_stats(path)):
        np.testing.assert_array_equal(loaded.mean, stats.mean)
        np.testing.assert_array_equal(loaded.cov, stats.cov)
        assert loaded.num_images == 50 and loaded.mean.dtype == np.float64
    with open(path, "rb") as f:
        content = f.read()
    with pytest.raises(FileExistsError, match="ref.npz"):
        GaussianStats.of(features[:10]).save(path)
    with open(path, "rb") as f:
        assert f.read() == content
    assert sorted(os.listdir(tmp_path)) == ["ref.npz"]  # no temporary file left behind


def test_pytorch_fid_and_edm_style_files_give_the_fid_of_the_features(tmp_path):
    rng = np.random.default_rng(7)
    reference, generated = rng.standard_normal((200, 12)), rng.standard_normal((150, 12)) + 0.1
    mu, sigma = reference.mean(axis=0), np.cov(reference, rowvar=False)
    direct = frechet_distance(GaussianStats.of(generated), GaussianStats.of(reference))
    pytorch_fid = str(tmp_path / "pytorch_fid.npz")
    np.savez(pytorch_fid, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    adm_like = str(tmp_path / "adm.npz")  # extra keys are tolerated and not read
    np.savez(adm_like, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma,
             mu_s=mu[:3], sigma_s=sigma[:3, :3])
    loaded = load_reference_stats(pytorch_fid)
    assert loaded.num_images is None and loaded.cov.dtype == np.float64
    assert frechet_distance(GaussianStats.of(generated), loaded) == pytest.approx(direct,
                                                                                  rel=1e-5)
    assert frechet_distance(GaussianStats.of(generated),
                            load_reference_stats(adm_like)) == pytest.approx(direct, rel=1e-12)


def _write(path: str, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)


def _bad_files(folder: str) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message fragment) of each kind of unusable statistics file."""
    mu, sigma = np.zeros(4), np.eye(4)
    cases: dict[str, tuple[str, str]] = {}

    def case(name: str, fragment: str) -> str:
        path = os.path.join(folder, name)
        cases[name] = (path, fragment)
        return path

    case("missing.npz", "no such file")
    with open(case("text.npz", "not an .npz"), "w") as f:
        f.write("mu sigma\n")
    with open(case("array.npz", "single .npy"), "wb") as f:
        np.save(f, mu)
    _write(case("full.npz", ""), mu=mu, sigma=sigma)
    with open(cases["full.npz"][0], "rb") as f:
        whole = f.read()
    del cases["full.npz"]
    with open(case("truncated.npz", "not an .npz"), "wb") as f:
        f.write(whole[: len(whole) // 2])
    _write(case("no_sigma.npz", "missing key(s) sigma"), mu=mu, other=sigma)
    _write(case("wide_sigma.npz", "need mu (D,) and sigma (D, D)"), mu=mu, sigma=np.ones((4, 5)))
    _write(case("matrix_mu.npz", "need mu (D,) and sigma (D, D)"), mu=sigma, sigma=sigma)
    nan_sigma = np.eye(4)
    nan_sigma[0, 1] = np.nan
    _write(case("nan_sigma.npz", "sigma has 1 non-finite"), mu=mu, sigma=nan_sigma)
    _write(case("inf_mu.npz", "mu has 1 non-finite"), mu=np.array([0, np.inf, 0, 0]),
           sigma=sigma)
    _write(case("text_mu.npz", "dtype"), mu=np.array(["a", "b", "c", "d"]), sigma=sigma)
    _write(case("object_mu.npz", "unreadable"), mu=np.array([None, 1, 2, 3], dtype=object),
           sigma=sigma)
    _write(case("float_count.npz", "num_images"), mu=mu, sigma=sigma, num_images=np.float64(3))
    return cases


def test_each_unusable_statistics_file_gives_one_line_naming_it(tmp_path):
    cases = _bad_files(str(tmp_path))
    assert len(cases) == 12
    for path, fragment in cases.values():
        with pytest.raises(ValueError) as err:
            load_reference_stats(path)
        message = str(err.value)
        assert path in message and fragment in message and "\n" not in message, message
