"""Generate images from a trained run, in resumable chunks, sharded over all devices.

    python -m sagd_jax.sample --workdir=DIR --num_samples=N --sampler=ddpm --steps=S \\
        [--config=configs/NAME.py] [--seed=K] [--eta=E] [--clip_x0=C] [--checkpoint_step=STEP] \\
        [--chunk_size=C] [--out=OUTDIR] [--model=ema|exact]

Loads the EMA weights of the latest (or the chosen) checkpoint of ``DIR`` (``--model=exact``:
the exact Gaussian model of ``grf`` data, no checkpoint needed) and writes into ``OUTDIR``
(default ``DIR/generated/<sampler>-<steps>steps-seed<K>-<checkpoint>``):

* ``chunks/chunk_<i>.npz``: float32 samples of chunk i, each written atomically once done;
* ``samples.npz``: ``arr_0`` uint8 NHWC (the layout FID tools read) and ``float32`` (model
  units), plus ``grid.png``, when all chunks are there;
* ``manifest.json``: what was asked for; a later call with other settings is refused.

Chunk i's randomness is ``fold_in(seed stream, i)``, so a killed run continues where it stopped
and gives bit for bit the images of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags

from sagd_jax.train.images import to_uint8

SAMPLE_CLI_STREAM = 4  # a random stream of its own (see train.step for the others)


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What to generate; ``checkpoint_step=None`` means latest, ``model="exact"`` no network."""

    num_samples: int
    sampler: str
    steps: int
    seed: int = 0
    eta: float | None = None
    checkpoint_step: int | None = None
    chunk_size: int = 256
    model: str = "ema"
    clip_x0: float | None = None  # ddpm, ddim: x0_hat clipped to [-c, c] (samplers module)

    def validate(self, device_count: int) -> None:
        from sagd_jax.samplers import SAMPLERS

        if self.num_samples < 1:
            raise ValueError(f"--num_samples={self.num_samples}: must be >= 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler={self.sampler!r}: unknown; known: {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ValueError(f"--steps={self.steps}: must be >= 1")
        if self.seed < 0:
            raise ValueError(f"--seed={self.seed}: must be >= 0")
        if self.eta is not None and self.sampler != "ddim":
            raise ValueError(f"--eta={self.eta}: only the ddim sampler takes eta")
        if self.eta is not None and not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"--eta={self.eta}: must be in [0, 1]")
        if self.chunk_size < 1 or self.chunk_size % device_count:
            raise ValueError(f"--chunk_size={self.chunk_size}: must be a positive multiple of "
                             f"the device count ({device_count})")
        if self.clip_x0 is not None and self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"--clip_x0={self.clip_x0}: only the ddpm and ddim samplers clip")
        if self.clip_x0 is not None and not self.clip_x0 > 0:
            raise ValueError(f"--clip_x0={self.clip_x0}: must be > 0")
        if self.model not in ("ema", "exact"):
            raise ValueError(f"--model={self.model!r}: must be ema or exact")

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_size)

    def default_dirname(self, checkpoint_step: int | None) -> str:
        sampler = self.sampler + (f"-eta{self.eta:g}" if self.eta is not None else "")
        sampler += f"-clip{self.clip_x0:g}" if self.clip_x0 is not None else ""
        source = "exact" if self.model == "exact" else f"step{checkpoint_step}"
        return f"{sampler}-{self.steps}steps-seed{self.seed}-{source}"


def _write_atomic_npz(path: str, **arrays: np.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _check_manifest(out_dir: str, manifest: dict[str, Any]) -> None:
    path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != manifest:
            differing = sorted(k for k in manifest if previous.get(k) != manifest[k])
            raise ValueError(f"--out={out_dir}: holds samples made with other settings "
                             f"({', '.join(differing)}); use another --out")
        return
    os.makedirs(os.path.join(out_dir, "chunks"), exist_ok=True)
    with open(path, "x") as f:
        json.dump(manifest, f, indent=2)


def generate(workdir: str, request: SampleRequest, out_dir: str | None = None,
             config: Any = None, max_chunks: int | None = None) -> str | None:
    """Generate ``request`` from the run in ``workdir``; returns ``samples.npz``'s path, or None
    if ``max_chunks`` (chunks to compute in this call) stopped it before the end.

    ``config``: when given, must have the workdir's data, noise, diffusion and model sections.
    Raises a one-line ``ValueError`` for bad input before anything is computed or written.
    """
    import jax
    from jax.experimental import multihost_utils

    from sagd_jax.data import grf_model
    from sagd_jax.distributed import barrier
    from sagd_jax.samplers import get_sampler
    from sagd_jax.sharding import batch_sharding, make_mesh
    from sagd_jax.train.loop import build_run, check_compatible, load_state, saved_config
    from sagd_jax.train.step import make_eps_fn, stream_key

    request.validate(jax.device_count())
    saved = saved_config(workdir)
    if config is not None:
        check_compatible(workdir, saved, config)
    mesh = make_mesh()
    if request.model == "exact":
        if saved.data.name != "grf":
            raise ValueError(f"--model=exact: needs data.name=grf, the run has "
                             f"{saved.data.name!r}")
        run = build_run(saved)
        eps_fn, step = grf_model(saved.data).eps_fn(run.process), None
    else:
        run, state = load_state(workdir, request.checkpoint_step, mesh)
        step = int(jax.device_get(state.step))
        eps_fn = make_eps_fn(run.model, run.process, state.ema_params)
    out_dir = out_dir or os.path.join(workdir, "generated", request.default_dirname(step))
    final = os.path.join(out_dir, "samples.npz")
    manifest = {**dataclasses.asdict(request), "checkpoint_step": step,
                "workdir": os.path.abspath(workdir)}
    if request.clip_x0 is None:  # manifests written before the option existed stay valid
        del manifest["clip_x0"]
    if jax.process_index() == 0:
        _check_manifest(out_dir, manifest)
    if os.path.exists(final):
        print(f"{final}: already complete", file=sys.stderr)
        return final

    height, width, channels = run.source.image_shape
    chunk_path = [os.path.join(out_dir, "chunks", f"chunk_{i:05d}.npz")
                  for i in range(request.num_chunks)]
    todo = [i for i in range(request.num_chunks) if not os.path.exists(chunk_path[i])]
    barrier("sagd-sample-start")  # all agree on what is done before anyone writes
    sampler = get_sampler(request.sampler)
    options = {k: v for k, v in (("eta", request.eta), ("clip_x0", request.clip_x0))
               if v is not None}
    base = stream_key(request.seed, SAMPLE_CLI_STREAM)
    shape = (request.chunk_size, height, width, channels)
    start = time.perf_counter()
    for done, i in enumerate(todo[:max_chunks] if max_chunks is not None else todo):
        images = sampler(run.process, eps_fn, jax.random.fold_in(base, i), shape, request.steps,
                         sharding=batch_sharding(mesh), **options)
        images = np.asarray(multihost_utils.process_allgather(images, tiled=True))
        count = min(request.chunk_size, request.num_samples - i * request.chunk_size)
        if jax.process_index() == 0:
            _write_atomic_npz(chunk_path[i], images=images[:count].astype(np.float32))
        rate = (done + 1) * request.chunk_size / (time.perf_counter() - start)
        left = (len(todo) - done - 1) * request.chunk_size / rate
        print(f"chunk {i + 1}/{request.num_chunks}: {rate:.1f} img/s, ETA {left:.0f} s",
              file=sys.stderr, flush=True)
    barrier("sagd-sample-end")
    if not all(os.path.exists(p) for p in chunk_path):
        return None
    if jax.process_index() == 0:
        from sagd_jax.train.images import save_grid

        samples = np.concatenate([np.load(p)["images"] for p in chunk_path])
        _write_atomic_npz(final, arr_0=to_uint8(samples), float32=samples)
        grid = os.path.join(out_dir, "grid.png")
        if not os.path.exists(grid):
            save_grid(samples[:64], grid)
    return final


def main(argv: list[str]) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    request = SampleRequest(
        num_samples=FLAGS.num_samples, sampler=FLAGS.sampler, steps=FLAGS.steps,
        seed=FLAGS.seed, eta=FLAGS.eta, clip_x0=FLAGS.clip_x0,
        checkpoint_step=FLAGS.checkpoint_step, chunk_size=FLAGS.chunk_size, model=FLAGS.model)
    try:
        from sagd_jax import distributed

        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        path = generate(FLAGS.workdir, request, FLAGS.out, FLAGS.config, FLAGS.max_chunks)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(path if path else "stopped early (--max_chunks); run again to continue")


def _define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Optional: the run's config file; must "
                                    "match the workdir's run.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Training workdir (config.json and checkpoints).")
    flags.DEFINE_integer("num_samples", None, "Number of images.")
    flags.DEFINE_string("sampler", "ddpm", "ddpm | ddim | ode_euler | ode_heun | sde")
    flags.DEFINE_integer("steps", 250, "Sampler iterations.")
    flags.DEFINE_integer("seed", 0, "Sampling seed (independent of the training seed).")
    flags.DEFINE_float("eta", None, "DDIM's eta (0: deterministic, 1: DDPM's posterior).")
    flags.DEFINE_float("clip_x0", None, "ddpm, ddim: clip x0_hat to [-C, C] at every step "
                       "(the data range is 1); default: no clipping.")
    flags.DEFINE_integer("checkpoint_step", None, "Checkpoint to load (default: latest).")
    flags.DEFINE_integer("chunk_size", 256, "Images per chunk (a multiple of the devices).")
    flags.DEFINE_string("out", None, "Output directory (default DIR/generated/...).")
    flags.DEFINE_enum("model", "ema", ["ema", "exact"], "EMA network, or the exact Gaussian "
                      "model of grf data (no checkpoint).")
    flags.DEFINE_integer("max_chunks", None, "Compute at most this many chunks in this call.")
    flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
    flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
    flags.mark_flags_as_required(["workdir", "num_samples"])


def run() -> None:
    """Console-script entry point (``sagd-sample``)."""
    _define_flags()
    app.run(main)

if __name__ == "__main__":
    run()
