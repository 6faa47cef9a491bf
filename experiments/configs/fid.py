"""SAGD against isotropic diffusion where FID can test the paper's claim: CIFAR-10 and CelebA
64x64 with the literature's networks and training schedules, one arm per noise weighting.

    python experiments/run.py --experiment=fid_cifar10     # the five arms, then FID
    python experiments/run.py --experiment=fid_celeba64
    python -m sagd_jax.main --config=experiments/configs/fid.py:cifar10 --workdir=DIR \\
        --config.noise.gamma=0.5        # one arm by hand (ARMS below lists their overrides)

Variants: ``cifar10`` (``configs/cifar10_ddpmpp.py:full``: DDPM++, 128 channels, 55.7M
parameters, batch 128, 400k steps) and ``celeba64`` (``configs/celeba64.py:full``: DDIM's CelebA
network, 86.0M parameters, batch 128, 500k steps); data, network, optimizer, EMA and schedule
are theirs (the continuous VP SDE with beta 0.1..20, i.e. DDPM's linear betas 1e-4..0.02 over
1000 steps in continuous time). Only the noise weighting differs between the arms (``ARMS``,
applied by ``experiments/run.py``): isotropic (gamma 0), the power laws
``w = (rho + 0.1)^-gamma`` with gamma 0.5, 1 and 2 (mean 1: the same total noise energy), and
gamma 1 with the band mask ``lowpass::1:0.2`` (``BAND``: no noise above the axis Nyquist, the
corners 1.1 <= rho <= sqrt(2) where natural images carry the least power, a raised-cosine edge
over 0.9..1.1 so that the projected training data does not ring; trained on ``P x0``,
``noise.project_data=True``, as the band-stop arm of the paper experiments). Equal seed, steps,
batch and evaluation in every arm.

FID and KID: every ``train.eval_every`` steps the trainer draws ``eval.num_samples`` = 10,000
samples (DDPM, 100 steps) from the EMA weights and writes their FID and KID against the
Inception statistics of 50,000 training images to ``metrics.jsonl`` (FID-10k: the learning
curve); the driver then draws 50,000 samples of the final EMA weights (``DDPM`` with 1000
steps, as DDPM and DDIM report) and judges them the same way (FID-50k, KID, Inception Score:
the headline numbers). The Inception weights: ``$SAGD_JAX_INCEPTION``, the cache, or a
download (``sagd_jax.metrics.inception``).

Expected wall time. CPU: the DDPM++ 128-channel training step was measured at 0.498 img/s on
the 2-core development VM (batch 16; benchmarks/RESULTS.md, "Against PyTorch"); at that rate a
step of 128 images takes about 257 s and a CIFAR-10 arm (400k steps, 51.2M images) about
1.0e8 s, some 3.3 years, before any sampling: not a CPU recipe. The CelebA 64 network's step
was not measured. GPU (one device, which these configs are sized for: the global batch of 128
on one device; ``model.remat=True`` or ``train.grad_accum_steps`` if it does not fit in its
memory, also not measured): not measured, for either dataset, training or sampling.
"""

from __future__ import annotations

import os
from typing import Any

from sagd_jax.config import check_variant, load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")  # the base configs: configs/cifar10_ddpmpp.py, ...
BASE = {"cifar10": "cifar10_ddpmpp.py:full", "celeba64": "celeba64.py:full"}
VARIANTS = tuple(BASE)
BAND = "lowpass::1:0.2"  # zero weight for rho >= 1.1, one for rho <= 0.9
# The arms: name -> config overrides (key, command-line text), every noise key set explicitly.
ARMS: dict[str, dict[str, str]] = {
    "isotropic": {"noise.gamma": "0", "noise.bands": "", "noise.project_data": "False"},
    "gamma0.5": {"noise.gamma": "0.5", "noise.bands": "", "noise.project_data": "False"},
    "gamma1": {"noise.gamma": "1", "noise.bands": "", "noise.project_data": "False"},
    "gamma2": {"noise.gamma": "2", "noise.bands": "", "noise.project_data": "False"},
    "gamma1-lowpass1": {"noise.gamma": "1", "noise.bands": BAND, "noise.project_data": "True"},
}
EVAL_EVERY = {"cifar10": 50_000, "celeba64": 50_000}  # 8 and 10 FID-10k points per arm


def get_config(variant: str = "cifar10") -> Any:
    check_variant(variant, VARIANTS)
    c = load_config_file(os.path.join(CONFIGS, BASE[variant]))
    c.noise.gamma, c.noise.rho0, c.noise.bands, c.noise.project_data = 0.0, 0.1, "", False
    c.train.eval_every = EVAL_EVERY[variant]
    c.eval.update(dict(num_samples=10_000, batch_size=500, sampler="ddpm", steps=100,
                       reference_split="train", reference_images=50_000))
    return c
