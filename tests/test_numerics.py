"""bfloat16 compute against float32: the loss curves of the same short run track each other."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sagd_jax.run import Run
from sagd_jax.sharding import make_mesh

STEPS, LOG_EVERY = 60, 10
TOLERANCE = 0.05  # relative difference of each interval's mean loss


def loss_curve(tiny_config, dtype: str) -> np.ndarray:
    """The mean loss of each ``LOG_EVERY`` steps of the trainer's jitted step (``Run``), every
    step finite."""
    config = tiny_config(**{"model.dtype": dtype, "model.dropout": 0.0})
    run = Run.from_config(config)
    mesh = make_mesh()
    state, step = run.init_state(mesh), run.train_step(mesh)
    history = []
    for s in range(STEPS):
        state, metrics = step(state, run.global_batch(s, mesh))
        history.append(metrics)
    history = jax.device_get(history)
    assert not any(int(m["nonfinite"]) for m in history)
    losses = np.array([float(m["loss"]) for m in history])
    return losses.reshape(STEPS // LOG_EVERY, LOG_EVERY).mean(axis=1)


@pytest.mark.slow
def test_bfloat16_loss_curve_tracks_float32(tiny_config):
    """Same seed, data, noise levels and noise; only the network's compute dtype differs
    (parameters, optimizer and EMA stay float32). Each 10-step mean loss of the bf16 run is
    within 5% of the f32 run's, and both runs learn (the loss falls)."""
    f32 = loss_curve(tiny_config, "float32")
    bf16 = loss_curve(tiny_config, "bfloat16")
    assert f32.shape == bf16.shape == (STEPS // LOG_EVERY,)
    assert f32[-1] < 0.8 * f32[0] and bf16[-1] < 0.8 * bf16[0]
    relative = np.abs(bf16 - f32) / f32
    assert relative.max() < TOLERANCE, relative
    assert not np.array_equal(f32, bf16)  # the dtype did change the arithmetic
