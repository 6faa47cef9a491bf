"""Band-confined corruption: no energy outside lo <= rho <= hi, for any image size."""

import math

import numpy as np
import pytest

from sagd_jax.data.corruption import (
    Corruption,
    band_mask,
    band_noise_pattern,
    stripes_pattern,
)

SIZES = [(28, 28), (7, 5), (5, 7), (8, 6), (32, 32), (9, 16)]
BANDS = [(0.0, 0.2), (0.3, 0.5), (0.5, 0.7), (0.9, 1.2), (1.0, 1.0), (1.2, math.sqrt(2))]


def _outside_energy_ratio(pattern, mask):
    power = np.abs(np.fft.fft2(pattern)) ** 2
    return power[~mask].sum() / power.sum(), power[~mask].max() / power.sum()


@pytest.mark.parametrize("kind", ["stripes", "band_noise"])
@pytest.mark.parametrize("size", SIZES)
def test_energy_stays_inside_the_band(kind, size):
    height, width = size
    make = stripes_pattern if kind == "stripes" else band_noise_pattern
    tested = 0
    for lo, hi in BANDS:
        mask = band_mask(height, width, lo, hi)
        if not mask.any():
            continue
        tested += 1
        for index in range(6):
            rng = np.random.default_rng([11, index])
            pattern = make(height, width, lo, hi, 0.7, rng)
            assert pattern.dtype == np.float64 and pattern.shape == size
            assert np.abs(pattern).max() > 1e-3
            total, per_bin = _outside_energy_ratio(pattern, mask)
            assert total < 1e-10 and per_bin < 1e-10, (lo, hi, index)
    assert tested >= 3


def test_the_energy_check_detects_leaks():
    # Clipping a strong pattern moves energy out of the band: the check must see it.
    mask = band_mask(28, 28, 0.3, 0.5)
    pattern = stripes_pattern(28, 28, 0.3, 0.5, 2.0, np.random.default_rng(0))
    assert _outside_energy_ratio(pattern, mask)[0] < 1e-10
    assert _outside_energy_ratio(np.clip(pattern, -1, 1), mask)[0] > 1e-3
    assert 0 < mask.sum() < mask.size


def test_amplitudes():
    for index in range(5):
        rng = np.random.default_rng(index)
        noise = band_noise_pattern(16, 12, 0.2, 0.8, 0.25, rng)
        assert np.sqrt(np.mean(noise**2)) == pytest.approx(0.25, rel=1e-12)
        stripes = stripes_pattern(16, 12, 0.2, 0.8, 0.25, rng)
        assert np.abs(stripes).max() <= 0.25 + 1e-12
        assert np.abs(stripes).max() > 0.1


def test_stripe_orientation_and_phase_are_random():
    spectra = set()
    for index in range(40):
        pattern = stripes_pattern(28, 28, 0.4, 0.6, 1.0, np.random.default_rng(index))
        power = np.abs(np.fft.fft2(pattern)) ** 2
        spectra.add(tuple(sorted(map(tuple, np.argwhere(power > 1e-6 * power.max())))))
    assert len(spectra) > 10  # many different frequency pairs (+k, -k)


def test_patterns_are_pure_functions_of_seed_and_index():
    c = Corruption(kind="band_noise", lo=0.3, hi=0.6, amplitude=0.2, seed=4)
    both = c.patterns(np.array([3, 9]), 8, 8)
    np.testing.assert_array_equal(both[0], c.patterns(np.array([3]), 8, 8)[0])
    np.testing.assert_array_equal(both[1], c.patterns(np.array([9]), 8, 8)[0])
    assert not np.allclose(both[0], both[1])
    other_seed = Corruption(kind="band_noise", lo=0.3, hi=0.6, amplitude=0.2, seed=5)
    assert not np.allclose(both[0], other_seed.patterns(np.array([3]), 8, 8)[0])


def test_apply_adds_to_every_channel_without_clipping():
    c = Corruption(kind="stripes", lo=0.9, hi=1.0, amplitude=0.5, seed=0)
    images = np.ones((2, 6, 10, 3), dtype=np.float32)
    out = c.apply(images, np.array([0, 1]))
    assert out.dtype == np.float32 and out.shape == images.shape
    assert out.max() > 1.2  # not clipped to [-1, 1]
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    pattern = c.patterns(np.array([0, 1]), 6, 10)
    np.testing.assert_allclose(out[..., 1] - 1.0, pattern, atol=1e-6)
    none = Corruption(kind="none")
    np.testing.assert_array_equal(none.apply(images, np.array([0, 1])), images)


def test_band_without_bins_is_rejected():
    # rho on a 4x4 grid takes the values 0, 0.5, 0.707, 1, 1.118, 1.414 only.
    c = Corruption(kind="stripes", lo=0.55, hi=0.6)
    with pytest.raises(ValueError, match=r"^data\.corruption\.lo=0\.55: .*4x4") as err:
        c.check_image_size(4, 4)
    assert "\n" not in str(err.value)
    c.check_image_size(28, 28)  # the same band is fine at 28x28
    Corruption(kind="none", lo=0.55, hi=0.6).check_image_size(4, 4)
