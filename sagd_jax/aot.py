"""Ahead-of-time compilation of a run's programs for devices this machine may not have (a
TPU slice from ``sagd_jax.chips``): the trainer's own jitted functions, lowered on abstract
arguments with their shardings, compiled, and their costs read (``sagd_jax.program_costs``).

    run = Run.from_config(config, load_data=False, device_count=len(devices))
    report = compile_run(run, devices, chip)    # {"train_step": ..., "network": ..., ...}

Programs (each the function its service runs, nothing rebuilt):
  ``train_step``: ``Run.train_step(mesh)`` at ``train.batch_size``;
  ``network``: one network evaluation of the samplers (``Run.eps_fn``) at the sampling batch;
  ``eval_sampler`` and ``eval_features`` (with ``train.eval_every``): the in-training
  evaluation's sampler at ``eval.batch_size`` and its Inception-v3 features of that batch.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sagd_jax import program_costs
from sagd_jax.chips import Chip, GiB
from sagd_jax.config import mesh_shape
from sagd_jax.models.conv import traced_for
from sagd_jax.program_costs import ProgramCosts
from sagd_jax.sharding import batch_sharding, replicated


class DoesNotFit(ValueError):
    """A program needs more device memory than the chip has (one line, with what to try)."""


@dataclasses.dataclass
class CompiledProgram:
    """One program: ``images`` it processes per execution (global), its ``costs`` per device,
    the roofline bound on ``chip`` and the compile time on this machine."""

    name: str
    images: int
    costs: ProgramCosts
    roofline: dict[str, Any]
    compile_seconds: float
    fits: bool

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "fits": self.fits,
                "compile_seconds": self.compile_seconds, "costs": self.costs.as_dict(),
                "roofline": self.roofline}


def _abstract(shape: tuple[int, ...], dtype: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def sample_batch(requested: int, device_count: int) -> int:
    """``requested`` rounded up to a multiple of the device count (every device a share)."""
    return -(-requested // device_count) * device_count


def lower_programs(run: Any, mesh: jax.sharding.Mesh, network_batch: int
                   ) -> dict[str, tuple[int, Callable[[], Any]]]:
    """``{name: (images, lower)}``: each program's images per execution and a function that
    lowers it on abstract arguments over ``mesh`` (nothing is computed or allocated). Call
    ``lower`` inside ``models.conv.traced_for(platform)`` for the program of another
    platform than this process's (``compile_run`` does)."""
    height, width, channels = run.image_shape
    batch_sh = batch_sharding(mesh)
    state = run.abstract_state(mesh)
    config = run.config

    def train() -> Any:
        batch = _abstract((config.train.batch_size, height, width, channels), jnp.float32,
                          batch_sh)
        if run.conditional:
            batch = (batch, _abstract((config.train.batch_size,), jnp.int32, batch_sh))
        return run.train_step(mesh).lower(state, batch)

    def network(size: int) -> Callable[[], Any]:
        # One network evaluation (a conditional model: with labels, unguided).
        def lower() -> Any:
            x = _abstract((size, height, width, channels), jnp.float32, batch_sh)
            t = _abstract((size,), jnp.float32, batch_sh)
            labels = _abstract((size,), jnp.int32, batch_sh) if run.conditional else None
            call = jax.jit(lambda params, x, t, y: run.eps_fn(params, y)(x, t),
                           out_shardings=batch_sh)
            return call.lower(state.ema_params, x, t, labels)
        return lower

    programs = {"train_step": (config.train.batch_size, train),
                "network": (network_batch, network(network_batch))}
    if config.train.eval_every:
        programs |= _evaluation_programs(run, mesh, state)
    return programs


def _evaluation_programs(run: Any, mesh: jax.sharding.Mesh, state: Any
                         ) -> dict[str, tuple[int, Callable[[], Any]]]:
    """The in-training evaluation (``train.in_training_eval``): its sampler loop over one
    batch of ``eval.batch_size`` and the Inception-v3 features of that batch."""
    from sagd_jax.metrics.inception import INPUT_SIZE, InceptionV3
    from sagd_jax.samplers import get_sampler

    cfg, train = run.config.eval, run.config.train
    size = cfg.batch_size
    batch_sh = batch_sharding(mesh)
    shape = (size, *run.image_shape)

    def sampler() -> Any:
        sample = get_sampler(cfg.sampler or train.sampler)
        steps = cfg.steps or train.sample_steps

        def draw(params: Any, key: jax.Array) -> jax.Array:
            return sample(run.process, run.sample_eps_fn(params, shape[0]), key, shape, steps,
                          sharding=batch_sh)

        key = _abstract((2,), jnp.uint32, replicated(mesh))
        return jax.jit(draw).lower(state.ema_params, key)

    def features() -> Any:
        model = InceptionV3()
        images = (size, INPUT_SIZE, INPUT_SIZE, 3)
        variables = jax.eval_shape(model.init, jax.random.key(0),
                                   jax.ShapeDtypeStruct(images, jnp.float32))
        variables = jax.tree.map(lambda v: _abstract(v.shape, v.dtype, replicated(mesh)),
                                 variables)
        call = jax.jit(model.apply, out_shardings=(batch_sh, batch_sh))
        return call.lower(variables, _abstract(images, jnp.float32, batch_sh))

    return {"eval_sampler": (size, sampler), "eval_features": (size, features)}


# The TPU compiler's out-of-memory errors: "Ran out of memory on HBM, the total memory
# required for HLO temporaries (49.19G) exceeds available HBM (15.75G)", or "Used 20.1G of
# 15.75G hbm".
_OOM = (re.compile(r"required[^(]*\(([\d.]+)([KMGT]?)\)[^(]*available HBM", re.IGNORECASE),
        re.compile(r"Used\s+([\d.]+)([KMGT]?)\s+of\s+[\d.]+[KMGT]?\s+hbm", re.IGNORECASE))
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _oom_bytes(message: str) -> float | None:
    """The bytes a program needs by the TPU compiler's out-of-memory error (None: the error
    is another)."""
    if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
        return None
    for pattern in _OOM:
        if m := pattern.search(message):
            return float(m.group(1)) * _UNITS[m.group(2).upper()]
    return None


def advice(run: Any, device_count: int) -> str:
    """What to try against a program that does not fit, from the run's own settings."""
    config, tries = run.config, []
    _, fsdp = mesh_shape(config, device_count)
    if fsdp * 2 <= device_count and device_count % (fsdp * 2) == 0:
        tries.append(f"mesh.fsdp={fsdp * 2}")
    per_device = config.train.batch_size // device_count
    accum = config.train.grad_accum_steps
    if per_device % (accum * 2) == 0:
        tries.append(f"train.grad_accum_steps={accum * 2}")
    if not config.model.remat:
        tries.append("model.remat=True")
    if config.model.dtype == "float32":
        tries.append("model.dtype=bfloat16")
    return "try " + ", ".join(tries) if tries else "nothing left to try on this slice"


def refusal(name: str, needed: float, chip: Chip, run: Any, device_count: int) -> str:
    return (f"{name} does not fit: needs {needed / GiB:.2f} GiB of HBM per device, a "
            f"{chip.name} chip has {chip.hbm_bytes / GiB:.2f} GiB; "
            f"{advice(run, device_count)}")


def _options(devices: list[jax.Device]) -> dict[str, Any]:
    """Compiler options of a deviceless compile: on GPUs, matrix products through cuBLAS, since
    XLA's Triton GEMMs find no tile sizes without autotuning on a device ("Couldn't find output
    tile sizes", seen on the DDPM++ step)."""
    return {"xla_gpu_enable_triton_gemm": False} if devices[0].platform == "gpu" else {}


def compile_run(run: Any, devices: list[jax.Device], chip: Chip, *,
                network_batch: int = 256, names: tuple[str, ...] | None = None,
                refuse: bool = True,
                on_compiled: Callable[[CompiledProgram], None] | None = None
                ) -> dict[str, CompiledProgram]:
    """Compile ``run``'s programs for ``devices`` (its mesh from ``mesh.*``) and measure them
    against ``chip``; ``names``: only these programs. ``network_batch`` is rounded up to a
    multiple of the device count. ``on_compiled`` sees each program as it is done. A program
    too large for the chip (by its memory analysis, or the compiler's own out-of-memory
    error) is a ``DoesNotFit`` naming the HBM needed and what to try; ``refuse=False`` keeps
    going and marks it ``fits=False`` (the compiler's error still stops it)."""
    mesh = run.mesh(devices)
    count = len(devices)
    programs = lower_programs(run, mesh, sample_batch(network_batch, count))
    unknown = sorted(set(names or ()) - set(programs))
    if unknown:
        raise ValueError(f"--programs: unknown {unknown}; this run has {sorted(programs)}")
    dtype = run.config.model.dtype
    flops_per_s = chip.bf16_flops if dtype == "bfloat16" else chip.f32_flops
    out = {}
    for name, (images, lower) in programs.items():
        if names and name not in names:
            continue
        started = time.perf_counter()
        try:
            with traced_for(devices[0].platform):  # what the trainer traces on that platform
                lowered = lower()
            compiled = lowered.compile(compiler_options=_options(devices))
        except Exception as err:  # noqa: BLE001 - the compiler's out-of-memory error
            needed = _oom_bytes(str(err))
            if needed is None:
                raise
            raise DoesNotFit(refusal(name, needed, chip, run, count)) from None
        costs = program_costs.measure(compiled, count, lowered)
        program = CompiledProgram(
            name, images, costs,
            program_costs.roofline(costs, flops_per_s=flops_per_s,
                                   hbm_bandwidth=chip.hbm_bandwidth,
                                   ici_bandwidth=chip.ici_bandwidth, images=images),
            time.perf_counter() - started, costs.hbm_bytes <= chip.hbm_bytes)
        if refuse and not program.fits:
            raise DoesNotFit(refusal(name, costs.hbm_bytes, chip, run, count))
        out[name] = program
        if on_compiled is not None:
            on_compiled(program)
    return out
