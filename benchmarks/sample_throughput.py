"""Sampling throughput against the network's forward rate divided by network evaluations.

    python benchmarks/sample_throughput.py                      # DDPM++ 64 ch, batch 64
    python benchmarks/sample_throughput.py --config=configs/quickstart.py --batch_size=256

For each sampler: img/s of the whole jitted sampler (prior draw, lax loop, final denoise) at
``--batch_size``, and the bound ``forward img/s / NFE`` where the forward rate is the network as
an ``eps_fn`` (eps conversion included) at the same batch, measured in the same run, and NFE
is the sampler's number of network evaluations (``steps``; Heun ``2 steps - 1``). The ratio
``sampler / bound`` is what the sampler's own arithmetic (spectral operators, updates, the
loop) leaves of the network's rate. Parameters are a fresh init (speed does not depend on
their values); ``--workdir`` samples a trained run's EMA parameters instead (its latest
checkpoint, ``Run.from_workdir(...).restore``).

``--edm_path=DIR`` (a checkout of github.com/NVlabs/edm; ``pip install torch==2.13.0 click
tqdm``, never dependencies of sagd-jax) adds the peer: EDM's own Heun sampler (``edm_sampler``
of its ``generate.py``, deterministic, EDM's grid) on EDM's preconditioned ``SongUNet`` built
with this config's DDPM++ settings (fresh init, fp32, NCHW), at the same batch and the same
network evaluations as our ``ode_heun`` (``num_steps = --steps``: ``2 steps - 1`` each). The two
alternate ``--repeats`` times in one process; printed: img/s of each and ours over EDM's.
"""

from __future__ import annotations

import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console

NFE = {"ddpm": lambda s: s, "ddim": lambda s: s, "ode_euler": lambda s: s,
       "ode_heun": lambda s: 2 * s - 1, "sde": lambda s: s, "dpmpp_2m": lambda s: s}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", 64, "Images per sampler call.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("steps", 10, "Sampler iterations.", lower_bound=1, flag_values=fv)
    flags.DEFINE_list("samplers", ["ddim", "ode_heun"], f"Samplers ({', '.join(NFE)}).",
                      flag_values=fv)
    flags.DEFINE_integer("repeats", 3, "Timed calls (median).", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("workdir", None, "A training workdir: sample its EMA parameters "
                        "(latest checkpoint) instead of a fresh init.", flag_values=fv)
    flags.DEFINE_string("edm_path", None, "A checkout of github.com/NVlabs/edm: also time "
                        "EDM's Heun sampler at equal network evaluations.", flag_values=fv)


def load_edm_sampler(edm_path: str) -> tuple[Any, Any]:
    """``(EDMPrecond, edm_sampler)`` from a checkout of github.com/NVlabs/edm."""
    from benchmarks.peer_edm import load_song_unet

    load_song_unet(edm_path)  # checks the checkout and puts it on the path
    try:
        from generate import edm_sampler
        from training.networks import EDMPrecond
    except ImportError as err:
        raise ValueError(f"--edm_path={edm_path}: EDM's generate.py needs {err.name} "
                         "(pip install click tqdm)") from None
    return EDMPrecond, edm_sampler


def edm_peer(fv: flags.FlagValues, run: Any, ours: Any) -> dict[str, Any]:
    """Ours (``ours()``: one ode_heun call) against EDM's Heun sampler, alternating."""
    import time

    import jax
    import torch

    from benchmarks.peer_edm import song_unet_kwargs

    precond, edm_sampler = load_edm_sampler(fv.edm_path)
    torch.manual_seed(0)
    kwargs = song_unet_kwargs(run.config)
    size, channels = kwargs.pop("img_resolution"), kwargs.pop("in_channels")
    kwargs.pop("out_channels")
    net = precond(img_resolution=size, img_channels=channels, model_type="SongUNet",
                  **kwargs).eval()
    latents = torch.randn(fv.batch_size, channels, size, size)

    def theirs() -> None:
        with torch.no_grad():
            edm_sampler(net, latents, num_steps=fv.steps)

    theirs()  # warm-up (first-call allocations), as ours was compiled before
    times: dict[str, list[float]] = {"ours": [], "edm": []}
    for _ in range(fv.repeats):
        for name, call in (("ours", lambda: jax.block_until_ready(ours())), ("edm", theirs)):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    rates = {k: fv.batch_size / common.median(v) for k, v in times.items()}
    nfe = NFE["ode_heun"](fv.steps)
    print(f"ode_heun vs EDM's Heun sampler, {nfe} network evaluations, batch {fv.batch_size}: "
          f"ours {rates['ours']:.4g} img/s, EDM {rates['edm']:.4g} img/s, "
          f"ratio {rates['ours'] / rates['edm']:.3f}", flush=True)
    return {"nfe": nfe, "ours_img_per_s": rates["ours"], "edm_img_per_s": rates["edm"],
            "ratio": rates["ours"] / rates["edm"]}


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    unknown = [s for s in fv.samplers if s not in NFE]
    if unknown:
        raise ValueError(f"--samplers: unknown {unknown}; known: {', '.join(NFE)}")
    if fv.edm_path:
        load_edm_sampler(fv.edm_path)  # bad input: one line before anything is measured

    import jax
    import jax.numpy as jnp

    from sagd_jax.run import Run
    from sagd_jax.samplers import get_sampler

    mesh = common.default_mesh()
    if fv.workdir:
        run = Run.from_workdir(fv.workdir, load_data=False)
        params = run.restore(mesh).ema_params
    else:
        run = Run.from_config(fv.config, load_data=False, device_count=1)
        params = run.init_state(mesh).ema_params
    eps_fn = run.eps_fn(params)
    full_shape = (fv.batch_size, *run.image_shape)
    x = jax.random.normal(jax.random.key(1), full_shape)
    t = jnp.full((fv.batch_size,), 0.5)
    forward = jax.jit(lambda f, x, t: f(x, t))
    jax.block_until_ready(forward(eps_fn, x, t))
    forward_rate = fv.batch_size / common.median(common.timed(lambda: forward(eps_fn, x, t),
                                                              fv.repeats))
    print(f"network forward at batch {fv.batch_size}: {forward_rate:.4g} img/s", flush=True)
    rows: list[dict[str, Any]] = []
    for name in fv.samplers:
        sampler = get_sampler(name)

        def draw(name: str = name, sampler: Any = sampler) -> Any:
            return sampler(run.process, eps_fn, jax.random.key(2), full_shape, fv.steps)

        jax.block_until_ready(draw())
        rate = fv.batch_size / common.median(common.timed(draw, fv.repeats))
        nfe = NFE[name](fv.steps)
        bound = forward_rate / nfe
        rows.append({"sampler": name, "steps": fv.steps, "nfe": nfe, "img_per_s": rate,
                     "bound_img_per_s": bound, "ratio": rate / bound})
        print(f"{name}: {rate:.4g} img/s, bound {bound:.4g}, ratio {rate / bound:.3f}",
              flush=True)
    print(console.table(rows, ["sampler", "steps", "nfe", "img_per_s", "bound_img_per_s",
                               "ratio"]))
    result = {"batch_size": fv.batch_size, "forward_img_per_s": forward_rate, "samplers": rows}
    if fv.edm_path:
        heun = get_sampler("ode_heun")
        result["edm_peer"] = edm_peer(fv, run, lambda: heun(
            run.process, eps_fn, jax.random.key(2), full_shape, fv.steps))
    return result


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
