"""The grain pipeline: batches are pure functions of (seed, step, process_index, count)."""

import numpy as np
import pytest

from sagd_jax.data import (
    ArraySource,
    batches,
    default_data_config,
    iterate,
    load_batch,
)
from sagd_jax.images import to_float


def _labelled_source(n):
    """Image i is constant i: its index reads back from any pixel, crops and flips aside."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 1))
    return ArraySource("labelled", np.ascontiguousarray(images))


def _indices(batch):
    return np.rint((batch[:, 0, 0, 0] + 1.0) * 127.5).astype(np.int64)


def _ramp_source(n=40, h=6, w=5, c=3):
    rng = np.random.default_rng(0)
    return ArraySource("ramp", rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8))


def _config(size=4, channels=1, **data):
    cfg = default_data_config()
    cfg.image_size, cfg.channels = size, channels
    for key, value in data.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


class _CountingSource(ArraySource):
    """Counts the examples read (the pipeline reads one at a time through ``get``)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads = []

    def get(self, indices):
        self.reads.extend(int(i) for i in indices)
        return super().get(indices)


def test_same_arguments_give_the_same_batch_and_others_differ():
    source, cfg = _labelled_source(200), _config()
    a = load_batch(source, cfg, seed=3, step=17, global_batch_size=64)
    assert a.dtype == np.float32 and a.shape == (64, 4, 4, 1)
    np.testing.assert_array_equal(a, load_batch(source, cfg, 3, 17, 64))
    assert not np.array_equal(a, load_batch(source, cfg, 3, 18, 64))
    assert not np.array_equal(a, load_batch(source, cfg, 4, 17, 64))


# (10, 4), (7, 3) and (5, 8) have batches straddling two epochs.
@pytest.mark.parametrize("num_examples,batch", [(12, 4), (10, 4), (7, 3), (5, 8)])
def test_every_example_once_per_epoch(num_examples, batch):
    epochs = 4
    steps = -(-epochs * num_examples // batch)
    dataset = batches(_labelled_source(num_examples), _config(), 0, batch)
    stream = np.concatenate([_indices(dataset[s]) for s in range(steps)])
    perms = stream[: epochs * num_examples].reshape(epochs, num_examples)
    for perm in perms:
        np.testing.assert_array_equal(np.sort(perm), np.arange(num_examples))
    assert len({tuple(p) for p in perms}) > 1  # reshuffled between epochs


@pytest.mark.parametrize("step", [0, 1, 7, 123])
def test_processes_concatenate_to_the_single_process_batch(step):
    source = _ramp_source(n=50, h=9, w=7)
    cfg = _config(size=5, channels=3, random_flip=True, crop="random", resize=False,
                  **{"corruption.kind": "band_noise", "corruption.lo": 0.3,
                     "corruption.hi": 1.0})
    whole = load_batch(source, cfg, 9, step, 16)
    parts = [load_batch(source, cfg, 9, step, 16, process_index=p, process_count=4)
             for p in range(4)]
    assert all(p.shape == (4, 5, 5, 3) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_each_process_reads_only_its_slice():
    images = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 1), dtype=np.uint8)
    reads = {}
    for process in range(4):
        source = _CountingSource("counted", images)
        dataset = batches(source, _config(), 5, 16, process, 4)
        for step in range(3):
            dataset[step]
        reads[process] = source.reads
    whole = _CountingSource("counted", images)
    single = batches(whole, _config(), 5, 16)
    for step in range(3):
        single[step]
    assert all(len(r) == 3 * 4 for r in reads.values())  # 3 steps x its 4 examples, no more
    for step in range(3):  # process p read exactly its quarter of each global batch
        np.testing.assert_array_equal(
            np.concatenate([reads[p][4 * step:4 * step + 4] for p in range(4)]),
            whole.reads[16 * step:16 * step + 16])


def test_resuming_needs_no_state_and_threads_read_the_same_batches():
    source = _ramp_source()
    cfg = _config(size=5, channels=3, random_flip=True, crop="random", resize=False)
    dataset = batches(source, cfg, 1, 8)
    late = dataset[10**6]  # any step, computed directly
    np.testing.assert_array_equal(late, load_batch(source, cfg, 1, 10**6, 8))
    for workers in (0, 2):
        read = list(iterate(dataset, 5, 12, workers, prefetch=2))
        assert len(read) == 7
        for step, batch in enumerate(read, 5):
            np.testing.assert_array_equal(batch, dataset[step])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"global_batch_size": 10, "process_count": 4}, "not divisible"),
        ({"process_index": 4, "process_count": 4}, "process_index=4"),
        ({"step": -1}, "step=-1"),
        ({"seed": -2}, "seed=-2"),
    ],
)
def test_bad_batching_arguments(kwargs, message):
    args = {"seed": 0, "step": 0, "global_batch_size": 8}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        load_batch(_labelled_source(100), _config(), **args)


def test_to_float_maps_uint8_to_minus_one_one():
    x = to_float(np.array([0, 51, 255], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.array([-1.0, 51 / 127.5 - 1.0, 1.0], dtype=np.float32))


def test_random_flip_mirrors_about_half_of_the_images():
    n = 40
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 6, 5, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # a label in the corner...
    images[:, 0, -1, 0] = 255 - np.arange(n)  # ...and its mirror image in the other
    source = ArraySource("flips", images)
    cfg = _config(size=6, resize=False, random_flip=True)
    cfg.crop = "center"
    with pytest.raises(ValueError, match="data.image_size=6: larger than the 6x5 images"):
        load_batch(source, cfg, 2, 3, 16)
    cfg.image_size = 5
    batch = load_batch(source, cfg, seed=2, step=3, global_batch_size=32)
    crops = to_float(images[:, :5, :5])  # centre crop of 6x5: rows 0..4
    flipped = 0
    for x in batch:
        left = int(np.rint((x[0, 0, 0] + 1) * 127.5))
        index = left if left < n else 255 - left
        if left == index:
            np.testing.assert_array_equal(x, crops[index])
        else:
            np.testing.assert_array_equal(x, crops[index][:, ::-1])
            flipped += 1
    assert 0 < flipped < 32


def test_corruption_is_tied_to_the_example_not_the_step():
    source = _labelled_source(8)
    cfg = _config(**{"corruption.kind": "stripes", "corruption.lo": 0.5, "corruption.hi": 0.9,
                     "corruption.amplitude": 0.3})
    clean = _config()
    deltas = {}
    for step in range(4):  # batch 8 = the whole dataset: each step is a new epoch
        plain = load_batch(source, clean, 0, step, 8)
        delta = load_batch(source, cfg, 0, step, 8) - plain
        assert np.abs(delta).max() > 0.1
        for i, d in zip(_indices(plain), delta, strict=True):
            deltas.setdefault(int(i), []).append(d)
    assert sorted(deltas) == list(range(8))
    for same in deltas.values():
        for d in same[1:]:
            np.testing.assert_allclose(d, same[0], atol=1e-6)
