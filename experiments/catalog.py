"""The experiments of experiments/README.md as data: arms (a config variant and its overrides),
experiments (arms, sampler, judging options), and what an arm's config and run are.

``EXPERIMENTS`` is what ``experiments/run.py --experiment=NAME`` runs; an
experiment differs from another only in its ``Experiment`` fields.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagd_jax.run import Run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/paper.py"
FID_CONFIG = "experiments/configs/fid.py"  # its ARMS: name -> noise overrides
BAND = "bandpass:0.45:0.55"  # the omission band B (experiments/configs/paper.py)
STOP = (0.4, 0.6)  # the band-stop arm of experiment 1: w = 0 on 0.4 <= rho <= 0.6


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    variant: str
    overrides: tuple[tuple[str, str], ...] = ()
    config: str = CONFIG  # the config file (relative to the repository) of ``variant``


@dataclasses.dataclass(frozen=True)
class Experiment:
    arms: tuple[Arm, ...]
    description: str
    num_samples: int = 1000  # 1000 x 100 network evaluations: about 15 min at 28x28 on 2 cores
    sampler: str = "ddpm"
    steps: int = 100
    time_grid: str = "uniform"  # the sampler's times (sagd_jax.time_grids): results as published
    # Samples and data judged in this band (``band_energy_ratio``) and, filtered, without it
    # (``spectrum_off_band``): the omission band B.
    band: str | None = None
    # Every arm (and the data) judged a second time without this band (a ``Band`` spec): the
    # band-stop arm's samples are empty there by design, so its full-band metrics say so only.
    judge_off: str | None = None
    # The trained model's score error against the exact score over t (grf data), and its figure.
    score_error_curve: bool = False
    # The exact model (grf data) sampled and judged alike: the sampler's own floor.
    exact_floor: bool = False
    # The training data judged like the samples: the floor of every metric.
    data_rows: bool = True
    # ``gaussian_floor``: the spectrum error a perfect model of the data's Gaussian part would
    # reach with each arm's process and the sampler: the sampler's own share (exact).
    gaussian_floor: bool = False
    # The samples also judged in the Inception features (FID, KID, IS) against the reference of
    # the arm's ``eval.reference_split`` / ``eval.reference_images``.
    inception: bool = False
    # Overrides added to ``TINY`` under ``--tiny``.
    tiny: tuple[str, ...] = ()
    # Every arm also sampled and judged with these (sampler, steps): a row each.
    also_sample: tuple[tuple[str, int], ...] = ()
    # Class-conditional arms: every arm also sampled (with ``sampler`` and ``steps``) and
    # judged once per (row label, ``SampleRequest`` guidance options), e.g.
    # ``("W=3, rho<=0.25", {"guidance": 3.0, "guidance_band": "lowpass::0.25"})``: a row each,
    # named ``<arm> (<label>)``, its samples in their own folder (the request's default name
    # carries the guidance). The arm's own row is the unguided one (W = 1).
    guidance: tuple[tuple[str, dict[str, Any]], ...] = ()
    posthoc: tuple[float, ...] = ()  # post-hoc EMA stds: a row each (arms keep snapshots)


def _seeded(arm: Arm, seed: int) -> Arm:
    """``arm`` trained with ``seed``, named ``<name>-seed<seed>``."""
    return dataclasses.replace(arm, name=f"{arm.name}-seed{seed}",
                               overrides=(*arm.overrides, ("seed", str(seed))))


def _guidance_rows(weights: tuple[float, ...], band_weight: float, cutoff: float
                   ) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``Experiment.guidance`` rows: classifier-free guidance with each of ``weights`` in every
    frequency bin, then ``band_weight`` only on the low band ``rho <= cutoff`` (1 above)."""
    rows = [(f"W={w:g}", {"guidance": w}) for w in weights]
    rows.append((f"W={band_weight:g}, rho<={cutoff:g}",
                 {"guidance": band_weight, "guidance_band": f"lowpass::{cutoff:g}"}))
    return tuple(rows)


def _gamma_arms(variant: str, seeds: tuple[int, ...] = (0,)) -> tuple[Arm, ...]:
    arms = []
    for gamma in ("0", "0.5", "1", "2"):
        for seed in seeds if gamma in ("0", "1") else (0,):
            name = f"gamma{gamma}" + (f"-seed{seed}" if len(seeds) > 1 else "")
            arms.append(Arm(name, variant, (("noise.gamma", gamma), ("seed", str(seed)))))
    arms.append(Arm(f"gamma1-bandstop{STOP[0]}-{STOP[1]}", variant,  # trained on P x0: see 2.
                    (("noise.gamma", "1"), ("noise.bands", f"bandstop:{STOP[0]}:{STOP[1]}"),
                     ("noise.project_data", "True"))))
    return tuple(arms)


def _fitted_arms(variant: str) -> tuple[Arm, ...]:
    """Issue 23's comparison: w fitted to the data (``noise.fit``) against hand-set gamma 0, 1
    and 2. Two seeds for the fitted power law and for gamma 2, the best hand-set arm of
    experiment 1 on the spectrum on both datasets (chosen before these runs)."""
    arms = []
    for name, overrides in (
            ("gamma0", (("noise.gamma", "0"),)), ("gamma1", (("noise.gamma", "1"),)),
            ("gamma2", (("noise.gamma", "2"),)), ("fit-powerlaw", (("noise.fit", "powerlaw"),)),
            ("fit-spectrum1", (("noise.fit", "spectrum"), ("noise.fit_exponent", "1")))):
        seeds = (0, 1) if name in ("gamma2", "fit-powerlaw") else (0,)
        arms += [_seeded(Arm(name, variant, overrides), seed) for seed in seeds]
    return tuple(arms)


def _parameterization_arms(variant: str, seed1: tuple[str, ...] = ()) -> tuple[Arm, ...]:
    """gamma 1 (the paper recipe) with the network predicting eps, v, or preconditioned x0;
    the arms named in ``seed1`` also with training seed 1 (``<name>-seed1``)."""
    arms = (Arm("eps", variant), Arm("v", variant, (("diffusion.prediction", "v"),)),
            Arm("edm", variant, (("diffusion.prediction", "x0"),
                                 ("diffusion.parameterization", "edm"))))
    return arms + tuple(_seeded(arm, 1) for arm in arms if arm.name in seed1)


def _config_module(path: str) -> Any:
    """A config file (relative to the repository) executed as a module, for its data."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("sagd_experiment_config",
                                                  os.path.join(REPO, path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def _fid_arms(variant: str) -> tuple[Arm, ...]:
    """The arms of ``experiments/configs/fid.py`` (its ``ARMS``) on ``variant``."""
    arms = _config_module(FID_CONFIG).ARMS
    return tuple(Arm(name, variant, tuple(overrides.items()), FID_CONFIG)
                 for name, overrides in arms.items())


# --tiny for the FID experiments: in-training FID/KID at the last step of 8 samples of 2 DDPM
# steps against 16 training images (the driver's own 16 samples then use the same reference).
FID_TINY = ("train.eval_every=2", "eval.num_samples=8", "eval.batch_size=8", "eval.steps=2",
            "eval.reference_images=16")

EXPERIMENTS = {
    "sagd_vs_iso_fashion": Experiment(
        _gamma_arms("fashion_mnist", seeds=(0, 1)),
        "SAGD (gamma > 0) vs isotropic (gamma = 0) on Fashion-MNIST",
        judge_off=f"bandpass:{STOP[0]}:{STOP[1]}"),
    "sagd_vs_iso_patches": Experiment(
        _gamma_arms("natural_patches"),
        "SAGD vs isotropic on 32x32 grayscale crops of scikit-image's photographs",
        num_samples=500,  # spectra only (no classifier for patches): half the sampling time
        judge_off=f"bandpass:{STOP[0]}:{STOP[1]}"),
    "fitted_patches": Experiment(
        _fitted_arms("natural_patches"),
        "Noise weights fitted to the data vs hand-set gamma on natural patches",
        num_samples=500, gaussian_floor=True),
    "fitted_fashion": Experiment(
        _fitted_arms("fashion_mnist"),
        "Noise weights fitted to the data vs hand-set gamma on Fashion-MNIST",
        gaussian_floor=True),
    # Issue 24: do the deterministic samplers leave the data range because of the eps
    # parameterisation? The same budget with v prediction and with EDM's preconditioning.
    "ode_params_fashion": Experiment(
        # Seed 1 for the two closest under DDPM, the default sampler (section 5b's question).
        _parameterization_arms("fashion_mnist", seed1=("eps", "v")),
        "eps vs v prediction vs EDM preconditioning under DDPM, DDIM and Heun (Fashion-MNIST)",
        num_samples=500, also_sample=(("ddim", 100), ("ode_heun", 50)), gaussian_floor=True),
    "ode_params_patches": Experiment(
        _parameterization_arms("natural_patches"),
        "eps vs v prediction vs EDM preconditioning under DDPM, DDIM and Heun (patches)",
        num_samples=500, also_sample=(("ddim", 100), ("ode_heun", 50)), gaussian_floor=True),
    # Class-conditional generation on section 1's budget: classifier-free guidance, and
    # guidance shaped in frequency. The arms' own rows are the unguided ones (W = 1).
    "guidance_fashion": Experiment(
        tuple(_seeded(Arm(f"gamma{g}", "fashion_mnist_cond", (("noise.gamma", g),)), seed)
              for seed in (0, 1) for g in ("0", "1")),  # both gammas of seed 0 first
        "Class-conditional Fashion-MNIST: classifier-free guidance, everywhere and on one band",
        # 6 sample sets per arm, 5 of them guided (two network evaluations a step): 500 samples
        # each, DDPM with 50 steps (half of section 1's 100: the deterministic DPM-Solver++
        # diverged on a fifth of the samples of this eps-prediction model, as the ODE samplers
        # of section 5 do at this budget).
        num_samples=500, steps=50, guidance=_guidance_rows((1.5, 2.0, 3.0, 5.0), 3.0, 0.25)),
    # Issue 37: the EMA length chosen after training (post-hoc EMA, snapshots every 50 steps:
    # 18 over section 1's 900), and a loss weighting, at gamma 0 and 1 on section 1's budget.
    # The arms' own rows are optim.ema_decay's EMA (0.999).
    "posthoc_fashion": Experiment(
        tuple(_seeded(Arm(f"gamma{g}-{weighting}", "fashion_mnist",
                          (("noise.gamma", g), ("diffusion.loss_weighting", weighting),
                           ("ema.snapshot_every", "50"))), seed)
              for seed in (0, 1) for weighting in ("none", "min_snr") for g in ("0", "1")),
        "Post-hoc EMA (EDM2) and the min-SNR loss weighting on Fashion-MNIST",
        num_samples=500, steps=50, posthoc=(0.03, 0.05, 0.07, 0.1, 0.15, 0.2),
        tiny=("train.num_steps=8", "ema.snapshot_every=2")),  # 4 snapshots: stds near 0.07
    # Issue 38: a Diffusion Transformer in place of section 1's U-Net, same recipe and budget,
    # one seed per gamma; sampled as section 1 so its rows compare with section 1a's seed 0.
    "dit_fashion": Experiment(
        (Arm("gamma0", "fashion_mnist_dit", (("noise.gamma", "0"),)),
         Arm("gamma1", "fashion_mnist_dit", (("noise.gamma", "1"),))),
        "A Diffusion Transformer (DiT, 1.3M parameters) on Fashion-MNIST: gamma 0 vs 1"),
    "omission": Experiment((
        Arm("iso-corrupted", "omission_corrupted", (("noise.gamma", "0"),)),
        Arm("masked-corrupted", "omission_corrupted",
            (("noise.gamma", "0"), ("noise.bands", "bandstop:0.45:0.55"))),
        Arm("iso-clean", "omission_clean", (("noise.gamma", "0"),)),
        Arm("masked-projected", "omission_corrupted",
            (("noise.gamma", "0"), ("noise.bands", "bandstop:0.45:0.55"),
             ("noise.project_data", "True"))),
    ), "Selective omission: stripes confined to B = 0.45..0.55; w = 0 on B", band=BAND),
    "t0_grf": Experiment((
        Arm("full-support", "grf", (("noise.gamma", "1"),)),
        Arm("masked-band", "grf", (("noise.gamma", "1"), ("noise.bands", "bandstop:0.4:0.6"))),
    ), "The t -> 0 claim on grf data (exact score known)", sampler="ode_heun", steps=100,
        score_error_curve=True, exact_floor=True,
        data_rows=False),  # the floor is the exact model's
    # experiments/configs/fid.py: FID-50k of the final EMA weights, DDPM with 1000 steps.
    "fid_cifar10": Experiment(
        _fid_arms("cifar10"), "SAGD vs isotropic on CIFAR-10 (DDPM++, 400k steps): FID",
        num_samples=50_000, steps=1000, inception=True, tiny=FID_TINY),
    "fid_celeba64": Experiment(
        _fid_arms("celeba64"), "SAGD vs isotropic on CelebA 64 (DDIM's network, 500k steps): FID",
        num_samples=50_000, steps=1000, inception=True, tiny=FID_TINY),
}

TINY = ["data.num_examples=64", "model.ch=8", "model.ch_mult=(1,2)", "model.num_groups=2",
        "model.attn_resolutions=()", "train.num_steps=2", "train.batch_size=8",
        "train.log_every=1", "train.checkpoint_every=2", "train.sample_every=2",
        "train.num_samples=4", "train.sample_steps=2"]


def overrides_for(exp: Experiment, tiny: bool) -> list[str]:
    """The ``KEY=VALUE`` overrides every arm of ``exp`` gets: ``--tiny``'s, else none."""
    return [*TINY, *exp.tiny] if tiny else []


def arm_settings(arm: Arm, extra: list[str]) -> list[tuple[str, str]]:
    """The arm's overrides, then ``extra`` (``KEY=VALUE`` strings), as (key, text) pairs."""
    return [*arm.overrides, *(tuple(item.split("=", 1)) for item in extra)]


def load_arm_config(arm: Arm, extra: list[str]) -> Any:
    """The config of an arm (its variant, its overrides, then ``extra``), not validated."""
    from sagd_jax.config import load_config_file

    return load_config_file(os.path.join(REPO, f"{arm.config}:{arm.variant}"),
                            arm_settings(arm, extra))


def arm_run(arm: Arm, extra: list[str]) -> Run:
    """The arm's ``Run``: its config validated and its data source opened (one-line
    ``ValueError`` naming the arm)."""
    from sagd_jax.run import Run

    try:
        return Run.from_config(load_arm_config(arm, extra))
    except ValueError as err:
        raise ValueError(f"arm {arm.name}: {err}") from None
