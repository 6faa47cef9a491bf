"""sagd-jax: spectrally anisotropic Gaussian diffusion in JAX/Flax.

The layers and where each idea lives: docs/architecture.md; the maths: docs/math.md.
Entry points: ``sagd_jax.run.Run`` (a validated run from a config or a workdir),
``sagd_jax.sampling.generate`` (sample sets), ``sagd_jax.evaluation.evaluate`` (judging them),
``sagd_jax.process.DiffusionProcess`` (the maths of one process), ``sagd_jax.gaussian`` (the exact
Gaussian model every sampler is tested on).
"""

__version__ = "0.1.0"
