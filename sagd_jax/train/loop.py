"""The training loop: ``train_and_evaluate(config, workdir)`` trains or resumes a run.

Everything is built and validated first (``Run.from_config``); only then is anything
compiled or written. The loop holds no state beyond the ``TrainState``: the batch of step s is
a pure function of (seed, s, process index) and the step's randomness of (seed, s), so
resuming from a checkpoint continues the exact same run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from sagd_jax import console, files
from sagd_jax.compile_cache import CompileCache, FirstStep
from sagd_jax.distributed import any_process, barrier, on_process0
from sagd_jax.images import image_grid, save_grid, to_uint8
from sagd_jax.metrics.inception import weights_path
from sagd_jax.metrics.spectra import radial_plot_image, radial_power_spectrum, spectrum_log_error
from sagd_jax.models import count_params
from sagd_jax.run import Run
from sagd_jax.sharding import prefetch_to_device
from sagd_jax.train.in_training_eval import InTrainingEval
from sagd_jax.train.preemption import PreemptionFlag
from sagd_jax.train.profiling import StepProfiler
from sagd_jax.train_state import TrainState
from sagd_jax.train_step import reduce_metrics

if TYPE_CHECKING:
    from clu.metric_writers import MetricWriter


def itstime(step: int, every: int, total: int, *, first: int = 0) -> bool:
    """Whether periodic work due every ``every`` steps (and at the last step ``total``) is due
    after ``step`` steps; never at or before ``first`` (where the run started)."""
    return step > first and (step % every == 0 or step == total)


class StepSpeed:
    """Training speed between progress lines: steps per second over the steps since the last
    ``lap()``, leaving out the first step of a start (compilation: it has its own line) and
    the time spent in ``paused()`` (sampling, evaluation); and the ETA at the pace since the
    first step, everything included. ``clock``: the time source."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.total_steps = 0
        self.first_done: tuple[float, int] | None = None  # (time, total_steps) at the first
        self._reset(clock())

    def _reset(self, now: float) -> None:
        self.mark, self.steps, self.untimed, self.untimed_steps = now, 0, 0.0, 0
        self.paused_s, self.data_wait = 0.0, 0.0

    def step(self, first: bool = False) -> None:
        """One step done (``first``: the start's first step, waited for; not timed)."""
        self.steps += 1
        self.total_steps += 1
        if first:
            now = self.clock()
            self.untimed, self.untimed_steps = now - self.mark, self.steps
            self.first_done = (now, self.total_steps)

    def eta(self, steps_left: int) -> float | None:
        """Seconds for ``steps_left`` more steps at the pace since the first step (sampling,
        evaluation and checkpoints included); None before a step after the first."""
        if self.first_done is None or self.total_steps <= self.first_done[1]:
            return None
        pace = (self.clock() - self.first_done[0]) / (self.total_steps - self.first_done[1])
        return steps_left * pace

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time in the block is not training time."""
        began = self.clock()
        try:
            yield
        finally:
            self.paused_s += self.clock() - began

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time in the block is waiting for data (counted in ``data_wait``)."""
        began = self.clock()
        try:
            yield
        finally:
            self.data_wait += self.clock() - began

    def lap(self) -> tuple[float | None, float]:
        """(steps per second, None if no step was timed; the share of the time spent waiting
        for data) since the last lap, and a new lap starts."""
        now = self.clock()
        wall = now - self.mark - self.paused_s
        timed, steps = wall - self.untimed, self.steps - self.untimed_steps
        rate = steps / timed if steps > 0 and timed > 0 else None
        wait = self.data_wait / wall if wall > 0 else 0.0
        self._reset(now)
        return rate, wait


def flat_hparams(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> scalars (sequences and None as strings), as TensorBoard's hparams want."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat_hparams(value, f"{prefix}{key}.")
        else:
            scalar = isinstance(value, (bool, int, float, str))
            out[f"{prefix}{key}"] = value if scalar else str(value)
    return out


def train_and_evaluate(config: Any, workdir: str) -> TrainState:
    """Train (or resume) the run of ``config`` in ``workdir``; returns the final state (its
    step is below ``train.num_steps`` when a signal stopped the run).

    Nothing is written before the input is validated and the workdir's lock is taken (one
    trainer per workdir). SIGTERM or Ctrl-C (on any process) checkpoints the current step and
    returns; a second Ctrl-C stops at once. A step with a non-finite loss or gradient is
    dropped; ``train.nonfinite="stop"`` then raises ``FloatingPointError`` (the checkpoints
    already written are all from finite steps), ``"skip"`` goes on and counts it in
    ``skipped_steps``. A failed save raises ``RunError`` at that save; a step out of device
    memory a one-line ``ValueError``. A first start that fails leaves no files behind.
    """
    started = time.perf_counter()
    run = Run.from_config(config, workdir)
    cfg = run.config.train
    latest = run.workdir.latest_step()
    if latest is not None and latest > cfg.num_steps:
        raise ValueError(f"train.num_steps={cfg.num_steps}: the run in --workdir="
                         f"{run.workdir.path} is already at step {latest}; give at least "
                         f"{latest} to continue it, or use a new workdir")
    cache = CompileCache(cfg.compilation_cache_dir)  # a bad folder: one line, nothing written
    run.mesh()  # its shape fits the devices (one line if not), before anything is written
    if cfg.eval_every:  # the Inception weights are there (one line if not), likewise
        weights_path(run.config.eval.inception_weights or None)
    is_writer = jax.process_index() == 0
    created, fresh = not files.exists(run.workdir.path), run.workdir.is_empty()
    lock = run.workdir.lock()
    on_process0(lock.acquire, "sagd-train-lock")
    try:
        with cache:
            return _train(run, is_writer, FirstStep(cache, started))
    except BaseException as err:
        if fresh and is_writer and not run.workdir.checkpoint_steps() and not isinstance(
                err, FloatingPointError):
            run.workdir.remove_new_run(created)
        if isinstance(err, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(err):
            raise ValueError(_out_of_memory(run, fresh)) from None
        raise
    finally:
        lock.release()


def _out_of_memory(run: Run, fresh: bool) -> str:
    """The one line for a run that does not fit in device memory."""
    cfg, devices = run.config.train, jax.device_count()
    height, width, channels = run.image_shape
    what = "images" if run.latent is None else "latents"
    return (f"out of device memory with train.batch_size={cfg.batch_size} "
            f"({cfg.batch_size // devices} per device on {devices} device(s), {height}x{width}"
            f"x{channels} {what}); try a smaller --config.train.batch_size, or "
            f"--config.model.remat=True" + ("; nothing was kept of this new run" if fresh
                                            else ""))


def _train(run: Run, is_writer: bool, first_step: FirstStep) -> TrainState:
    """The loop of ``train_and_evaluate``, once the workdir is locked."""
    cfg = run.config.train
    run.workdir.prepare(run.config, is_writer)
    # clu imports TensorFlow (seconds, and C++ log lines): only once the input is good
    metric_writers = console.import_quietly("clu.metric_writers")
    mesh = run.mesh()
    barrier("sagd-train-start")  # before the first collective (Orbax's directory sync)
    resuming = run.workdir.latest_step() is not None
    state = (run.restore(mesh, set_aside_damaged=True) if resuming else run.init_state(mesh))
    start = int(jax.device_get(state.step))
    # every start: a log left by a start killed before its first checkpoint is cut back too,
    # a torn line set aside, a folder in its place refused (one line) before any step
    if is_writer and run.workdir.truncate_metrics(start):
        console.info("%s at step %d: the log's records after it are dropped (redone)",
                     "resuming" if resuming else "starting", start)
    checkpointer = run.workdir.checkpointer(keep=cfg.keep_checkpoints)
    if run.posthoc_stds and is_writer:  # taken after the resumed step: taken again
        for path in run.workdir.set_aside_snapshots_after(start):
            console.warning("%s: an EMA snapshot after the resumed step %d; set aside", path,
                            start)
    barrier("sagd-snapshots-set-aside")  # before Orbax lists the snapshot steps
    snapshots = run.workdir.snapshotter() if run.posthoc_stds else None
    writer = metric_writers.create_default_writer(run.workdir.path, just_logging=not is_writer)
    if start == 0:
        writer.write_hparams(flat_hparams(json.loads(run.config.to_json_best_effort())))
    if start == cfg.num_steps:
        console.info("the run in %s is finished (step %d); nothing to do", run.workdir.path,
                     start)
    else:
        console.info("model: %s parameters; starting at step %d of %d on %d device(s), "
                     "%d process(es)", f"{count_params(state.params):,}", start, cfg.num_steps,
                     jax.device_count(), jax.process_count())
    step_fn = run.train_step(mesh)
    evaluator = InTrainingEval(run, mesh) if cfg.eval_every and start < cfg.num_steps else None
    stop_on_nonfinite = cfg.nonfinite == "stop"

    def check_finite(metrics: dict[str, jax.Array], done: int) -> None:
        if stop_on_nonfinite and int(jax.device_get(metrics["nonfinite"])):
            checkpointer.wait()
            raise FloatingPointError(
                f"non-finite loss or gradients at step {done} (train.nonfinite=stop): the update "
                f"was dropped and nothing saved after it; last checkpoint: step "
                f"{checkpointer.latest_step()} in {checkpointer.directory}; set "
                "--config.train.nonfinite=skip to skip such steps")

    data_spectrum = run.reference_spectrum()
    history: list[dict[str, Any]] = []
    previous: dict[str, jax.Array] | None = None
    speed = StepSpeed()
    loss, done = float("nan"), start  # the last logged loss, the steps done
    host_batches = run.batch_iterator(start, cfg.num_steps)
    device_batches = prefetch_to_device(host_batches, mesh)
    profiler = StepProfiler(cfg.profile_steps, files.join(run.workdir.path, "profile"),
                            start, cfg.num_steps, enabled=is_writer)
    first_step.before()
    with PreemptionFlag() as preemption, profiler:
        for step in range(start, cfg.num_steps):
            profiler.before(step)
            with speed.waiting():
                batch = next(device_batches)
            state, metrics = step_fn(state, batch)
            profiler.after(step, state)  # at the last profiled step: waits for it, stops
            first_step.after(state)  # once: waits for it, says how long the start took
            speed.step(first=step == start)  # compilation is not training speed
            if previous is not None:  # one step behind: the check does not stall the device
                check_finite(previous, step)
            previous = metrics
            history.append(metrics)
            done = step + 1
            checkpointer.check()  # a failed save stops the run here, not a save later
            if itstime(done, cfg.log_every, cfg.num_steps):
                scalars = reduce_metrics(history)
                history = []
                steps_per_s, data_wait = speed.lap()
                if steps_per_s is not None:  # None: only the first step (compilation) since
                    scalars |= {"steps_per_sec": steps_per_s,
                                "img_per_sec": steps_per_s * cfg.batch_size}
                scalars["data_wait"] = data_wait
                writer.write_scalars(done, scalars)
                if is_writer:
                    run.workdir.append_metrics({"step": done, **scalars})
                loss = scalars["loss"]
                console.info("step %d/%d  loss %.4f  %s", done, cfg.num_steps, loss,
                             speed_text(steps_per_s, cfg.batch_size,
                                        speed.eta(cfg.num_steps - done)))
            stop = any_process(preemption.requested)
            if itstime(done, cfg.checkpoint_every, cfg.num_steps) or stop:
                check_finite(metrics, done)
                checkpointer.save(state, run.config)
            if snapshots is not None and itstime(done, run.config.ema.snapshot_every,
                                                 cfg.num_steps):
                snapshots.save(state.snapshot(), run.config)
            if stop:
                checkpointer.wait()
                console.info("%s: checkpointed step %d in %s; stopping (run the same command "
                             "to resume)", preemption.signal_name or "a signal on another "
                             "process", done, checkpointer.directory, all_processes=True)
                break
            if itstime(done, cfg.sample_every, cfg.num_steps):
                with speed.paused():  # sampling time is not training speed
                    write_samples(run, state, data_spectrum, writer, is_writer)
            if evaluator is not None and itstime(done, cfg.eval_every, cfg.num_steps):
                with speed.paused():  # evaluation time is not training speed
                    scalars = evaluator(state.ema_params, done)
                writer.write_scalars(done, scalars)
                if is_writer:
                    run.workdir.append_metrics({"step": done, **scalars})
                console.info("step %d: FID %.2f%s (%d samples, %s)", done, scalars["fid"],
                             f", KID {scalars['kid']:.4f}" if "kid" in scalars else "",
                             run.config.eval.num_samples,
                             console.duration(scalars["eval_seconds"]))
        if previous is not None:
            check_finite(previous, int(jax.device_get(state.step)))
    checkpointer.wait()
    saved = checkpointer.latest_step()
    checkpointer.close()
    if snapshots is not None:
        snapshots.wait()
        snapshots.close()
    writer.flush()
    if done > start:
        if history:  # stopped between two progress lines
            loss = reduce_metrics(history)["loss"]
        console.info("%s", closing_lines(run, done, done - start,
                                         time.perf_counter() - first_step.started, loss, saved))
    return state


def speed_text(steps_per_s: float | None, batch_size: int, eta: float | None) -> str:
    """``12.50 steps/s  400.0 img/s  ETA 1m20s``; ``?`` for what is not known yet (no step
    timed since the first one, which compiled)."""
    speed = ("? steps/s  ? img/s" if steps_per_s is None
             else f"{steps_per_s:.2f} steps/s  {steps_per_s * batch_size:.1f} img/s")
    return f"{speed}  ETA {'?' if eta is None else console.duration(eta)}"


def closing_lines(run: Run, step: int, steps: int, seconds: float, loss: float,
                  checkpoint: int | None) -> str:
    """The two lines at the end of a start: the step it ended at, the ``steps`` it did in
    ``seconds`` (from the start, compilation included) and the last ``loss``; then what the
    workdir holds."""
    total = run.config.train.num_steps
    head = "finished" if step >= total else "stopped at"
    workdir = run.workdir
    where = [f"checkpoints/ (step {checkpoint})" if checkpoint is not None else "no checkpoint"]
    if files.exists(workdir.samples_dir):
        where.append("samples/")
    where += ["metrics.jsonl", "TensorBoard events"]
    return (f"{head} step {step}/{total}: {steps} step{'s' * (steps != 1)} in "
            f"{console.duration(seconds)} (wall time), loss {loss:.4f}\n"
            f"workdir {workdir.path}: {', '.join(where)}")


def write_samples(run: Run, state: TrainState, data_spectrum: np.ndarray,
                  writer: MetricWriter, is_writer: bool) -> None:
    """EMA samples: a PNG grid and the radial spectrum against the data's (JSON) in
    ``samples/``, both also as TensorBoard images, and the spectrum error as a scalar."""
    step = int(jax.device_get(state.step))
    images = run.periodic_samples(state.ema_params, step)
    bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
    if bad:  # diverged EMA weights (train.nonfinite=skip goes on): no grid of NaN images
        console.warning("step %d: the samples hold %d non-finite values (the EMA weights have "
                        "diverged?); no grid or spectrum written", step, bad)
        writer.write_scalars(step, {"sample_spectrum_log_error": float("nan")})
        return
    centers, power = radial_power_spectrum(images)
    error = spectrum_log_error(power, data_spectrum)
    writer.write_scalars(step, {"sample_spectrum_log_error": error})
    if not is_writer:
        return
    workdir = run.workdir
    save_grid(images, workdir.sample_grid_path(step))
    with contextlib.suppress(FileExistsError):  # a resumed run never rewrites a step's file
        files.write_json(workdir.spectrum_path(step), {
            "rho": centers.tolist(), "samples": power.tolist(), "data": data_spectrum.tolist(),
            "mean_abs_log_ratio": error}, exclusive=True)
    plot = radial_plot_image(centers, {"samples": power, "data": data_spectrum},
                             ylabel="power |F x|^2",
                             title=f"step {step}: mean |log ratio| {error:.3f}")
    writer.write_images(step, {"samples": image_grid(to_uint8(images))[None],
                               "sample_spectrum": plot[None]})
    console.info("step %d: samples in %s, spectrum |log ratio| %.3f", step, workdir.samples_dir,
                 error)
