"""In-training evaluation: every ``train.eval_every`` steps, ``eval.num_samples`` samples from
the EMA weights, their FID and KID in the FID Inception-v3's features against the data's
cached reference (``sagd_jax.metrics.fid``), written to TensorBoard and ``metrics.jsonl``.

The weights file is resolved and the reference computed (or read from the cache) when the run
starts, before the first step, so a missing file stops the run in one line before any
training. Samples are drawn sharded over the run's mesh; each process computes the features
of its own shards on its local devices and the features are gathered, so the cost divides
over processes. Keys: ``fold_in(fold_in(stream(seed, rng.EVAL), step), batch)``: the same
samples whatever the device count. A latent run's samples are decoded (``Autoencoder.decode``,
on the mesh) before their features are taken.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from sagd_jax import console, rng
from sagd_jax.distributed import barrier
from sagd_jax.images import to_uint8


class InTrainingEval:
    """FID/KID of the EMA weights' samples; ``__call__(ema_params, step) -> scalars``."""

    def __init__(self, run: Any, mesh: jax.sharding.Mesh):
        from sagd_jax.metrics.fid import compute_reference
        from sagd_jax.metrics.inception import InceptionFeatures, weights_path
        from sagd_jax.sharding import make_mesh

        cfg = run.config.eval
        weights = weights_path(cfg.inception_weights or None)  # one line if missing
        self.run, self.mesh, self.cfg = run, mesh, cfg
        processes = jax.process_count()
        local = make_mesh(jax.local_devices())
        self.extractor = InceptionFeatures.from_file(
            weights, mesh=local, batch_size=max(cfg.batch_size // processes, 1))
        split = cfg.reference_split or run.config.data.split
        started = time.perf_counter()
        if jax.process_index() == 0:  # writes the cache; the others then read it
            self.reference, path = compute_reference(run.config.data, self.extractor, split,
                                                     cfg.reference_images)
        barrier("sagd-eval-reference")
        if jax.process_index() != 0:
            self.reference, path = compute_reference(run.config.data, self.extractor, split,
                                                     cfg.reference_images)
        console.info("evaluation: FID/KID of %d samples every %d steps against %s (%s)",
                     cfg.num_samples, run.config.train.eval_every, path,
                     console.duration(time.perf_counter() - started))

    def local_samples(self, params: Any, step: int) -> np.ndarray:
        """This process's share of the ``eval.num_samples`` samples at ``step``, uint8
        ``(n, *data_shape)`` (a latent run's decoded)."""
        from jax.experimental import multihost_utils

        from sagd_jax.samplers import get_sampler
        from sagd_jax.sharding import batch_sharding

        train = self.run.config.train
        sampler = get_sampler(self.cfg.sampler or train.sampler)
        steps = self.cfg.steps or train.sample_steps
        base = jax.random.fold_in(rng.stream_key(self.run.config.seed, rng.EVAL), step)
        shape = (self.cfg.batch_size, *self.run.image_shape)
        parts = []
        num_batches = -(-self.cfg.num_samples // self.cfg.batch_size)
        for i in range(num_batches):  # balanced labels over the whole set (a conditional run)
            eps_fn = self.run.sample_eps_fn(params, shape[0], start=i * shape[0])
            images = sampler(self.run.process, eps_fn, jax.random.fold_in(base, i), shape,
                             steps, sharding=batch_sharding(self.mesh))
            shards = sorted(images.addressable_shards, key=lambda s: s.index[0].start or 0)
            if self.run.latent is None:
                parts += [np.asarray(s.data) for s in shards]
                continue
            latents = np.asarray(multihost_utils.process_allgather(images, tiled=True))
            pixels = self.run.decoder(self.mesh)(latents, uint8=True)  # every process: all
            parts += [pixels[s.index[0]] for s in shards]
        images = np.concatenate(parts)
        return images if images.dtype == np.uint8 else to_uint8(images)

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        """``{"fid", "kid", "kid_std", "eval_seconds"}`` of the samples of ``params`` (every
        process gets the same numbers)."""
        from jax.experimental import multihost_utils

        from sagd_jax.metrics.features import GaussianStats, frechet_distance, kernel_distance

        started = time.perf_counter()
        features = self.extractor(self.local_samples(params, step))
        if jax.process_count() > 1:
            gathered = multihost_utils.process_allgather(features)
            features = np.asarray(gathered).reshape(-1, features.shape[-1])
        features = features[:self.cfg.num_samples]
        scalars = {"fid": frechet_distance(self.reference.stats, GaussianStats.of(features))}
        if self.reference.features is not None:
            kid = kernel_distance(features, self.reference.features)  # subsets <= the sets
            scalars |= {"kid": kid.mean, "kid_std": kid.std}
        scalars["eval_seconds"] = time.perf_counter() - started
        return scalars
