"""Sampling throughput against the network's forward rate divided by network evaluations.

    python benchmarks/sample_throughput.py                      # DDPM++ 64 ch, batch 64
    python benchmarks/sample_throughput.py --config configs/quickstart.py --batch_size 256

For each sampler: img/s of the whole jitted sampler (prior draw, lax loop, final denoise) at
``--batch_size``, and the bound ``forward img/s / NFE`` where the forward rate is the network as
an ``eps_fn`` (eps conversion included) at the same batch, measured in the same run, and NFE
is the sampler's number of network evaluations (``steps``; Heun ``2 steps - 1``). The ratio
``sampler / bound`` is what the sampler's own arithmetic (spectral operators, updates, the
loop) leaves of the network's rate. Parameters are a fresh init (speed does not depend on
their values); ``--workdir`` samples a trained run's EMA parameters instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check_args, make_parser, median, print_table, timed, write_json  # noqa: E402

NFE = {"ddpm": lambda s: s, "ddim": lambda s: s, "ode_euler": lambda s: s,
       "ode_heun": lambda s: 2 * s - 1, "sde": lambda s: s}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, "configs/cifar10_ddpmpp.py:cpu")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="sampler iterations")
    parser.add_argument("--samplers", default="ddim,ode_heun", help="comma-separated names")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="a training workdir (EMA parameters)")
    args = parser.parse_args(argv)
    config = check_args(args)
    samplers = args.samplers.split(",")
    unknown = [s for s in samplers if s not in NFE]
    if unknown:
        raise SystemExit(f"--samplers: unknown {unknown}; known: {', '.join(NFE)}")
    if args.batch_size < 1 or args.steps < 1:
        raise SystemExit("--batch_size and --steps: must be >= 1")

    import jax
    import jax.numpy as jnp

    from sagd_jax.samplers import get_sampler
    from sagd_jax.train.step import make_eps_fn

    if args.workdir:
        from sagd_jax.train.loop import load_state

        run, state = load_state(args.workdir)
        model, process, params = run.model, run.process, state.ema_params
        shape = run.source.image_shape
    else:
        from train_throughput import step_parts

        from sagd_jax.train.state import init_params

        try:
            model, _, process, shape = step_parts(config)
        except ValueError as err:
            raise SystemExit(f"--config={args.config}: {err}") from None
        params = init_params(model, jax.random.key(0), shape)
    eps_fn = make_eps_fn(model, process, params)
    full_shape = (args.batch_size, *shape)
    x = jax.random.normal(jax.random.key(1), full_shape)
    t = jnp.full((args.batch_size,), 0.5)
    forward = jax.jit(lambda f, x, t: f(x, t))
    jax.block_until_ready(forward(eps_fn, x, t))
    forward_rate = args.batch_size / median(timed(lambda: forward(eps_fn, x, t), args.repeats))
    print(f"network forward at batch {args.batch_size}: {forward_rate:.4g} img/s", flush=True)
    rows: list[dict[str, Any]] = []
    for name in samplers:
        sampler = get_sampler(name)

        def draw(name: str = name, sampler: Any = sampler) -> Any:
            return sampler(process, eps_fn, jax.random.key(2), full_shape, args.steps)

        jax.block_until_ready(draw())
        rate = args.batch_size / median(timed(draw, args.repeats))
        nfe = NFE[name](args.steps)
        bound = forward_rate / nfe
        rows.append({"sampler": name, "steps": args.steps, "nfe": nfe, "img_per_s": rate,
                     "bound_img_per_s": bound, "ratio": rate / bound})
        print(f"{name}: {rate:.4g} img/s, bound {bound:.4g}, ratio {rate / bound:.3f}",
              flush=True)
    print_table(rows, ["sampler", "steps", "nfe", "img_per_s", "bound_img_per_s", "ratio"])
    write_json(args, {"batch_size": args.batch_size, "forward_img_per_s": forward_rate,
                      "samplers": rows}, __file__, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
