"""Stateless batching: batches are pure functions of (seed, step, process_index, count)."""

import numpy as np
import pytest

from sagd_jax.data import (
    ArraySource,
    batch_indices,
    default_data_config,
    flip_mask,
    load_batch,
    to_float,
)


def test_same_arguments_give_the_same_batch():
    a = batch_indices(1000, seed=3, step=17, global_batch_size=64)
    b = batch_indices(1000, seed=3, step=17, global_batch_size=64)
    assert a.dtype == np.int64 and a.shape == (64,)
    np.testing.assert_array_equal(a, b)


def test_different_steps_and_seeds_differ():
    a = batch_indices(1000, seed=3, step=17, global_batch_size=64)
    assert not np.array_equal(a, batch_indices(1000, seed=3, step=18, global_batch_size=64))
    assert not np.array_equal(a, batch_indices(1000, seed=4, step=17, global_batch_size=64))


# (10, 4), (7, 3) and (5, 8) have batches straddling two epochs.
@pytest.mark.parametrize("num_examples,batch", [(12, 4), (10, 4), (7, 3), (5, 8)])
def test_every_example_once_per_epoch(num_examples, batch):
    epochs = 4
    steps = -(-epochs * num_examples // batch)
    stream = np.concatenate([batch_indices(num_examples, 0, s, batch) for s in range(steps)])
    perms = stream[: epochs * num_examples].reshape(epochs, num_examples)
    for perm in perms:
        np.testing.assert_array_equal(np.sort(perm), np.arange(num_examples))
    # The order is reshuffled between epochs.
    assert len({tuple(p) for p in perms}) > 1


@pytest.mark.parametrize("step", [0, 1, 7, 123])
def test_processes_concatenate_to_the_single_process_batch(step):
    whole = batch_indices(50, 9, step, 16)
    parts = [batch_indices(50, 9, step, 16, process_index=p, process_count=4) for p in range(4)]
    assert all(p.shape == (4,) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_resuming_needs_no_state():
    late = batch_indices(60000, 1, 10**7, 256)  # any step, computed directly
    np.testing.assert_array_equal(late, batch_indices(60000, 1, 10**7, 256))
    assert late.min() >= 0 and late.max() < 60000


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"global_batch_size": 10, "process_count": 4}, "not divisible"),
        ({"process_index": 4, "process_count": 4}, "process_index=4"),
        ({"step": -1}, "step=-1"),
        ({"seed": -2}, "seed=-2"),
        ({"num_examples": 0}, "num_examples=0"),
    ],
)
def test_bad_batching_arguments(kwargs, message):
    args = {"num_examples": 100, "seed": 0, "step": 0, "global_batch_size": 8}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        batch_indices(**args)


def _ramp_source(n=40, h=6, w=5, c=2):
    rng = np.random.default_rng(0)
    return ArraySource("ramp", rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8))


def test_to_float_maps_uint8_to_minus_one_one():
    x = to_float(np.array([0, 51, 255], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.array([-1.0, 51 / 127.5 - 1.0, 1.0], dtype=np.float32))


def test_load_batch_values_and_purity():
    source, cfg = _ramp_source(), default_data_config()
    batch = load_batch(source, cfg, seed=2, step=3, global_batch_size=8)
    assert batch.dtype == np.float32 and batch.shape == (8, 6, 5, 2)
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    idx = batch_indices(len(source), 2, 3, 8)
    np.testing.assert_array_equal(batch, to_float(source.images[idx]))
    np.testing.assert_array_equal(batch, load_batch(source, cfg, 2, 3, 8))


def test_load_batch_random_flip():
    source, cfg = _ramp_source(), default_data_config()
    cfg.random_flip = True
    batch = load_batch(source, cfg, seed=2, step=3, global_batch_size=16)
    clean = to_float(source.images[batch_indices(len(source), 2, 3, 16)])
    flips = flip_mask(2, 3, 16)
    assert 0 < flips.sum() < 16
    np.testing.assert_array_equal(batch[flips], clean[flips, :, ::-1])
    np.testing.assert_array_equal(batch[~flips], clean[~flips])


def test_load_batch_processes_concatenate_with_flips_and_corruption():
    source, cfg = _ramp_source(), default_data_config()
    cfg.random_flip = True
    cfg.corruption.kind = "band_noise"
    cfg.corruption.lo, cfg.corruption.hi = 0.3, 1.0
    for step in (0, 4, 9):
        whole = load_batch(source, cfg, 1, step, 12)
        parts = [load_batch(source, cfg, 1, step, 12, p, 4) for p in range(4)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_corruption_is_tied_to_the_example_not_the_step():
    source, cfg = _ramp_source(n=8), default_data_config()
    cfg.corruption.kind = "stripes"
    cfg.corruption.lo, cfg.corruption.hi, cfg.corruption.amplitude = 0.5, 0.9, 0.3
    deltas = {}
    for step in range(4):  # batch 8 = the whole dataset: each step is a new epoch
        idx = batch_indices(8, 0, step, 8)
        delta = load_batch(source, cfg, 0, step, 8) - to_float(source.images[idx])
        assert np.abs(delta).max() > 0.1
        for i, d in zip(idx, delta, strict=True):
            deltas.setdefault(int(i), []).append(d)
    for same in deltas.values():
        for d in same[1:]:
            np.testing.assert_allclose(d, same[0], atol=1e-6)
