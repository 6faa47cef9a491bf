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


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    unknown = [s for s in fv.samplers if s not in NFE]
    if unknown:
        raise ValueError(f"--samplers: unknown {unknown}; known: {', '.join(NFE)}")

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
    return {"batch_size": fv.batch_size, "forward_img_per_s": forward_rate, "samplers": rows}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
