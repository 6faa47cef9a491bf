"""The run's random streams: every key is derived from (seed, stream tag, step or index).

Distinct tags keep the streams of different uses from ever colliding; folding the step (or a
chunk index) into a stream's base key makes a run's randomness a pure function of
(seed, step), which is what makes runs reproducible and resumable.
"""

from __future__ import annotations

import jax

# Tags of the streams of a run (never reuse or renumber one: old runs would change).
TRAIN = 1  # noise levels, noise and dropout of train step s: fold_in(stream, s)
SAMPLE = 2  # the trainer's periodic EMA samples at step s: fold_in(stream, s)
INIT = 3  # parameter initialisation (rbg generator, see ``init_key``)
SAMPLE_CLI = 4  # ``sagd_jax.sample``: chunk i uses fold_in(stream of --seed, i)
EVAL = 5  # in-training evaluation at step s, batch i: fold_in(fold_in(stream, s), i)
SAMPLE_LABELS = 6  # ``sagd_jax.sample --labels=random``: chunk i's labels, fold_in(stream, i)


def stream_key(seed: int, stream: int) -> jax.Array:
    """The base key of one random stream of a run; per-step keys fold the step into it."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def init_key(seed: int) -> jax.Array:
    """The key that initialises parameters. It uses the ``rbg`` generator: XLA compiles the
    many random draws of a U-Net's init about 3x faster than with threefry (7 s against 20 s for
    a tiny U-Net on the 2-core CPU); only init uses it, so training noise stays threefry."""
    return jax.random.fold_in(jax.random.key(seed, impl="rbg"), INIT)
