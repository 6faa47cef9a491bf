"""The grf source: deterministic, float32, and distributed as its exact Gaussian model."""

from __future__ import annotations

import numpy as np
import pytest

from sagd_jax.data import default_data_config, get_source, grf_model, load_batch
from sagd_jax.metrics.spectra import power_spectrum


def grf_config(**overrides):
    cfg = default_data_config()
    cfg.name, cfg.image_size, cfg.channels, cfg.num_examples = "grf", 16, 3, 5000
    cfg.grf.gamma, cfg.grf.rho0, cfg.grf.std = 1.5, 0.1, 0.5
    for key, value in overrides.items():
        setattr(cfg.grf, key, value)
    return cfg


def test_grf_matches_its_exact_spectrum():
    cfg = grf_config()
    source = get_source(cfg)
    x = source.get(np.arange(3000))
    assert x.dtype == np.float32 and x.shape == (3000, 16, 16, 3)
    var = power_spectrum(x)
    c = np.asarray(grf_model(cfg).spectrum, np.float64)
    n = 3000 * 3
    assert np.abs(var / c - 1).max() < 5 * np.sqrt(2 / n)
    assert abs(x.var() - 0.25) < 0.01  # pixel variance = std^2


def test_grf_is_a_pure_function_of_seed_and_index_and_skips_rescaling():
    cfg = grf_config()
    source = get_source(cfg)
    np.testing.assert_array_equal(source.get(np.array([7, 3])), source.get(np.array([7, 3])))
    assert not np.array_equal(source.get(np.array([7])), source.get(np.array([8])))
    reads, real_get = [], source.get
    source.get = lambda idx: reads.extend(int(i) for i in idx) or real_get(idx)
    batch = load_batch(source, cfg, seed=1, step=2, global_batch_size=8)
    assert len(reads) == 8 and batch.dtype == np.float32  # float32 fields: not rescaled
    np.testing.assert_array_equal(batch, real_get(np.array(reads)))


def test_grf_config_errors():
    with pytest.raises(ValueError, match=r"^data\.grf\.rho0=0\.0"):
        get_source(grf_config(rho0=0.0))
    with pytest.raises(ValueError, match=r"^data\.grf\.std=-1"):
        get_source(grf_config(std=-1.0))
