"""The literature configs compiled for TPU slices without a TPU (``sagd_jax.aot``): per-device
HBM, whether the train step fits, the roofline bound's images/s, and the SAGD operator's cost
as the compiler counts it (FLOPs and bytes of the SAGD step over the isotropic step).

    python benchmarks/compile_table.py [--cells=NAME,...] [--out=benchmarks/results/compile]
    python benchmarks/compile_table.py --report          # the Markdown tables from the JSON

Cells are data (``CELLS``): a config, a slice, ``model.dtype`` and a noise (``sagd``: the
config's own, gamma 1; ``iso``: gamma 0, no FFT at all; ``band``: gamma 1 with a band-stop
mask, whose projection adds transforms). ``fsdp="fit"`` tries ``mesh.fsdp`` 1, 2, 4, ... and
keeps the first that fits, with every try in the JSON. Each finished cell is one JSON file in
``--out``, never rewritten: an interrupted run picks up at the next cell. Every figure is the
compiler's count or a bound from it at the chip's peak rates, not a measured time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from sagd_jax import cli, console, files  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "benchmarks", "results", "compile")

CONFIGS = {  # name: (config spec, published batch)
    "cifar10": ("configs/cifar10_ddpmpp.py", 128),
    "celeba64": ("configs/celeba64.py", 128),
    "imagenet64": ("configs/imagenet64.py", 2048),
    "ffhq64": ("configs/ffhq.py:64", 256),
    "ffhq256": ("configs/ffhq.py:256", 64),
    "dit_b2_256": ("configs/imagenet256_dit.py:b2", 256),  # 32x32x4 SD-VAE latents
    "dit_xl2_256": ("configs/imagenet256_dit.py:xl2", 256),
}
NOISES = {"sagd": {}, "iso": {"noise.gamma": 0.0, "noise.bands": ""},
          "band": {"noise.gamma": 1.0, "noise.bands": "bandstop:0.4:0.6"}}
MAX_TRIES = 3  # fsdp 1, 2, 4: each try is a compile of several minutes
SLICES = {"v5e-8": "v5e:2x4", "v5e-64": "v5e:8x8", "v5p-32": "v5p:2x2x4", "v6e-8": "v6e:2x4",
          "v5e-256": "v5e:16x16"}


def cell_name(config: str, slice_name: str, dtype: str, noise: str, fsdp: int | str) -> str:
    return f"{config}-{slice_name}-{dtype}-{noise}-fsdp{fsdp}"


def _cells() -> list[dict[str, Any]]:
    """The table's cells in the order they are compiled (about 5-10 minutes each on a 2-core
    VM): the SAGD/iso/band ratios of CIFAR-10 on v5e-8, every config's SAGD step on v5e-8
    (ImageNet 64's batch of 2048 on v5e-256), then the other slices and bfloat16."""
    def cell(config: str, slice_name: str = "v5e-8", dtype: str = "float32",
             noise: str = "sagd") -> dict[str, Any]:
        return dict(config=config, slice=slice_name, dtype=dtype, noise=noise, fsdp="fit")

    cells = [cell("cifar10", noise=noise) for noise in NOISES]
    cells += [cell(config) for config in ("celeba64", "ffhq64", "ffhq256")]
    cells += [cell("imagenet64", "v5e-256"), cell("cifar10", dtype="bfloat16")]
    cells += [cell("cifar10", slice_name) for slice_name in ("v6e-8", "v5p-32", "v5e-64")]
    cells += [cell(config, dtype="bfloat16") for config in ("celeba64", "ffhq64", "ffhq256")]
    cells += [cell(config, slice_name) for config in ("celeba64", "ffhq64", "ffhq256")
              for slice_name in ("v6e-8", "v5p-32", "v5e-64")]
    # Issue 38: DiT-B/2 and XL/2 at 256 px latents, beside the U-Nets, on v5e and v5p.
    cells += [cell(config, noise=noise) for config in ("dit_b2_256", "dit_xl2_256")
              for noise in ("sagd", "iso")]
    cells += [cell(config, "v5p-32") for config in ("dit_b2_256", "dit_xl2_256")]
    return cells


CELLS = {cell_name(c["config"], c["slice"], c["dtype"], c["noise"], c["fsdp"]): c
         for c in _cells()}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("cells", [], "Only these cells (default: every cell not yet in --out).",
                      flag_values=fv)
    flags.DEFINE_string("out", OUT, "One JSON file per cell.", flag_values=fv)
    flags.DEFINE_bool("operator", False, "Compile the SAGD operator's part of each config's "
                      "step alone (seconds each) into --out/operator-*.json and stop.",
                      flag_values=fv)
    flags.DEFINE_bool("report", False, "Print the Markdown tables of --out and stop.",
                      flag_values=fv)


def compile_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Compile the cell's train step for each fsdp tried (1, then doubling while it does not
    fit, at most ``MAX_TRIES``); the tries and the first that fits."""
    from sagd_jax.aot import DoesNotFit, compile_run
    from sagd_jax.chips import parse_topology, topology_devices
    from sagd_jax.config import load_config_file, parent_of
    from sagd_jax.run import Run

    topology = parse_topology(SLICES[cell["slice"]])
    devices = topology_devices(topology)
    chip = topology.device_chip(len(devices))
    spec, batch = CONFIGS[cell["config"]]
    tries = []
    fsdp = 1 if cell["fsdp"] == "fit" else int(cell["fsdp"])
    while fsdp <= len(devices):
        config = load_config_file(os.path.join(REPO, spec))
        for key, value in NOISES[cell["noise"]].items():
            section, leaf = parent_of(config, key)
            section[leaf] = value
        config.model.dtype = cell["dtype"]
        config.mesh.fsdp, config.train.batch_size = fsdp, batch
        run = Run.from_config(config, load_data=False, device_count=len(devices))
        started = time.perf_counter()
        try:
            programs = compile_run(run, devices, chip, names=("train_step",), refuse=False)
            result = {name: p.as_dict() for name, p in programs.items()}
            fits = all(p.fits for p in programs.values())
        except DoesNotFit as err:
            result, fits = {"refused": str(err)}, False
        tries.append({"fsdp": fsdp, "fits": fits, "seconds": time.perf_counter() - started,
                      "programs": result})
        console.info("%s fsdp=%d: %s (%s)", cell["config"], fsdp, "fits" if fits else "does "
                     "not fit", console.duration(tries[-1]["seconds"]))
        if fits or cell["fsdp"] != "fit" or len(tries) == MAX_TRIES:
            break
        fsdp *= 2
    return {"cell": cell, "topology": topology.name, "devices": len(devices),
            "device": chip.name, "hbm_bytes": chip.hbm_bytes, "batch": batch, "tries": tries}


def _operator_step(process: Any, key: Any, x0: Any, output: Any) -> Any:
    """The train step's SAGD-specific work with the network left out: the noise levels, the
    data through ``training_data``, ``x_t`` and ``eps`` (``Sigma^{1/2}``), and the loss with
    its gradient with respect to the network's output (the projector both ways)."""
    import jax

    k_time, k_noise = jax.random.split(key)
    t = process.sample_time(k_time, x0.shape[0])
    x0 = process.training_data(x0)
    x_t, eps = process.marginal_sample(k_noise, x0, t)
    loss, grad = jax.value_and_grad(lambda out: process.loss(out, x0, eps, t).mean())(output)
    return loss, x_t, grad


def operator_costs(config_name: str, slice_name: str) -> dict[str, Any]:
    """FLOPs and bytes per device of ``_operator_step`` for each noise, compiled for the
    slice at the config's published batch: what SAGD adds to the isotropic step is the
    difference with ``iso`` (whose operator is the identity: no FFT)."""
    import jax
    import jax.numpy as jnp

    from sagd_jax import program_costs
    from sagd_jax.chips import parse_topology, topology_devices
    from sagd_jax.config import load_config_file, parent_of
    from sagd_jax.models.conv import traced_for
    from sagd_jax.process import DiffusionProcess
    from sagd_jax.run import Run
    from sagd_jax.sharding import batch_sharding, make_mesh, replicated

    devices = topology_devices(parse_topology(SLICES[slice_name]))
    mesh = make_mesh(devices)
    spec, batch = CONFIGS[config_name]
    out = {}
    for noise, overrides in NOISES.items():
        config = load_config_file(os.path.join(REPO, spec))
        for key, value in overrides.items():
            section, leaf = parent_of(config, key)
            section[leaf] = value
        config.train.batch_size = batch
        # The model's grid: a latent run's operator acts on the latents, not the pixels.
        height, width, channels = Run.from_config(config, load_data=False,
                                                  device_count=len(devices)).image_shape
        process = DiffusionProcess.from_config(config, height, width)
        images = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.float32,
                                      sharding=batch_sharding(mesh))
        key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(mesh))
        program = jax.jit(lambda k, x, o, p=process: _operator_step(p, jax.random.wrap_key_data(
            k), x, o))
        with traced_for(devices[0].platform):
            lowered = program.lower(key, images, images)
        costs = program_costs.measure(lowered.compile(), len(devices), lowered)
        out[noise] = {"flops": costs.flops, "bytes_accessed": costs.bytes_accessed}
    return {"config": config_name, "slice": slice_name, "batch": batch, "noises": out,
            "command": "python benchmarks/compile_table.py --operator"}


def _load(out: str) -> dict[str, dict[str, Any]]:
    results = {}
    for name in CELLS:
        path = os.path.join(out, f"{name}.json")
        if files.exists(path):
            results[name] = files.read_json(path)
    return results


def _train(result: dict[str, Any], fsdp_index: int = -1) -> dict[str, Any] | None:
    programs = result["tries"][fsdp_index]["programs"]
    return programs.get("train_step")


def report(out: str) -> str:
    """The Markdown tables of the finished cells."""
    results = _load(out)
    rows, ratios = [], []
    for result in results.values():
        cell = result["cell"]
        first, last = result["tries"][0], result["tries"][-1]
        for label, attempt in (("1", first), ("fit", last)):
            if label == "fit" and attempt is first:
                continue
            train = attempt["programs"].get("train_step")
            row = {"config": cell["config"], "slice": cell["slice"], "dtype": cell["dtype"],
                   "noise": cell["noise"], "batch": result["batch"], "fsdp": attempt["fsdp"],
                   "fits": "yes" if attempt["fits"] else "no"}
            if train is not None:
                traffic = sum(c["bytes"] for c in train["costs"]["collectives"].values())
                row |= {"HBM GiB/device": f"{train['costs']['hbm_bytes'] / 2**30:.2f}",
                        "GFLOP/device": f"{train['costs']['flops'] / 1e9:.0f}",
                        "collectives MB": f"{traffic / 1e6:.0f}",
                        "bound img/s": f"{train['roofline']['images_per_s']:.0f}",
                        "limited by": train["roofline"]["limited_by"],
                        "compile min": f"{train['compile_seconds'] / 60:.1f}"}
            else:
                row["HBM GiB/device"] = attempt["programs"]["refused"].split("needs ")[1].split(
                    " GiB")[0] + " (compiler)"
            if cell["noise"] == "sagd":
                rows.append(row)
    for config in CONFIGS:
        found = {noise: results.get(cell_name(config, "v5e-8", "float32", noise, "fit"))
                 for noise in NOISES}
        if found["iso"] is None:
            continue
        iso = _train(found["iso"])
        for noise in ("sagd", "band"):
            if found[noise] is None or iso is None or _train(found[noise]) is None:
                continue
            if found[noise]["tries"][-1]["fsdp"] != found["iso"]["tries"][-1]["fsdp"]:
                continue
            sagd = _train(found[noise])
            ratios.append({
                "config": config, "noise": noise, "fsdp": found[noise]["tries"][-1]["fsdp"],
                "FLOPs SAGD/iso": f"{sagd['costs']['flops'] / iso['costs']['flops']:.6f}",
                "bytes SAGD/iso": f"{sagd['costs']['bytes_accessed'] / iso['costs']['bytes_accessed']:.4f}",  # noqa: E501
                "bound SAGD/iso": f"{sagd['roofline']['bound_s'] / iso['roofline']['bound_s']:.4f}",  # noqa: E501
            })
    shares = []
    for config in CONFIGS:
        slice_name = "v5e-256" if config == "imagenet64" else "v5e-8"
        path = os.path.join(out, f"operator-{config}-{slice_name}.json")
        step = results.get(cell_name(config, slice_name, "float32", "sagd", "fit"))
        step = _train(step) if step is not None else None
        if not files.exists(path) or step is None:
            continue
        noises = files.read_json(path)["noises"]
        row = {"config": config, "slice": slice_name,
               "step GFLOP/device": f"{step['costs']['flops'] / 1e9:.1f}",
               "step GB/device": f"{step['costs']['bytes_accessed'] / 1e9:.2f}"}
        for noise in ("sagd", "band"):
            flops = noises[noise]["flops"] - noises["iso"]["flops"]
            moved = noises[noise]["bytes_accessed"] - noises["iso"]["bytes_accessed"]
            row[f"{noise}: +FLOPs"] = f"{100 * flops / step['costs']['flops']:.4f}%"
            row[f"{noise}: +bytes"] = f"{100 * moved / step['costs']['bytes_accessed']:.3f}%"
        shares.append(row)
    return "\n".join(console.table(table, markdown=True) for table in (rows, ratios, shares)
                     if table)


def body(fv: flags.FlagValues) -> None:
    if fv.report:
        print(report(fv.out))
        return
    if fv.operator:
        for config in CONFIGS:
            slice_name = "v5e-256" if config == "imagenet64" else "v5e-8"
            path = os.path.join(fv.out, f"operator-{config}-{slice_name}.json")
            if not files.exists(path):
                files.write_new_json("--out", path, operator_costs(config, slice_name))
        return
    unknown = sorted(set(fv.cells) - set(CELLS))
    if unknown:
        raise ValueError(f"--cells: unknown {unknown}; known: {', '.join(CELLS)}")
    os.makedirs(fv.out, exist_ok=True)
    for name in fv.cells or CELLS:
        path = os.path.join(fv.out, f"{name}.json")
        if files.exists(path):
            continue
        console.info("cell %s", name)
        result = compile_cell(CELLS[name])
        result["command"] = f"python benchmarks/compile_table.py --cells={name}"
        files.write_new_json("--out", path, result)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return cli.run(__doc__, define_flags, body, argv)


if __name__ == "__main__":
    sys.exit(main())
