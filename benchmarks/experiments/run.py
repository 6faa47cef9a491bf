"""Run (or resume) one of the paper's experiments and regenerate its table and figures.

    python benchmarks/experiments/run.py --experiment=sagd_vs_iso_fashion
    python benchmarks/experiments/run.py --experiment=omission
    python benchmarks/experiments/run.py --experiment=t0_grf
    python benchmarks/experiments/run.py --experiment=fitted_patches       # issue 23
    python benchmarks/experiments/run.py --experiment=ode_params_fashion   # issue 24
    python benchmarks/experiments/run.py --experiment=fid_cifar10      # one GPU: see
    python benchmarks/experiments/run.py --experiment=fid_celeba64     # configs/experiments/fid.py
    python benchmarks/experiments/run.py --list
    python benchmarks/experiments/run.py --experiment=sagd_vs_iso_patches --skip_training \\
        --clip_x0=1    # the finished arms sampled again with x0_hat clipped to [-1, 1]

Each arm trains with ``python -m sagd_jax.main`` in ``--root/<experiment>/<arm>`` (resumed if
unfinished, skipped if finished), is sampled with ``sagd_jax.sample`` (resumable chunks) and
judged with ``sagd_jax.evaluate`` (the FID experiments: also in the Inception features, FID,
KID and IS against the reference of the arm's ``eval.*`` settings, with the weights of
``$SAGD_JAX_INCEPTION``, the cache or a download; the table also shows the last in-training
FID/KID of ``metrics.jsonl``); then ``--out/<experiment>/`` gets ``table.md``,
``results.json`` and PNG figures, all regenerated from the runs' outputs. Training wall time
per call is appended to ``<arm>/wall_time.jsonl``, also when the command is stopped with
SIGTERM (the trainer then checkpoints its current step). ``--tiny`` shrinks everything to seconds
(the end-to-end test); ``--skip_training`` reports on the arms that finished training.
``--clip_x0=C`` samples with ``x0_hat`` clipped to ``[-C, C]`` (``sagd_jax.samplers``; DDPM and
DDIM experiments only) into their own folders and reports into ``--out/<experiment>-clipC/``.
Bad input (an unknown experiment, an arm's invalid config, a clip the sampler cannot do) stops
with a one-line error and exit status 2 before any arm trains; a failed training with exit
status 1 (its ``<arm>/train.log`` says why). ``--check`` validates every arm of every
experiment (or of ``--experiment`` only), its data opened too, and runs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # ``python benchmarks/experiments/run.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))

import numpy as np
from absl import flags

from sagd_jax import cli, console, files

if TYPE_CHECKING:
    from sagd_jax.run import Run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/experiments/paper.py"
FID_CONFIG = "configs/experiments/fid.py"  # its ARMS: name -> noise overrides
BAND = "bandpass:0.45:0.55"  # the omission band B (configs/experiments/paper.py)
STOP = (0.4, 0.6)  # the band-stop arm of experiment 1: w = 0 on 0.4 <= rho <= 0.6
WALL_TIME = "wall_time.jsonl"  # the driver's own record of each training call, in the workdir


class TrainingFailed(Exception):
    """An arm's trainer stopped with a non-zero exit status (its log says why)."""


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
        arms += [Arm(f"{name}-seed{seed}", variant, (*overrides, ("seed", str(seed))))
                 for seed in seeds]
    return tuple(arms)


def _parameterization_arms(variant: str) -> tuple[Arm, ...]:
    """gamma 1 (the paper recipe) with the network predicting eps, v, or preconditioned x0."""
    return (Arm("eps", variant), Arm("v", variant, (("diffusion.prediction", "v"),)),
            Arm("edm", variant, (("diffusion.prediction", "x0"),
                                 ("diffusion.parameterization", "edm"))))


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
    """The arms of ``configs/experiments/fid.py`` (its ``ARMS``) on ``variant``."""
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
        _parameterization_arms("fashion_mnist"),
        "eps vs v prediction vs EDM preconditioning under DDPM, DDIM and Heun (Fashion-MNIST)",
        num_samples=500, also_sample=(("ddim", 100), ("ode_heun", 50)), gaussian_floor=True),
    "ode_params_patches": Experiment(
        _parameterization_arms("natural_patches"),
        "eps vs v prediction vs EDM preconditioning under DDPM, DDIM and Heun (patches)",
        num_samples=500, also_sample=(("ddim", 100), ("ode_heun", 50)), gaussian_floor=True),
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
    # configs/experiments/fid.py: FID-50k of the final EMA weights, DDPM with 1000 steps.
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


def finished(arm: Arm, workdir: str, extra: list[str]) -> bool:
    """Whether the arm's run has its final checkpoint (reads the config; loads no data)."""
    from sagd_jax.workdir import Workdir

    return Workdir(workdir).is_finished(load_arm_config(arm, extra).train.num_steps)


def train(arm: Arm, workdir: str, extra: list[str]) -> None:
    """Train or resume one arm (a subprocess: one process per run, as users run it)."""
    if finished(arm, workdir, extra):
        return
    arm_run(arm, extra)  # bad input: one line here, before anything is started or written
    os.makedirs(workdir, exist_ok=True)
    command = [sys.executable, "-m", "sagd_jax.main", f"--config={arm.config}:{arm.variant}",
               f"--workdir={workdir}",
               *(f"--config.{key}={text}" for key, text in arm_settings(arm, extra))]
    log_path = os.path.join(workdir, "train.log")
    console.info("  training %s (log %s)", arm.name, log_path)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)
        try:
            code = child.wait()
        finally:  # stopped (SIGTERM): the trainer checkpoints and exits; its time is recorded
            if child.poll() is None:
                child.terminate()
                code = child.wait()
            files.append_jsonl(os.path.join(workdir, WALL_TIME),
                               {"seconds": time.perf_counter() - start, "exit": code})
    if code:
        raise TrainingFailed(f"training {arm.name} failed (exit {code}); see {log_path}")


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


def check(name: str) -> None:
    for arm in EXPERIMENTS[name].arms:
        arm_run(arm, [])


def wall_time(workdir: str) -> float:
    """Seconds of every training call of the arm (NaN before the first)."""
    records = files.read_jsonl(os.path.join(workdir, WALL_TIME))
    return sum(r["seconds"] for r in records) if records else float("nan")


def sample_and_evaluate(workdir: str, exp: Experiment, tiny: bool, band: str | None,
                        filter_band: str | None, model: str = "ema",
                        name: str = "evaluation.json",
                        clip_x0: float | None = None) -> dict[str, Any]:
    """Sample the arm (resumable) and judge the samples; ``name``: the cached result's file."""
    from sagd_jax.evaluate import InceptionRequest, evaluate
    from sagd_jax.sample import SampleRequest, generate
    from sagd_jax.workdir import Workdir

    n = 16 if tiny else exp.num_samples
    request = SampleRequest(num_samples=n, sampler=exp.sampler, steps=2 if tiny else exp.steps,
                            chunk_size=8 if tiny else 250, model=model, clip_x0=clip_x0,
                            time_grid=exp.time_grid)
    samples = generate(workdir, request)
    out = os.path.join(os.path.dirname(samples), name)
    if files.exists(out):
        return files.read_json(out)
    inception = InceptionRequest("off")  # the CPU experiments: their own features only
    if exp.inception:  # the trainer's reference (cached once for both) and batch size
        cfg = Workdir(workdir).saved_config().eval
        inception = InceptionRequest("on", reference_split=cfg.reference_split or None,
                                     reference_images=cfg.reference_images,
                                     batch_size=cfg.batch_size)
    return evaluate(samples, out, band=band, filter_band=filter_band, inception=inception,
                    **judging(tiny))


def judging(tiny: bool) -> dict[str, Any]:
    """Evaluation settings: the documented protocol, or seconds-long ones for ``--tiny`` (a
    classifier trained for 20 steps: enough to exercise the path)."""
    if not tiny:
        return {"max_reference": 10_000}
    from sagd_jax.metrics.classifier import Recipe

    return {"max_reference": 64, "num_subsets": 5, "subset_size": 8,
            "classifier": Recipe(max_steps=20)}


def data_row(arm: Arm, exp: Experiment, tiny: bool, band: str | None) -> dict[str, Any]:
    """The training data itself (``num_samples`` images of the arm's variant, its corruption
    included, drawn by the training pipeline) judged exactly like the samples: the floor of
    every metric (a perfect model of the training data scores this)."""
    from sagd_jax.data import load_batch
    from sagd_jax.evaluate import image_metrics, reference_images

    run = arm_run(arm, overrides_for(exp, tiny))
    config = run.config
    n = 16 if tiny else exp.num_samples
    images = load_batch(run.source, config.data, seed=0, step=0, global_batch_size=n)
    settings = judging(tiny)
    reference, name = reference_images(config.data, settings.pop("max_reference"))
    metrics = image_metrics(images, reference, name, config.data, band, band, **settings)
    row = summary_row(f"data: {arm.variant} (train)", metrics) | {
        "outside_range": outside_range(images)}
    if exp.judge_off:
        off = image_metrics(images, reference, name, config.data, None, exp.judge_off,
                            **settings)
        row |= off_band_columns(off)
    return row


def fitted_column(workdir: str) -> dict[str, str]:
    """``{"fitted": what noise.fit chose}`` for a run that fitted its weights, else ``{}``."""
    from sagd_jax.workdir import Workdir

    noise = Workdir(workdir).saved_config().noise
    if not noise.get("fit_result"):
        return {}
    if noise.fit == "powerlaw":
        return {"fitted": f"gamma {noise.gamma:.3g}, rho0 {noise.rho0:.3g}"}
    return {"fitted": noise.fit_result.split(" on ")[0]}


def gaussian_floor(workdir: str, sampler: str, steps: int, time_grid: str = "uniform"
                   ) -> dict[str, float]:
    """``{"gaussian_floor": ...}``: the radial spectrum error (mean |log ratio| over radial
    bins, as ``spectrum_err``) of the stationary Gaussian with the run's training-data power
    per bin (``Run.power_spectrum``) sampled exactly by ``sampler`` on the run's process
    (``sampler_output_spectrum``, no Monte Carlo): what the sampler alone costs a perfect
    model of the data's second-order statistics."""
    import jax.numpy as jnp

    from sagd_jax.gaussian import GaussianData, sampler_output_spectrum
    from sagd_jax.metrics.spectra import radial_average, spectrum_log_error
    from sagd_jax.run import Run
    from sagd_jax.time_grids import resolve

    run = Run.from_workdir(workdir)
    c = np.asarray(run.power_spectrum(), np.float64)
    height, width, _ = run.image_shape
    grid = resolve(time_grid, sampler)
    times = None if grid == "uniform" else run.time_grid(steps, grid)
    output = sampler_output_spectrum(run.process, GaussianData(
        spectrum=jnp.asarray(c, jnp.float32), height=height, width=width), sampler, steps,
        times=times)
    return {"gaussian_floor": spectrum_log_error(radial_average(output, width)[1],
                                                 radial_average(c, width)[1])}


def outside_range(images: np.ndarray) -> float:
    """Fraction of pixels outside the data range [-1, 1]."""
    return float(np.mean(np.abs(np.asarray(images)) > 1.0))


def off_band_columns(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The columns of a second judging without a band (``Experiment.judge_off``)."""
    row = {"spectrum_err_off_band": evaluation["spectrum_off_band"]["mean_abs_log_ratio"]}
    if "fd" in evaluation:
        row |= {"fd_off_band": evaluation["fd"], "kid_off_band": kid_text(evaluation),
                "kid_off_band_mean": kid_mean(evaluation)}
    return row


def summary_row(name: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The table's columns of one evaluation (``image_metrics`` / ``evaluate`` output)."""
    spectrum = evaluation["spectrum"]
    row = {"arm": name, "spectrum_err": spectrum["mean_abs_log_ratio"], "spectrum": spectrum,
           # the mean and the lowest frequencies: where a sampler's drift out of range shows
           "low_freq_power_ratio": spectrum["samples"][0] / spectrum["reference"][0]}
    if "fd" in evaluation:
        row |= {"fd": evaluation["fd"], "kid": kid_text(evaluation),
                "kid_mean": kid_mean(evaluation)}
    if "spectrum_off_band" in evaluation:
        row["spectrum_err_off_band"] = evaluation["spectrum_off_band"]["mean_abs_log_ratio"]
    if "band_energy_ratio" in evaluation:
        row["band_energy_ratio"] = evaluation["band_energy_ratio"]
    if "inception" in evaluation:
        inception = evaluation["inception"]
        row["inception_fid"] = inception["fid"]
        if "kid" in inception:
            kid = inception["kid"]
            row |= {"inception_kid": f"{kid['mean']:.3g} +- {kid['std']:.2g}",
                    "inception_kid_mean": kid["mean"]}
        row["inception_is"] = inception["inception_score"]["mean"]
    if "grf_variance" in evaluation:
        row |= {"grf_var_err": evaluation["grf_variance"]["mean_abs_log_ratio"],
                "grf_var_floor": evaluation["grf_variance"]["monte_carlo_floor"]}
    return row


def score_error_curve(workdir: str, tiny: bool) -> dict[str, Any]:
    """Relative squared score error of the trained EMA model against the exact score, on the
    support of Sigma, over a log grid of t (grf data): E|P(s_theta - s*)|^2 / E|P s*|^2."""
    import jax
    import jax.numpy as jnp

    from sagd_jax.data import grf_model
    from sagd_jax.run import Run
    from sagd_jax.sharding import make_mesh

    run = Run.from_workdir(workdir, load_data=False)
    state = run.restore(make_mesh())
    eps_fn = run.eps_fn(state.ema_params)
    data = grf_model(run.config.data)
    process = run.process
    n = 16 if tiny else 1024
    shape = (n, *run.image_shape)
    times = np.geomspace(process.schedule.t_min, 1.0, 6 if tiny else 24)

    @jax.jit
    def errors(key: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        k0, k1 = jax.random.split(key)
        x0 = data.sample(k0, shape)
        tt = jnp.full((n,), t)
        x_t, _ = process.marginal_sample(k1, process.training_data(x0), tt)
        model_score = process.cov.project(process.score(x_t, tt, eps_fn(x_t, tt)))
        exact = process.cov.project(data.score(process, x_t, tt))
        return jnp.sum((model_score - exact) ** 2), jnp.sum(exact**2)

    rel = []
    for i, t in enumerate(times):
        err, norm = errors(jax.random.key(i), jnp.float32(t))
        rel.append(float(err / norm))
    return {"t": times.tolist(), "relative_score_error": rel}


def side_by_side(paths: list[str], labels: list[str], out: str) -> None:
    """Sample grids next to each other with a caption row (PIL); grayscale unless a grid is
    in colour."""
    from PIL import Image, ImageDraw

    opened = [Image.open(p) for p in paths]
    mode = "L" if all(g.mode == "L" for g in opened) else "RGB"
    grids = [g.convert(mode) for g in opened]
    white, black = (255, 0) if mode == "L" else ((255, 255, 255), (0, 0, 0))
    caption = 14
    width = sum(g.width for g in grids) + 8 * (len(grids) - 1)
    canvas = Image.new(mode, (width, max(g.height for g in grids) + caption), white)
    x = 0
    draw = ImageDraw.Draw(canvas)
    for grid, label in zip(grids, labels, strict=True):
        canvas.paste(grid, (x, caption))
        draw.text((x + 2, 1), label, fill=black)
        x += grid.width + 8
    canvas.save(out)


def kid_text(evaluation: dict[str, Any]) -> str:
    """KID +- its standard error over disjoint blocks (the sampling noise of the generated set
    included); evaluations written before blocks existed show the std over overlapping subsets
    instead, marked ``(subset std)``."""
    if "kid_blocks" in evaluation:
        kid = evaluation["kid_blocks"]
        return f"{kid['mean']:.3g} +- {kid['sem']:.2g}"
    kid = evaluation["kid"]
    return f"{kid['mean']:.3g} +- {kid['std']:.2g} (subset std)"


def kid_mean(evaluation: dict[str, Any]) -> float:
    """The KID estimate that ``kid_text`` shows."""
    return evaluation["kid_blocks" if "kid_blocks" in evaluation else "kid"]["mean"]


SEED_COLUMNS = ("loss", "spectrum_err", "spectrum_err_off_band", "fd", "kid_mean",
                "fd_off_band", "kid_off_band_mean", "inception_fid", "inception_kid_mean")


def seed_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm run with several seeds (rows named ``<arm>-seed<k>``): for each of
    ``SEED_COLUMNS`` that every seed has, ``"mean +- h"`` with h half the range over the seeds
    (two seeds: half their difference, the seed-to-seed scatter of that number)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        base, sep, seed = row["arm"].rpartition("-seed")
        if sep and seed.isdigit():
            groups.setdefault(base, []).append(row)
    summaries = []
    for base, group in groups.items():
        if len(group) < 2:
            continue
        summary: dict[str, Any] = {"arm": base, "seeds": len(group)}
        for column in SEED_COLUMNS:
            values = np.asarray([r[column] for r in group if r.get(column) is not None], float)
            if len(values) == len(group):
                half = (values.max() - values.min()) / 2
                summary[column] = f"{values.mean():.3g} +- {half:.2g}"
        summaries.append(summary)
    return summaries


TABLE_COLUMNS = (
    "arm", "fitted", "steps", "wall_s", "loss", "loss_t0.00-0.25", "loss_t0.25-0.50",
    "loss_t0.50-0.75", "loss_t0.75-1.00", "spectrum_err", "gaussian_floor",
    "spectrum_err_off_band", "low_freq_power_ratio", "outside_range", "fd", "kid",
    "fd_off_band", "kid_off_band", "band_energy_ratio", "grf_var_err", "grf_var_floor",
    "fid_in_training", "kid_in_training", "inception_fid", "inception_kid", "inception_is")


def report(name: str, exp: Experiment, rows: list[dict[str, Any]], out_dir: str,
           extra: dict[str, Any]) -> str:
    """``results.json``, ``table.md`` and the figures of an experiment in ``out_dir``,
    regenerated from ``rows`` (atomically: a reader never sees half a file); returns the
    table."""
    from sagd_jax.metrics.spectra import plot_radial

    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_summary(rows)
    files.write_json(os.path.join(out_dir, "results.json"),
                     {"experiment": name, "rows": rows, "seed_summary": seeds, **extra})
    table = console.table(rows, TABLE_COLUMNS, digits=3, markdown=True)
    if seeds:
        table += ("\nArms with several seeds: mean +- half the range over the seeds\n\n"
                  + console.table(seeds, ("arm", "seeds", *SEED_COLUMNS), digits=3,
                                  markdown=True))
    with files.atomic_open(os.path.join(out_dir, "table.md")) as f:
        f.write(table)
    spectra = {r["arm"]: np.asarray(r["spectrum"]["samples"]) for r in rows if "spectrum" in r}
    if spectra:
        first = next(r for r in rows if "spectrum" in r)["spectrum"]
        spectra["data"] = np.asarray(first["reference"])
        plot_radial(os.path.join(out_dir, "spectra.png"), np.asarray(first["rho"]), spectra,
                    ylabel="power |F x|^2", title=exp.description)
        reference = spectra.pop("data")
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = {arm: np.where(p / reference > 1e-3, p / reference, np.nan)
                      for arm, p in spectra.items()}
        plot_radial(os.path.join(out_dir, "spectra_ratio.png"), np.asarray(first["rho"]), ratios,
                    ylabel="power / test data's power",
                    title="ratios below 1e-3 (empty bands) left out")
    grids = [(r["grid"], r["arm"]) for r in rows if r.get("grid")]
    if grids:
        side_by_side([g for g, _ in grids], [a for _, a in grids],
                     os.path.join(out_dir, "samples.png"))
    return table


def run_experiment(name: str, root: str, out: str, tiny: bool, skip_training: bool,
                   max_arms: int | None = None, clip_x0: float | None = None,
                   train_only: Sequence[str] | None = None) -> str:
    """Train (or resume), sample and judge the arms of experiment ``name`` and regenerate its
    report; returns the Markdown table. ``train_only``: train just these arms (by name); the
    report still covers every arm that has finished training."""
    from sagd_jax.workdir import Workdir

    exp = EXPERIMENTS[name]
    if train_only is not None:
        unknown = sorted(set(train_only) - {arm.name for arm in exp.arms})
        if unknown:
            raise ValueError(f"--arms: experiment {name} has no arm {', '.join(unknown)} "
                             f"(its arms: {', '.join(arm.name for arm in exp.arms)})")
    if clip_x0 is not None:
        from sagd_jax.sample import SampleRequest

        try:  # the sampling CLI's own check, before any arm trains
            SampleRequest(num_samples=1, sampler=exp.sampler, steps=exp.steps,
                          clip_x0=clip_x0).validate(device_count=1)
        except ValueError as err:
            raise ValueError(f"experiment {name}: {err}") from None
        exp = dataclasses.replace(
            exp, description=f"{exp.description} (x0_hat clipped to [-{clip_x0:g}, {clip_x0:g}])")
    extra_overrides = overrides_for(exp, tiny)
    folder = os.path.join(out, name if clip_x0 is None else f"{name}-clip{clip_x0:g}")
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {} if clip_x0 is None else {"clip_x0": clip_x0}
    for arm in exp.arms[:max_arms]:
        workdir = os.path.join(root, name, arm.name)
        if not skip_training and (train_only is None or arm.name in train_only):
            train(arm, workdir, extra_overrides)
        if not finished(arm, workdir, extra_overrides):
            continue  # not trained yet (--skip_training): no samples from an unfinished run
        evaluation = sample_and_evaluate(workdir, exp, tiny, exp.band, exp.band,
                                         clip_x0=clip_x0)
        last = Workdir(workdir).last_metrics()
        row = {"arm": arm.name, "steps": last["step"], "wall_s": wall_time(workdir),
               "loss": last["loss"], **{k: v for k, v in last.items() if k.startswith("loss_t")},
               **{f"{k}_in_training": last[k] for k in ("fid", "kid") if k in last},
               **summary_row(arm.name, evaluation), **fitted_column(workdir),
               **(gaussian_floor(workdir, exp.sampler, 2 if tiny else exp.steps,
                                 exp.time_grid) if exp.gaussian_floor else {}),
               "grid": os.path.join(os.path.dirname(evaluation["samples"]), "grid.png")}
        with np.load(evaluation["samples"]) as f:
            row["outside_range"] = outside_range(f["float32"])
        if exp.judge_off:
            row |= off_band_columns(sample_and_evaluate(
                workdir, exp, tiny, None, exp.judge_off, name="evaluation_off_band.json",
                clip_x0=clip_x0))
        if exp.score_error_curve:
            extra[f"score_error/{arm.name}"] = score_error_curve(workdir, tiny)
        if exp.exact_floor:
            exact = sample_and_evaluate(workdir, exp, tiny, None, None, model="exact")
            extra[f"exact_sampler_floor/{arm.name}"] = exact["grf_variance"]
        rows.append(row)
        for sampler, steps in exp.also_sample:
            other = sample_and_evaluate(workdir, dataclasses.replace(
                exp, sampler=sampler, steps=steps), tiny, exp.band, exp.band)
            also = {**summary_row(arm.name, other), "arm": f"{arm.name} ({sampler} {steps})",
                    "steps": last["step"],
                    **(gaussian_floor(workdir, sampler, 2 if tiny else steps, exp.time_grid)
                       if exp.gaussian_floor else {})}
            with np.load(other["samples"]) as f:
                also["outside_range"] = outside_range(f["float32"])
            rows.append(also)
    if exp.score_error_curve and rows:
        _plot_score_error(extra, os.path.join(folder, "score_error.png"))
    if exp.data_rows and rows:
        first_of_variant: dict[str, Arm] = {}
        for arm in exp.arms[:max_arms]:
            first_of_variant.setdefault(arm.variant, arm)
        rows += [data_row(arm, exp, tiny, exp.band) for arm in first_of_variant.values()]
    return report(name, exp, rows, folder, extra)


def _plot_score_error(extra: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, curve in extra.items():
        if key.startswith("score_error/"):
            ax.loglog(curve["t"], curve["relative_score_error"], marker="o", markersize=3,
                      label=key.split("/", 1)[1])
    ax.set_xlabel("t")
    ax.set_ylabel("E|P(s_theta - s*)|^2 / E|P s*|^2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}; rerun the same command to resume")


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("experiment", None, sorted(EXPERIMENTS), "The experiment to run.",
                      flag_values=fv)
    flags.DEFINE_boolean("list", False, "List the experiments and their arms.", flag_values=fv)
    flags.DEFINE_string("root", os.path.join(REPO, "workdirs", "experiments"),
                        "Workdirs of the arms: ROOT/<experiment>/<arm>.", flag_values=fv)
    flags.DEFINE_string("out", os.path.join(REPO, "docs", "experiments"),
                        "Reports: OUT/<experiment>/ (table.md, results.json, figures).",
                        flag_values=fv)
    flags.DEFINE_boolean("tiny", False, "Seconds-long settings (tests).", flag_values=fv)
    flags.DEFINE_boolean("skip_training", False, "Report on the arms that finished training; "
                         "train nothing.", flag_values=fv)
    flags.DEFINE_integer("max_arms", None, "Only the first N arms.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_list("arms", None, "Train only these arms (comma-separated names); the "
                      "report still covers every arm that has finished training.",
                      flag_values=fv)
    flags.DEFINE_float("clip_x0", None, "Sample with x0_hat clipped to [-C, C]; report to "
                       "OUT/<experiment>-clipC.", flag_values=fv)
    flags.DEFINE_boolean("check", False, "Validate every arm's config (and data) of every "
                         "experiment, or of --experiment only; run nothing.", flag_values=fv)


def body(fv: flags.FlagValues) -> int | None:
    if fv.check:
        for name in [fv.experiment] if fv.experiment else EXPERIMENTS:
            check(name)
            print(f"{name}: ok")
        return None
    if fv.list or not fv.experiment:
        for name, exp in EXPERIMENTS.items():
            print(f"{name}: {exp.description}; arms: {', '.join(a.name for a in exp.arms)}")
        return None
    try:
        print(run_experiment(fv.experiment, fv.root, fv.out, fv.tiny, fv.skip_training,
                             fv.max_arms, fv.clip_x0, fv.arms))
    except TrainingFailed as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the driver on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, body, argv)


def run() -> None:
    """Command-line entry point: SIGTERM stops the training subprocess cleanly (its trainer
    checkpoints, its wall time is recorded), then this process."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sys.exit(main())


if __name__ == "__main__":
    run()
