"""bfloat16 compute against float32: the loss curves of the same short run track each other."""

from __future__ import annotations

import json
import os

import numpy as np
from test_train import tiny_config

from sagd_jax.train.loop import train_and_evaluate

STEPS, LOG_EVERY = 60, 10
TOLERANCE = 0.05  # relative difference of each interval's mean loss


def loss_curve(workdir: str, dtype: str) -> np.ndarray:
    config = tiny_config(**{"model.dtype": dtype, "train.num_steps": STEPS,
                            "train.log_every": LOG_EVERY, "train.checkpoint_every": STEPS,
                            "train.sample_every": STEPS, "model.dropout": 0.0})
    train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return np.array([json.loads(line)["loss"] for line in f if line.strip()])


def test_bfloat16_loss_curve_tracks_float32(tmp_path):
    """Same seed, data, noise levels and noise; only the network's compute dtype differs
    (parameters, optimizer and EMA stay float32). Each 10-step mean loss of the bf16 run is
    within 5% of the f32 run's, and both runs learn (the loss falls)."""
    f32 = loss_curve(str(tmp_path / "f32"), "float32")
    bf16 = loss_curve(str(tmp_path / "bf16"), "bfloat16")
    assert f32.shape == bf16.shape == (STEPS // LOG_EVERY,)
    assert f32[-1] < 0.8 * f32[0] and bf16[-1] < 0.8 * bf16[0]
    relative = np.abs(bf16 - f32) / f32
    assert relative.max() < TOLERANCE, relative
    assert not np.array_equal(f32, bf16)  # the dtype did change the arithmetic
