"""The columns of an experiment's table: each arm sampled and judged, and the numbers that
turn an evaluation, a workdir or a set of samples into a row."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.catalog import Arm, Experiment, arm_run, overrides_for
from sagd_jax import files

if TYPE_CHECKING:
    from sagd_jax.run import Run


def sample_and_evaluate(workdir: str, exp: Experiment, tiny: bool, band: str | None,
                        filter_band: str | None, model: str = "ema",
                        name: str = "evaluation.json",
                        clip_x0: float | None = None,
                        guidance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample the arm (resumable) and judge the samples; ``name``: the cached result's file;
    ``guidance``: more ``SampleRequest`` options (``Experiment.guidance``'s, or the ``params``
    of a post-hoc EMA row), whose samples go to their own folder (the request's default name
    carries them). Samples of a
    class-conditional run carry their labels, and the classifier's ``class_accuracy``."""
    from sagd_jax.evaluation import InceptionRequest, evaluate
    from sagd_jax.sampling import SampleRequest, generate
    from sagd_jax.workdir import Workdir

    n = 16 if tiny else exp.num_samples
    request = SampleRequest(num_samples=n, sampler=exp.sampler, steps=2 if tiny else exp.steps,
                            chunk_size=8 if tiny else 250, model=model, clip_x0=clip_x0,
                            time_grid=exp.time_grid, float32=True,  # outside_range
                            **(guidance or {}))
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
                    **judging(tiny, Workdir(workdir).saved_config().data))


def judging(tiny: bool, data_config: Any) -> dict[str, Any]:
    """Evaluation settings: the documented protocol, or seconds-long ones for ``--tiny`` (a
    classifier trained for 20 steps: enough to exercise the path); the classifier's FD/KID
    wherever it judges the data (trained once if the cache lacks it)."""
    from sagd_jax.evaluation import classifier_applies

    shape = (data_config.image_size, data_config.image_size, data_config.channels)
    settings = {"classifier": "on" if classifier_applies(shape, data_config) else "off"}
    if not tiny:
        return settings | {"max_reference": 10_000}
    from sagd_jax.metrics.classifier import Recipe

    return settings | {"max_reference": 64, "num_subsets": 5, "subset_size": 8,
                       "classifier_recipe": Recipe(max_steps=20)}


def data_row(arm: Arm, exp: Experiment, tiny: bool, band: str | None) -> dict[str, Any]:
    """The training data itself (``num_samples`` images of the arm's variant, its corruption
    included, drawn by the training pipeline) judged exactly like the samples: the floor of
    every metric (a perfect model of the training data scores this); with labels
    (``data.num_classes``), the classifier's ``class_accuracy`` on the images under their own
    labels: the ceiling of the samples'."""
    from sagd_jax.data import batch_labels, load_batch
    from sagd_jax.evaluation import image_metrics, reference_images

    run = arm_run(arm, overrides_for(exp, tiny))
    config = run.config
    n = 16 if tiny else exp.num_samples
    images = load_batch(run.source, config.data, seed=0, step=0, global_batch_size=n)
    labels = (batch_labels(run.source, config.data, seed=0, global_batch_size=n)[0]
              if config.data.num_classes else None)  # the labels of those images, in order
    settings = judging(tiny, config.data)
    reference, name = reference_images(config.data, settings.pop("max_reference"))
    metrics = image_metrics(images, reference, name, config.data, band, band, labels=labels,
                            **settings)
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


def gaussian_floor(run: Run, sampler: str, steps: int, time_grid: str = "uniform"
                   ) -> dict[str, float]:
    """``{"gaussian_floor": ...}``: the radial spectrum error (mean |log ratio| over radial
    bins, as ``spectrum_err``) of the stationary Gaussian with the run's training-data power
    per bin (``Run.power_spectrum``) sampled exactly by ``sampler`` on the run's process
    (``sampler_output_spectrum``, no Monte Carlo): what the sampler alone costs a perfect
    model of the data's second-order statistics. Needs the config only, not a trained model
    (``arm_run(arm, [])`` for an untrained arm; a fit is redone identically)."""
    from sagd_jax.gaussian import sampler_output_spectrum
    from sagd_jax.metrics.spectra import radial_average, spectrum_log_error
    from sagd_jax.time_grids import resolve

    c = np.asarray(run.power_spectrum(), np.float64)
    width = run.image_shape[1]
    grid = resolve(time_grid, sampler)
    times = None if grid == "uniform" else run.time_grid(steps, grid)
    output = sampler_output_spectrum(run.process, run.data_gaussian(), sampler, steps,
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
    if "class_accuracy" in evaluation:  # labelled samples: the classifier's accuracy on them
        row["class_accuracy"] = evaluation["class_accuracy"]
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
