"""Compile a run for a TPU slice this machine does not have, and say whether it fits and how
fast it could go.

    pip install libtpu            # or the package's [tpu] extra: libtpu's deviceless compiler
    python -m sagd_jax.compile --config=configs/cifar10_ddpmpp.py --topology=v5e:4x4 \\
        [--config.mesh.fsdp=4 ...] [--json=FILE] [--network_batch=256] [--programs=...]

Builds the run as the trainer does (``Run``, its mesh from ``mesh.*`` over the slice's
devices) and compiles, without devices or data (``sagd_jax.aot``): the train step, one
network evaluation of the samplers at ``--network_batch`` images, and, with
``train.eval_every``, the in-training evaluation's sampler and Inception features. Per program
and per device it prints the HBM of arguments, outputs, temporaries and code against the
chip's (``sagd_jax.chips``), the compiler's FLOPs and bytes, the collectives of the compiled
HLO (count and bytes) and the roofline lower bound on its time, with the images/s it allows:
figures from the compiler's counts, not measured times. ``--json`` writes all of it (never
over an existing file).

Chips: v4, v5e, v5p, v6e; ``--topology=CHIP:AxB`` (v5e, v6e) or ``CHIP:AxBxC`` (v4, v5p).
A program that does not fit is one line naming the HBM it needs, the chip's, and what to try
(``mesh.fsdp``, ``train.grad_accum_steps``, ``model.remat``, ``model.dtype``), exit 2; so is
a topology that does not parse or names an unknown chip.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from sagd_jax import cli


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv)
    flags.DEFINE_string("topology", None, "The slice: CHIP:AxB or CHIP:AxBxC (v5e:4x4, "
                        "v4:2x2x2, v5p:4x4x4, v6e:2x4).", flag_values=fv, required=True)
    flags.DEFINE_integer("network_batch", None, "Images of the samplers' network evaluation "
                         "(default: sagd-sample's --chunk_size; rounded up to a multiple of "
                         "the devices).", flag_values=fv)
    flags.DEFINE_list("programs", [], "Only these programs (train_step, network, "
                      "eval_sampler, eval_features); default all.", flag_values=fv)
    flags.DEFINE_string("json", None, "Write the report here (never over an existing file).",
                        flag_values=fv)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f}"


def rows(programs: dict[str, Any], chip: Any) -> list[dict[str, Any]]:
    """One printed row per program: per-device HBM (GiB), FLOPs, bytes, collectives and the
    roofline bound."""
    out = []
    for name, p in programs.items():
        c, r = p.costs, p.roofline
        counts = {op: (int(s["count"]), s["bytes"] / 1e6) for op, s in c.collectives.items()
                  if s["count"]}
        out.append({
            "program": name, "images": p.images,
            "args GiB": _gib(c.argument_bytes), "out GiB": _gib(c.output_bytes - c.alias_bytes),
            "temp GiB": _gib(c.temp_bytes), "code GiB": _gib(c.code_bytes),
            "HBM GiB": f"{_gib(c.hbm_bytes)}/{_gib(chip.hbm_bytes)}",
            "fits": "fits" if p.fits else "NO",
            "GFLOP": c.flops / 1e9, "GB": c.bytes_accessed / 1e9,
            "collectives (count, MB)": " ".join(f"{op}:{n}/{mb:.3g}"
                                                for op, (n, mb) in counts.items()) or "-",
            "bound ms": r["bound_s"] * 1e3, "by": r["limited_by"],
            "img/s": r["images_per_s"],
        })
    return out


def compile_cli(fv: flags.FlagValues) -> None:
    from sagd_jax import console, files, validate
    from sagd_jax.aot import compile_run
    from sagd_jax.chips import parse_topology, topology_devices
    from sagd_jax.config import normalize
    from sagd_jax.run import Run
    from sagd_jax.sampling import SampleRequest

    topology = parse_topology(fv.topology)  # one line, before anything is loaded
    if fv.network_batch is not None:
        validate.integer("--network_batch", fv.network_batch, 1)
    if fv.json:
        files.refuse_existing("--json", fv.json)
    devices = topology_devices(topology)
    chip = topology.device_chip(len(devices))
    config = normalize(fv.config)
    run = Run.from_config(config, load_data=False, device_count=len(devices))
    batch = fv.network_batch or SampleRequest.__dataclass_fields__["chunk_size"].default
    console.info("compiling for %s: %d devices on %d %s chips", topology.name, len(devices),
                 topology.num_chips, topology.chip.name)

    def done(program: Any) -> None:
        console.info("%s: compiled in %s", program.name,
                     console.duration(program.compile_seconds))

    programs = compile_run(run, devices, chip, network_batch=batch,
                           names=tuple(fv.programs) or None, on_compiled=done)
    mesh = run.mesh(devices)
    print(f"{topology.name}: {len(devices)} devices ({chip.name}), mesh data="
          f"{mesh.shape['data']} fsdp={mesh.shape['fsdp']}, model.dtype="
          f"{run.config.model.dtype}; per device; bounds from the compiler's counts at peak "
          "rates, not measured times")
    print(console.table(rows(programs, chip)))
    if fv.json:
        report = {"topology": topology.name, "chip": topology.chip.name,
                  "devices": len(devices), "device": dataclasses.asdict(chip),
                  "mesh": dict(mesh.shape),
                  "config": run.config.to_dict(),
                  "programs": {name: p.as_dict() for name, p in programs.items()}}
        files.write_new_json("--json", fv.json, report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the compile CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    # The deviceless compiler needs no TPU backend: keep JAX from starting one (and libtpu
    # from looking for a TPU) where the caller chose no platform.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return cli.run(__doc__, define_flags, compile_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-compile``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
