"""The training loop: ``train_and_evaluate(config, workdir)`` trains or resumes a run.

Everything is built and validated first (config values, data source, process, model); only
then is anything compiled or written. The loop holds no state beyond the ``TrainState``: the
batch of step s is a pure function of (seed, s, process index) and the step's randomness of
(seed, s), so resuming from a checkpoint continues the exact same run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sagd_jax.checkpoint import Checkpointer, abstract_like
from sagd_jax.config import default_config, validate_config
from sagd_jax.data import get_source, load_batch, local_batch_size
from sagd_jax.data.sources import ImageSource
from sagd_jax.distributed import barrier
from sagd_jax.metrics.spectra import radial_power_spectrum, spectrum_log_error
from sagd_jax.models import build_model, count_params
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import get_sampler
from sagd_jax.sharding import batch_sharding, global_batch, make_mesh, replicate, replicated
from sagd_jax.train.images import save_grid
from sagd_jax.train.preemption import PreemptionFlag
from sagd_jax.train.state import TrainState, create_train_state, init_key, make_optimizer
from sagd_jax.train.step import (
    INIT_STREAM,
    SAMPLE_STREAM,
    TRAIN_STREAM,
    make_eps_fn,
    reduce_metrics,
    stream_key,
    train_step,
)

if TYPE_CHECKING:
    from clu import metric_writers

# Config sections that fix what a checkpoint means; a workdir never resumes under others.
STRUCTURAL_KEYS = ("data.name", "data.image_size", "data.channels", "noise", "diffusion", "model")
REFERENCE_IMAGES = 512  # data images behind the reference power spectrum


@dataclasses.dataclass(frozen=True)
class Run:
    """What a run is built from (all validated)."""

    config: Any
    source: ImageSource
    process: DiffusionProcess
    model: Any
    tx: Any


def build_run(config: Any) -> Run:
    """Validate the config and build its parts; raise a one-line ``ValueError`` on bad input."""
    validate_config(config)
    source = get_source(config.data)
    height, width, _ = source.image_shape
    process = DiffusionProcess.from_config(config, height, width)
    model = build_model(config.model, source.image_shape)
    return Run(config, source, process, model, make_optimizer(config.optim))


def _structural(config: Any) -> dict[str, Any]:
    """The ``STRUCTURAL_KEYS`` of a config (dict or ConfigDict), JSON-normalised."""
    config_dict = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())
    out = {}
    for key in STRUCTURAL_KEYS:
        node: Any = config_dict
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a config as JSON) with the keys added to ``default_config`` since it was
    written set to their defaults, so that a new option does not orphan older workdirs."""
    def merge(into: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into

    return merge(json.loads(default_config().to_json_best_effort()), saved)


def check_compatible(workdir: str, saved: Any, config: Any) -> None:
    """Raise ``ValueError`` naming the first structural key where ``config`` differs from the
    config a workdir's run was started with (``saved``: a dict or ConfigDict; keys it lacks
    count as their defaults)."""
    saved = saved if isinstance(saved, dict) else json.loads(saved.to_json_best_effort())
    previous, current = _structural(_with_defaults(saved)), _structural(config)
    for key in STRUCTURAL_KEYS:
        if previous[key] != current[key]:
            raise ValueError(
                f"--workdir={workdir}: holds a run with {key}={previous[key]!r}, this config "
                f"has {current[key]!r}; use a new workdir"
            )


def prepare_workdir(workdir: str, config: Any) -> None:
    """Create the workdir, or check that the run already in it used a compatible config.

    Writes ``config.json`` on the first start only; raises ``ValueError`` naming the first
    differing key when the workdir belongs to another run (nothing is written then).
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            check_compatible(workdir, json.load(f), config)
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:  # atomically: other processes may be reading it already
            fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".config.json.")
            with os.fdopen(fd, "w") as f:
                json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
            os.replace(tmp, path)
    except OSError as err:
        raise ValueError(f"--workdir={workdir}: not writable ({err.strerror})") from None


def _state_factory(run: Run) -> tuple[Any, jax.Array]:
    """``(make, key)``: ``make(key)`` is the run's fresh ``TrainState``."""
    make = functools.partial(create_train_state, run.model, run.tx,
                             image_shape=run.source.image_shape)
    return make, init_key(run.config.seed, INIT_STREAM)


def _restore(run: Run, checkpointer: Checkpointer, mesh: jax.sharding.Mesh,
             step: int | None = None) -> TrainState:
    """Checkpoint ``step`` (latest by default) restored onto ``mesh``, replicated."""
    make, key = _state_factory(run)
    return checkpointer.restore(abstract_like(jax.eval_shape(make, key), replicated(mesh)), step)


def initial_state(run: Run, checkpointer: Checkpointer, mesh: jax.sharding.Mesh) -> TrainState:
    """The latest checkpoint restored onto the mesh, or a fresh state."""
    if checkpointer.latest_step() is not None:
        return _restore(run, checkpointer, mesh)
    make, key = _state_factory(run)
    return replicate(make(key), mesh)


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir's run was started with (its ``config.json``), on top of today's
    defaults so that keys added since then read their default; JSON lists become tuples."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"--workdir={workdir}: no config.json; not a training workdir")
    with open(path) as f:
        saved = json.load(f)

    def merge(node: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
                merge(node[key], value)
                continue
            with node.ignore_type():
                node[key] = tuple(value) if isinstance(value, list) else value

    config = default_config()
    merge(config, saved)
    return config


def load_state(workdir: str, step: int | None = None,
               mesh: jax.sharding.Mesh | None = None) -> tuple[Run, TrainState]:
    """The run of ``workdir`` and its checkpoint ``step`` (latest by default) on ``mesh``."""
    run = build_run(saved_config(workdir))
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"--workdir={workdir}: no checkpoint (no checkpoints/ folder)")
    checkpointer = Checkpointer(workdir, keep=None)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None or step not in checkpointer.manager.all_steps():
            raise ValueError(f"--workdir={workdir}: no checkpoint"
                             + ("" if step is None else f" of step {step}")
                             + f" under {checkpointer.directory}")
        return run, _restore(run, checkpointer, make_mesh() if mesh is None else mesh, step)
    finally:
        checkpointer.close()


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


def reference_spectrum(run: Run) -> np.ndarray:
    """Radially averaged power spectrum of a fixed set of training images."""
    count = min(len(run.source), REFERENCE_IMAGES)
    images = load_batch(run.source, run.config.data, run.config.seed, 0, count)
    return radial_power_spectrum(images)[1]


def check_workdir(workdir: str) -> None:
    """Refuse a workdir that cannot be created or written, before anything is built.

    Probes the nearest existing ancestor with a temporary file that is removed at once (works
    for root too, for whom permission bits say nothing).
    """
    path = os.path.abspath(workdir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--workdir={workdir}: {existing} exists and is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"--workdir={workdir}: not writable ({existing}: {err.strerror})"
                         ) from None


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (a no-op with one process)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Append one JSON record (a line) to ``path``; earlier lines are never rewritten."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train_and_evaluate(config: Any, workdir: str) -> TrainState:
    """Train (or resume) the run of ``config`` in ``workdir``; returns the final state.

    Stops early, with a checkpoint of the current step, on SIGTERM (on any process). A step
    with a non-finite loss or gradient is dropped; ``train.nonfinite="stop"`` then raises
    ``FloatingPointError`` (the checkpoints already written are all from finite steps),
    ``"skip"`` goes on and counts it in ``skipped_steps``.
    """
    check_workdir(workdir)
    run = build_run(config)
    prepare_workdir(workdir, config)
    from clu import metric_writers  # imports TensorFlow (seconds): only once the input is good
    cfg = config.train
    mesh = make_mesh()
    barrier("sagd-train-start")  # before the first collective (Orbax's directory sync)
    checkpointer = Checkpointer(workdir, keep=cfg.keep_checkpoints)
    state = initial_state(run, checkpointer, mesh)
    start = int(jax.device_get(state.step))
    is_writer = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer)
    if start == 0:
        writer.write_hparams(flat_hparams(json.loads(config.to_json_best_effort())))
    logging.info("model: %s parameters; starting at step %d of %d on %d device(s), %d process(es)",
                 f"{count_params(state.params):,}", start, cfg.num_steps, jax.device_count(),
                 jax.process_count())

    step_fn = jax.jit(
        functools.partial(train_step, model=run.model, tx=run.tx, process=run.process,
                          ema_decay=config.optim.ema_decay),
        in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )
    train_key = stream_key(config.seed, TRAIN_STREAM)
    local = local_batch_size(cfg.batch_size, jax.process_count())
    stop_on_nonfinite = cfg.nonfinite == "stop"

    def load(step: int) -> np.ndarray:
        return load_batch(run.source, config.data, config.seed, step, cfg.batch_size,
                          jax.process_index(), jax.process_count())

    def check_finite(metrics: dict[str, jax.Array], done: int) -> None:
        if stop_on_nonfinite and int(jax.device_get(metrics["nonfinite"])):
            checkpointer.wait()
            raise FloatingPointError(
                f"non-finite loss or gradients at step {done} (train.nonfinite=stop): the update "
                f"was dropped and nothing saved after it; last checkpoint: step "
                f"{checkpointer.latest_step()} in {checkpointer.directory}; set "
                "--config.train.nonfinite=skip to skip such steps")

    data_spectrum = reference_spectrum(run)
    samples_dir = os.path.join(workdir, "samples")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    history: list[dict[str, Any]] = []
    previous: dict[str, jax.Array] | None = None
    last_log_time, last_log_step = time.perf_counter(), start
    with PreemptionFlag() as preemption, concurrent.futures.ThreadPoolExecutor(1) as prefetcher:
        pending = prefetcher.submit(load, start) if start < cfg.num_steps else None
        for step in range(start, cfg.num_steps):
            batch = pending.result()
            assert batch.shape[0] == local
            if step + 1 < cfg.num_steps:
                pending = prefetcher.submit(load, step + 1)
            state, metrics = step_fn(state, global_batch(batch, mesh), train_key)
            if previous is not None:  # one step behind: the check does not stall the device
                check_finite(previous, step)
            previous = metrics
            history.append(metrics)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.num_steps:
                scalars = reduce_metrics(history)
                history = []
                now = time.perf_counter()
                steps_per_s = (done - last_log_step) / (now - last_log_time)
                scalars |= {"steps_per_sec": steps_per_s,
                            "img_per_sec": steps_per_s * cfg.batch_size}
                last_log_time, last_log_step = now, done
                writer.write_scalars(done, scalars)
                if is_writer:
                    append_jsonl(metrics_path, {"step": done, **scalars})
                eta = (cfg.num_steps - done) / max(steps_per_s, 1e-9)
                logging.info("step %d/%d loss %.4f  %.2f steps/s  %.1f img/s  ETA %.0f s",
                             done, cfg.num_steps, scalars["loss"], steps_per_s,
                             scalars["img_per_sec"], eta)
            stop = any_process(preemption.requested)
            if done % cfg.checkpoint_every == 0 or done == cfg.num_steps or stop:
                check_finite(metrics, done)
                checkpointer.save(state, config)
            if stop:
                logging.info("SIGTERM: checkpointed step %d in %s; stopping", done,
                             checkpointer.directory)
                break
            if done % cfg.sample_every == 0 or done == cfg.num_steps:
                write_samples(run, state, samples_dir, data_spectrum, writer, is_writer)
                last_log_time = time.perf_counter()  # sampling time is not training speed
        if previous is not None:
            check_finite(previous, int(jax.device_get(state.step)))
    checkpointer.wait()
    checkpointer.close()
    writer.flush()
    return state


def sample_images(run: Run, params: Any, step: int) -> np.ndarray:
    """EMA samples of the configured sampler; the key is a function of (seed, step)."""
    cfg = run.config.train
    height, width, channels = run.source.image_shape
    key = jax.random.fold_in(stream_key(run.config.seed, SAMPLE_STREAM), step)
    sampler = get_sampler(cfg.sampler)
    eps_fn = make_eps_fn(run.model, run.process, params)
    images = sampler(run.process, eps_fn, key, (cfg.num_samples, height, width, channels),
                     cfg.sample_steps)
    return np.asarray(jax.device_get(images))


def write_samples(run: Run, state: TrainState, samples_dir: str, data_spectrum: np.ndarray,
                  writer: metric_writers.MetricWriter, is_writer: bool) -> None:
    """A PNG grid of EMA samples and the radial-spectrum error of samples against data."""
    step = int(jax.device_get(state.step))
    images = sample_images(run, state.ema_params, step)
    centers, power = radial_power_spectrum(images)
    error = spectrum_log_error(power, data_spectrum)
    writer.write_scalars(step, {"sample_spectrum_log_error": error})
    if not is_writer:
        return
    os.makedirs(samples_dir, exist_ok=True)
    save_grid(images, os.path.join(samples_dir, f"step_{step:07d}.png"))
    spectrum_path = os.path.join(samples_dir, f"spectrum_{step:07d}.json")
    if not os.path.exists(spectrum_path):
        with open(spectrum_path, "x") as f:
            json.dump({"rho": centers.tolist(), "samples": power.tolist(),
                       "data": data_spectrum.tolist(), "mean_abs_log_ratio": error}, f)
    logging.info("step %d: samples in %s, spectrum |log ratio| %.3f", step, samples_dir, error)
