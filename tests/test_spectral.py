"""The spectral covariance operator against dense float64 ``F^H diag(.) F`` references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sagd_jax.config import default_config
from sagd_jax.spectral import Band, SpectralCovariance, parse_bands, radial_frequency

GRIDS = [(7, 5), (8, 8), (6, 9)]
SETTINGS = [
    dict(gamma=0.0),
    dict(gamma=1.5, rho0=0.1),
    dict(gamma=-1.0, rho0=0.05, bands=[Band("lowpass", hi=1.0, edge=0.3)]),
    dict(gamma=2.0, rho0=0.2, bands=[Band("bandstop", 0.3, 0.7)]),
    dict(gamma=0.5, bands=[Band("bandpass", 0.2, 1.2, edge=0.2), Band("highpass", lo=0.1)]),
]


def reference_weights(height, width, gamma=0.0, rho0=0.1, bands=()):
    """w on the full grid from docs/math.md's formulas, written independently of the package."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    rho = np.sqrt(fy**2 + fx**2) / 0.5
    w = (rho + rho0) ** (-gamma)

    def step_down(cut, edge):  # 1 below cut, 0 above, cosine ramp over [cut-edge/2, cut+edge/2]
        if edge == 0:
            return (rho <= cut).astype(float)
        ramp = 0.5 * (1 + np.cos(np.pi * (rho - cut + edge / 2) / edge))
        return np.where(rho <= cut - edge / 2, 1.0, np.where(rho >= cut + edge / 2, 0.0, ramp))

    for b in bands:
        below_hi = step_down(b.hi, b.edge)
        above_lo = (rho >= b.lo).astype(float) if b.edge == 0 else 1 - step_down(b.lo, b.edge)
        m = {
            "lowpass": below_hi,
            "highpass": above_lo,
            "bandpass": above_lo * below_hi,
            "bandstop": 1 - above_lo * below_hi,
        }[b.kind]
        w = w * np.where(m < 1e-9, 0.0, m)
    return w / w.mean()


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_weights_match_reference_and_are_even(grid, setting):
    height, width = grid
    cov = SpectralCovariance.create(height, width, **setting)
    assert cov.weights.shape == (height, width // 2 + 1)
    full = np.asarray(cov.full_weights(), np.float64)
    np.testing.assert_allclose(full, reference_weights(height, width, **setting), rtol=2e-6)
    mirrored = full[(-np.arange(height)) % height][:, (-np.arange(width)) % width]
    np.testing.assert_array_equal(full, mirrored)  # w(k) = w(-k): Sigma is real
    assert abs(full.mean() - 1.0) < 1e-6  # trace(Sigma) = H * W


@pytest.mark.slow
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_operators_equal_dense_float64_reference(grid, setting, dense_operator,
                                                 dense_multiplier, rel_err):
    height, width = grid
    cov = SpectralCovariance.create(height, width, **setting)
    w = reference_weights(height, width, **setting)
    support = w > 0
    safe = np.where(support, w, 1.0)
    expected = {
        "apply": w,
        "sqrt": np.sqrt(w),
        "inv_sqrt": np.where(support, 1 / np.sqrt(safe), 0.0),
        "inv": np.where(support, 1 / safe, 0.0),
        "project": support.astype(float),
    }
    for name, multiplier in expected.items():
        op = jax.jit(getattr(cov, name))
        got = dense_operator(op, height, width)
        want = dense_multiplier(multiplier)
        assert rel_err(got, want) < 1e-5, name
    # Sigma is symmetric PSD; the pseudo-inverse identities hold.
    sigma = dense_operator(cov.apply, height, width)
    assert rel_err(sigma, sigma.T) < 1e-6
    assert np.linalg.eigvalsh((sigma + sigma.T) / 2).min() > -1e-5 * np.abs(sigma).max()
    root = dense_operator(cov.sqrt, height, width)
    assert rel_err(root @ root, sigma) < 1e-5
    inv_root = dense_operator(cov.inv_sqrt, height, width)
    proj = dense_operator(cov.project, height, width)
    assert rel_err(inv_root @ root, proj) < 1e-5


def test_sample_covariance_matches_sigma_to_monte_carlo_error(dense_multiplier):
    height, width, n = 7, 5, 100_000
    cov = SpectralCovariance.create(
        height, width, gamma=1.0, bands=[Band("bandstop", 0.5, 0.8, edge=0.1)]
    )
    xs = np.asarray(cov.sample(jax.random.key(1), (n, height, width, 1)), np.float64)
    xs = xs.reshape(n, -1)
    empirical = xs.T @ xs / n
    sigma = dense_multiplier(reference_weights(height, width, 1.0, 0.1, parse_bands(
        "bandstop:0.5:0.8:0.1")))
    # Standard error of each entry of a Gaussian sample covariance (zero mean, known).
    stderr = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n)
    z = (empirical - sigma) / stderr
    assert np.abs(z).max() < 5.5
    assert 0.7 < np.mean(z**2) < 1.3


def test_dtypes_batch_dims_and_bfloat16():
    cov = SpectralCovariance.create(8, 8, gamma=1.0)
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 4))
    y = cov.sqrt(x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y[1, 2], cov.sqrt(x[1, 2]), rtol=1e-5, atol=1e-6)
    yb = cov.sqrt(x.astype(jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), y, rtol=0.02, atol=0.02)
    s = cov.sample(jax.random.key(0), (2, 8, 8, 3), dtype=jnp.bfloat16)
    assert s.shape == (2, 8, 8, 3) and s.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"\(\.\.\., 8, 8, C\)"):
        cov.sqrt(jnp.zeros((2, 8, 7, 1)))


@pytest.mark.slow
def test_jit_vmap_and_grad():
    cov = SpectralCovariance.create(6, 9, gamma=2.0, bands="bandstop:0.4:0.6")
    x = jax.random.normal(jax.random.key(0), (5, 6, 9, 2))
    # The covariance is a pytree: it can be a traced argument of jit.
    jitted = jax.jit(lambda c, v: c.inv_sqrt(v))(cov, x)
    np.testing.assert_allclose(jitted, cov.inv_sqrt(x), rtol=1e-5, atol=1e-5)
    mapped = jax.vmap(cov.sqrt)(x)
    np.testing.assert_allclose(mapped, cov.sqrt(x), rtol=1e-5, atol=1e-6)
    # d/dx 0.5 ||Sigma^{-1/2} x||^2 = Sigma^{-1} x (closed form).
    grad = jax.grad(lambda v: 0.5 * jnp.sum(cov.inv_sqrt(v) ** 2))(x)
    np.testing.assert_allclose(grad, cov.inv(x), rtol=1e-4, atol=1e-4)
    # Gradient with respect to the weights themselves is finite (no NaN from masked bins).
    gw = jax.grad(lambda c: jnp.sum(c.inv_sqrt(x) ** 2))(cov)
    assert np.all(np.isfinite(gw.weights))


def test_band_edges_and_parsing():
    rho = np.linspace(0, math.sqrt(2), 201)
    soft = Band("lowpass", hi=0.6, edge=0.2).mask(rho)
    assert np.all(soft[rho <= 0.5] == 1) and np.all(soft[rho >= 0.7] == 0)
    assert np.all(np.diff(soft) <= 0)
    np.testing.assert_allclose(Band("lowpass", hi=0.6, edge=0.2).mask(np.array([0.6])), 0.5)
    stop = Band("bandstop", 0.4, 0.6).mask(rho)
    assert np.all(stop[(rho >= 0.4) & (rho <= 0.6)] == 0) and np.all(stop[rho < 0.4] == 1)
    assert parse_bands("bandstop:0.4:0.6:0.05+lowpass::1.0") == (
        Band("bandstop", 0.4, 0.6, 0.05),
        Band("lowpass", 0.0, 1.0),
    )
    assert parse_bands([{"kind": "highpass", "lo": 0.2}]) == (Band("highpass", lo=0.2),)
    assert parse_bands([("bandpass", 0.1, 0.3)]) == (Band("bandpass", 0.1, 0.3),)
    assert parse_bands(None) == () == parse_bands("")


def test_radial_frequency_conventions():
    rho = radial_frequency(8, 8, half=False)
    assert rho[0, 0] == 0 and rho[4, 0] == 1 and rho[0, 4] == 1
    assert math.isclose(rho[4, 4], math.sqrt(2))
    rho = radial_frequency(7, 5, half=False)
    assert math.isclose(rho[3, 2], math.hypot(3 / 7, 2 / 5) / 0.5)
    np.testing.assert_array_equal(rho, rho[(-np.arange(7)) % 7][:, (-np.arange(5)) % 5])
    np.testing.assert_array_equal(radial_frequency(7, 5), rho[:, :3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gamma=float("nan")), r"^gamma=nan: must be a finite number$"),
        (dict(gamma=1.0, rho0=0.0), r"^rho0=0.0: must be > 0"),
        (dict(rho0=-1.0), r"^rho0=-1.0"),
        (dict(bands="bandpass:0.5:0.2"), r"^bands\[0\].*: lo=0\.5: must be <= hi=0\.2$"),
        (dict(bands="bandpass:0.5:1.6"), r"^bands\[0\].*must lie in \[0, sqrt\(2\)\]"),
        (dict(bands="notch:0.1:0.2"), r"^bands\[0\].*kind='notch'"),
        (dict(bands="lowpass:0.1:0.3"), r"^bands\[0\].*lowpass band uses only hi"),
        (dict(bands="lowpass::0.5+highpass:0.6"), r"^bands=.*remove every frequency"),
        (dict(bands="bandpass:0.05:0.1"), r"^bands=.*remove every frequency"),
    ],
)
def test_validation_errors_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectralCovariance.create(8, 8, **kwargs)


def test_from_config_and_its_errors():
    noise = default_config().noise
    noise.bands = "bandstop:0.3:0.5"
    cov = SpectralCovariance.from_config(noise, 8, 8)
    direct = SpectralCovariance.create(8, 8, gamma=1.0, rho0=0.1, bands="bandstop:0.3:0.5")
    np.testing.assert_array_equal(cov.weights, direct.weights)
    noise.gamma = float("inf")
    with pytest.raises(ValueError, match=r"^noise\.gamma=inf"):
        SpectralCovariance.from_config(noise, 8, 8)
    noise.gamma, noise.bands = 1.0, "bandpass:0.9:0.2"
    with pytest.raises(ValueError, match=r"^noise\.bands\[0\]"):
        SpectralCovariance.from_config(noise, 8, 8)
    with pytest.raises(ValueError, match=r"^height=0"):
        SpectralCovariance.from_config(noise, 0, 8)
    noise.bands = ""
    with noise.ignore_type():
        noise.normalize = 1
    with pytest.raises(ValueError, match=r"^noise\.normalize=1: must be True or False$"):
        SpectralCovariance.from_config(noise, 8, 8)


def test_from_config_of_the_default_noise_section_is_the_default_covariance():
    """``default_config().noise`` is the one default (gamma 1.0): ``from_config`` reads every
    key as it is, and a key missing from the section is an error, never another default."""
    noise = default_config().noise
    assert (noise.gamma, noise.rho0, noise.bands, noise.normalize) == (1.0, 0.1, "", True)
    cov = SpectralCovariance.from_config(noise, 16, 12)
    expected = SpectralCovariance.create(16, 12, gamma=1.0, rho0=0.1, bands=(), normalize=True)
    np.testing.assert_array_equal(cov.weights, expected.weights)
    assert not cov.identity and cov.full_support
    for key in ("gamma", "rho0", "bands", "normalize"):
        partial = ml_collections.ConfigDict({k: v for k, v in noise.items() if k != key})
        with pytest.raises(ValueError, match=rf"^noise\.{key}: missing from the config$"):
            SpectralCovariance.from_config(partial, 16, 12)


def test_isotropic_is_identity_and_unnormalised_keeps_scale():
    cov = SpectralCovariance.isotropic(7, 5)
    x = jax.random.normal(jax.random.key(2), (3, 7, 5, 2))
    for op in (cov.sqrt, cov.inv_sqrt, cov.inv, cov.project):
        np.testing.assert_allclose(op(x), x, rtol=1e-5, atol=1e-5)
    raw = SpectralCovariance.create(8, 8, gamma=1.0, rho0=0.5, normalize=False)
    assert math.isclose(float(raw.weights[0, 0]), 0.5**-1.0, rel_tol=1e-6)


def test_identity_and_full_support_skip_the_fft():
    """Isotropic noise runs no FFT; SAGD without bands none in ``project`` (the operators'
    values on these settings are checked against the dense reference above)."""
    iso = SpectralCovariance.create(8, 8)
    full = SpectralCovariance.create(8, 8, gamma=1.0)
    band = SpectralCovariance.create(8, 8, gamma=1.0, bands="bandstop:0.3:0.6")
    assert (iso.identity, iso.full_support) == (True, True)
    assert (full.identity, full.full_support) == (False, True)
    assert (band.identity, band.full_support) == (False, False)
    x = jnp.ones((2, 8, 8, 1))

    def count(jaxpr):
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "fft"
            total += sum(count(v.jaxpr) for v in eqn.params.values() if hasattr(v, "jaxpr"))
        return total

    def ffts(fn):
        return count(jax.make_jaxpr(fn)(x).jaxpr)

    assert ffts(iso.sqrt) == ffts(iso.inv_sqrt) == ffts(iso.project) == 0
    assert ffts(full.project) == 0 and ffts(full.sqrt) == 2
    assert ffts(band.project) == 2
    # Built from weights directly (no static facts), the general path gives the same values.
    general = SpectralCovariance(weights=band.weights, height=8, width=8)
    z = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    np.testing.assert_allclose(general.sqrt(z), band.sqrt(z), rtol=1e-6)
    np.testing.assert_allclose(SpectralCovariance(weights=iso.weights, height=8, width=8)
                               .sqrt(z), iso.sqrt(z), atol=1e-6)
