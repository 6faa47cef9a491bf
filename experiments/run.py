"""Run (or resume) one of the paper's experiments and regenerate its table and figures.

    python experiments/run.py --experiment=sagd_vs_iso_fashion
    python experiments/run.py --experiment=omission
    python experiments/run.py --experiment=t0_grf
    python experiments/run.py --experiment=fitted_patches       # issue 23
    python experiments/run.py --experiment=ode_params_fashion   # issue 24
    python experiments/run.py --experiment=guidance_fashion     # class-conditional, guided
    python experiments/run.py --experiment=posthoc_fashion      # post-hoc EMA, min-SNR
    python experiments/run.py --experiment=fid_cifar10      # one GPU: see
    python experiments/run.py --experiment=fid_celeba64     # experiments/configs/fid.py
    python experiments/run.py --list
    python experiments/run.py --experiment=sagd_vs_iso_patches --skip_training \\
        --clip_x0=1    # the finished arms sampled again with x0_hat clipped to [-1, 1]
    python experiments/run.py --experiment=omission --report_only   # table.md from results.json

(or ``python -m experiments.run ...``). Each arm trains with ``python -m sagd_jax.main`` in
``--root/<experiment>/<arm>`` (``sagd_jax.train_subprocess``: resumed if unfinished, skipped if
finished, its output appended to ``<arm>/train.log``), is sampled with ``sagd_jax.sampling``
(resumable chunks) and judged with ``sagd_jax.evaluation`` (the FID experiments: also in the
Inception features, FID, KID and IS against the reference of the arm's ``eval.*`` settings,
with the weights of ``$SAGD_JAX_INCEPTION``, the cache or a download; the table also shows the
last in-training FID/KID of ``metrics.jsonl``); then ``--out/<experiment>/`` (default
``experiments/results/<experiment>/``) gets ``table.md``, ``results.json`` and PNG figures, all
regenerated from the runs' outputs. Training wall time per call is appended to
``<arm>/wall_time.jsonl``, also when the command is stopped with SIGTERM or SIGINT: the signal
goes on to the trainer, which checkpoints its current step, then the command stops (exit status
1, "stopped by signal N; rerun the same command to resume"). ``--tiny`` shrinks everything to
seconds (the end-to-end test); ``--skip_training`` reports on the arms that finished training.
A class-conditional experiment (``Experiment.guidance``) samples and judges every arm once
more per guidance setting (a row each, with the classifier's ``class_accuracy`` of the samples
under their own labels, and ``samples_guidance.png``: each arm's grids side by side); one with
post-hoc EMA stds (``Experiment.posthoc``; its arms train with ``ema.snapshot_every``) once
more per std, with the EMA of that std reconstructed from the arm's snapshots
(``sagd_jax.posthoc``; rows ``<arm> (EMA std S)``).
``--clip_x0=C`` samples with ``x0_hat`` clipped to ``[-C, C]`` (``sagd_jax.samplers``; DDPM and
DDIM experiments only) into their own folders and reports into ``--out/<experiment>-clipC/``.
Bad input (an unknown experiment, an arm's invalid config, a clip the sampler cannot do) stops
with a one-line error and exit status 2 before any arm trains; a failed training with exit
status 1 (its ``<arm>/train.log`` says why). ``--check`` validates every arm of every
experiment (or of ``--experiment`` only), its data opened too, and runs nothing.
``--report_only`` regenerates ``table.md`` and the figures of ``--out/<experiment>/`` (with
``--clip_x0``: ``-clipC/``) from its own ``results.json``, and trains, samples and reads no
run (``samples.png`` and ``samples_guidance.png`` are redrawn only where every grid of theirs
is still on disk).

The experiments themselves are data in ``catalog.py`` (``EXPERIMENTS``); the table's columns
are computed in ``columns.py`` and the report written by ``report.py``; this module trains
the arms and puts the rows together.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # ``python experiments/run.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import flags

from experiments.catalog import (
    EXPERIMENTS,
    REPO,
    Arm,
    Experiment,
    arm_run,
    arm_settings,
    load_arm_config,
    overrides_for,
)
from experiments.columns import (
    data_row,
    fitted_column,
    gaussian_floor,
    off_band_columns,
    outside_range,
    sample_and_evaluate,
    score_error_curve,
    summary_row,
)
from experiments.report import GRIDS, report
from sagd_jax import cli, console, files, train_subprocess
from sagd_jax.errors import one_line

WALL_TIME = "wall_time.jsonl"  # the driver's own record of each training call, in the workdir


class TrainingFailed(Exception):
    """An arm's trainer stopped with a non-zero exit status (its log says why)."""


def finished(arm: Arm, workdir: str, extra: list[str]) -> bool:
    """Whether the arm's run has its final checkpoint (reads the config; loads no data)."""
    from sagd_jax.workdir import Workdir

    return Workdir(workdir).is_finished(load_arm_config(arm, extra).train.num_steps)


def train(arm: Arm, workdir: str, extra: list[str]) -> None:
    """Train or resume one arm (``sagd_jax.train_subprocess``: one process per run, as users
    run it); its time goes to ``<workdir>/wall_time.jsonl``. SIGTERM or SIGINT meanwhile goes on
    to the trainer, which checkpoints; then ``SystemExit`` (rerun to resume)."""
    if finished(arm, workdir, extra):
        return
    arm_run(arm, extra)  # bad input: one line here, before anything is started or written
    command = train_subprocess.trainer_command(f"{arm.config}:{arm.variant}", workdir,
                                               arm_settings(arm, extra))
    log_path = os.path.join(workdir, "train.log")
    console.info("  training %s (log %s)", arm.name, log_path)
    with train_subprocess.StopSignals().installed() as stops:
        code = train_subprocess.train(command, log_path, stops, cwd=REPO,
                                      wall_time_path=os.path.join(workdir, WALL_TIME))
    if stops.received is not None:
        raise SystemExit(f"stopped by signal {stops.received}; rerun the same command to resume")
    if code:
        raise TrainingFailed(f"training {arm.name} failed (exit {code}); see {log_path}")


def check(name: str) -> None:
    for arm in EXPERIMENTS[name].arms:
        arm_run(arm, [])


def wall_time(workdir: str) -> float:
    """Seconds of every training call of the arm (NaN before the first)."""
    records = files.read_jsonl(os.path.join(workdir, WALL_TIME))
    return sum(r["seconds"] for r in records) if records else float("nan")


def report_folder(out: str, name: str, clip_x0: float | None) -> str:
    """Where experiment ``name``'s report goes: ``OUT/<name>`` or ``OUT/<name>-clipC``."""
    return os.path.join(out, name if clip_x0 is None else f"{name}-clip{clip_x0:g}")


def clipped(exp: Experiment, clip_x0: float) -> Experiment:
    """``exp`` described as sampled with ``x0_hat`` clipped to ``[-clip_x0, clip_x0]``."""
    return dataclasses.replace(
        exp, description=f"{exp.description} (x0_hat clipped to [-{clip_x0:g}, {clip_x0:g}])")


def report_again(name: str, out: str, clip_x0: float | None = None) -> str:
    """Regenerate ``table.md`` and the figures of experiment ``name`` in its report folder
    from the ``results.json`` there (left as it is); nothing is trained, sampled or read from
    the runs, and ``samples.png`` is redrawn only if every arm's grid is still on disk. Returns
    the Markdown table."""
    folder = report_folder(out, name, clip_x0)
    path = os.path.join(folder, "results.json")
    if not files.exists(path):
        raise ValueError(f"--report_only: {path}: no such file (run the experiment first)")
    try:
        saved = files.read_json(path)
    except ValueError as err:
        raise ValueError(f"--report_only: {path}: not JSON ({one_line(err)})") from None
    rows = saved.get("rows") if isinstance(saved, dict) else None
    if not isinstance(rows, list) or not all(
            isinstance(row, dict) and isinstance(row.get("arm"), str) for row in rows):
        raise ValueError(f"--report_only: {path}: not a report of this driver (needs 'rows', "
                         "each with an 'arm' name)")
    exp = EXPERIMENTS[name] if clip_x0 is None else clipped(EXPERIMENTS[name], clip_x0)
    for key in GRIDS:  # a figure is redrawn only where all of its grids are still on disk
        if not all(files.exists(row[key]) for row in rows if row.get(key)):
            rows = [{k: v for k, v in row.items() if k != key} for row in rows]
    extra = {k: v for k, v in saved.items() if k not in ("experiment", "rows", "seed_summary")}
    return report(name, exp, rows, folder, extra, write_results=False)


def run_experiment(name: str, root: str, out: str, tiny: bool, skip_training: bool,
                   max_arms: int | None = None, clip_x0: float | None = None,
                   train_only: Sequence[str] | None = None) -> str:
    """Train (or resume), sample and judge the arms of experiment ``name`` and regenerate its
    report; returns the Markdown table. ``train_only``: train just these arms (by name); the
    report still covers every arm that has finished training."""
    from sagd_jax.run import Run
    from sagd_jax.workdir import Workdir

    exp = EXPERIMENTS[name]
    if train_only is not None:
        unknown = sorted(set(train_only) - {arm.name for arm in exp.arms})
        if unknown:
            raise ValueError(f"--arms: experiment {name} has no arm {', '.join(unknown)} "
                             f"(its arms: {', '.join(arm.name for arm in exp.arms)})")
    if clip_x0 is not None:
        from sagd_jax.sampling import SampleRequest

        try:  # the sampling CLI's own check, before any arm trains
            SampleRequest(num_samples=1, sampler=exp.sampler, steps=exp.steps,
                          clip_x0=clip_x0).validate(device_count=1)
        except ValueError as err:
            raise ValueError(f"experiment {name}: {err}") from None
        exp = clipped(exp, clip_x0)
    extra_overrides = overrides_for(exp, tiny)
    folder = report_folder(out, name, clip_x0)
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
        floor_run = Run.from_workdir(workdir) if exp.gaussian_floor else None

        def floor(sampler: str, steps: int, floor_run: Run | None = floor_run
                  ) -> dict[str, float]:
            """The ``gaussian_floor`` column (the run opened once per arm), or nothing."""
            return {} if floor_run is None else gaussian_floor(
                floor_run, sampler, 2 if tiny else steps, exp.time_grid)

        row = {"arm": arm.name, "steps": last["step"], "wall_s": wall_time(workdir),
               "loss": last["loss"], **{k: v for k, v in last.items() if k.startswith("loss_t")},
               **{f"{k}_in_training": last[k] for k in ("fid", "kid") if k in last},
               **summary_row(arm.name, evaluation), **fitted_column(workdir),
               **floor(exp.sampler, exp.steps),
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
        if exp.guidance:
            row["guidance"] = "W=1"  # the arm's own row: unguided
        rows.append(row)
        for sampler, steps in exp.also_sample:
            other = sample_and_evaluate(workdir, dataclasses.replace(
                exp, sampler=sampler, steps=steps), tiny, exp.band, exp.band)
            also = {**summary_row(arm.name, other), "arm": f"{arm.name} ({sampler} {steps})",
                    "steps": last["step"], **floor(sampler, steps)}
            with np.load(other["samples"]) as f:
                also["outside_range"] = outside_range(f["float32"])
            rows.append(also)
        for label, options in exp.guidance:
            guided = sample_and_evaluate(workdir, exp, tiny, exp.band, exp.band,
                                         clip_x0=clip_x0, guidance=options)
            more = {**summary_row(f"{arm.name} ({label})", guided), "steps": last["step"],
                    "guidance": label, "guided_of": arm.name,
                    "guided_grid": os.path.join(os.path.dirname(guided["samples"]),
                                                "grid.png")}
            with np.load(guided["samples"]) as f:
                more["outside_range"] = outside_range(f["float32"])
            rows.append(more)
        for std in exp.posthoc:
            other = sample_and_evaluate(workdir, exp, tiny, exp.band, exp.band,
                                        clip_x0=clip_x0, guidance={"params": f"posthoc:{std:g}"})
            more = {**summary_row(f"{arm.name} (EMA std {std:g})", other),
                    "steps": last["step"], "posthoc_std": std, "posthoc_of": arm.name}
            with np.load(other["samples"]) as f:
                more["outside_range"] = outside_range(f["float32"])
            rows.append(more)
    if exp.data_rows and rows:
        first_of_variant: dict[str, Arm] = {}
        for arm in exp.arms[:max_arms]:
            first_of_variant.setdefault(arm.variant, arm)
        rows += [data_row(arm, exp, tiny, exp.band) for arm in first_of_variant.values()]
    return report(name, exp, rows, folder, extra)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}; rerun the same command to resume")


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("experiment", None, sorted(EXPERIMENTS), "The experiment to run.",
                      flag_values=fv)
    flags.DEFINE_boolean("list", False, "List the experiments and their arms.", flag_values=fv)
    flags.DEFINE_string("root", os.path.join(REPO, "workdirs", "experiments"),
                        "Workdirs of the arms: ROOT/<experiment>/<arm>.", flag_values=fv)
    flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results"),
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
    flags.DEFINE_boolean("report_only", False, "Regenerate OUT/<experiment>/'s table.md and "
                         "figures from its results.json; run nothing.", flag_values=fv)
    flags.DEFINE_boolean("gaussian_floors", False, "Print each arm's gaussian_floor (the "
                         "sampler's share of spectrum_err, from the arm's config and data "
                         "alone: nothing is trained) for --experiment.", flag_values=fv)


def body(fv: flags.FlagValues) -> int | None:
    if fv.check:
        for name in [fv.experiment] if fv.experiment else EXPERIMENTS:
            check(name)
            print(f"{name}: ok")
        return None
    if fv.report_only:
        if not fv.experiment:
            raise ValueError("--report_only: name the experiment (--experiment=NAME)")
        print(report_again(fv.experiment, fv.out, fv.clip_x0))
        return None
    if fv.list or not fv.experiment:
        for name, exp in EXPERIMENTS.items():
            print(f"{name}: {exp.description}; arms: {', '.join(a.name for a in exp.arms)}")
        return None
    if fv.gaussian_floors:
        exp = EXPERIMENTS[fv.experiment]
        steps = 2 if fv.tiny else exp.steps
        for arm in exp.arms[:fv.max_arms]:
            floor = gaussian_floor(arm_run(arm, overrides_for(exp, fv.tiny)), exp.sampler, steps,
                                   exp.time_grid)["gaussian_floor"]
            print(f"{arm.name}: gaussian_floor {floor:.4g} ({exp.sampler} {steps})")
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
