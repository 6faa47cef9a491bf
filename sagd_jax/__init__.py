"""sagd-jax: spectrally anisotropic Gaussian diffusion in JAX/Flax.

Where things live:
  spectral   the frequency-diagonal noise covariance Sigma (Band, SpectralCovariance)
  schedules  alpha_t / sigma_t schedules (DDPM linear, cosine, VP SDE, VE)
  process    the SAGD forward process: marginals, prior, targets, loss, score, denoiser
  samplers   DDPM, DDIM(eta), probability-flow ODE (Euler, Heun), reverse SDE
  gaussian   the exact Gaussian data model of SAGD.md section 5 (the test reference)
"""

__version__ = "0.1.0"
