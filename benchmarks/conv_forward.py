"""The sampler's network forward: how much of it is convolutions, XLA's against PyTorch's.

    pip install torch==2.13.0                  # CPU build; never a dependency of sagd-jax
    python benchmarks/conv_forward.py --batch_size=16          # DDPM++ 64 ch at 32x32

Collects every convolution of the config's network forward (``Run.eps_fn`` as a sampler
calls it, traced at ``--batch_size``; the 1x1 ones run as matmuls and are not among them),
times each distinct shape alone with XLA (``conv2d_same``: ``lax.conv_general_dilated``, NHWC,
jitted) and with PyTorch's ``conv2d`` (NCHW and channels-last, ``no_grad``; the faster
counts), and sums the times weighted by how often each shape occurs: the forward's
convolution time under each library, beside the whole jitted forward. All XLA timings run
before any PyTorch one (PyTorch's OpenMP threads spin after their work and would slow XLA's).
The ratio ``XLA / PyTorch`` of the convolution totals is what the convolution kernels alone
cost ours against a PyTorch network of the same shapes (``sample_throughput.py --edm_path``).
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", 16, "Images per forward.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("repeats", 7, "Timed calls per shape (median).", lower_bound=1,
                         flag_values=fv)


def conv_shapes(fn: Any, *args: Any) -> collections.Counter:
    """``{(input shape, kernel shape): count}`` of the convolutions in ``fn(*args)``'s jaxpr,
    nested jaxprs (scans, custom VJPs, jit) included."""
    import jax

    counts: collections.Counter = collections.Counter()

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                counts[tuple(tuple(v.aval.shape) for v in eqn.invars[:2])] += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise ValueError("needs PyTorch (pip install torch==2.13.0)") from None
    import jax
    import jax.numpy as jnp

    from sagd_jax.models.conv import conv2d_same
    from sagd_jax.run import Run

    run = Run.from_config(fv.config, load_data=False, device_count=1)
    eps_fn = run.eps_fn(run.init_state(common.default_mesh()).ema_params)
    x = jax.random.normal(jax.random.key(1), (fv.batch_size, *run.image_shape))
    t = jnp.full((fv.batch_size,), 0.5)
    shapes = conv_shapes(lambda x, t: eps_fn(x, t), x, t)
    if not shapes:
        raise common.Failed("the network's forward has no convolution")
    forward = jax.jit(lambda f, x, t: f(x, t))
    jax.block_until_ready(forward(eps_fn, x, t))
    forward_s = common.median(common.timed(lambda: forward(eps_fn, x, t), fv.repeats))

    conv = jax.jit(conv2d_same)
    order = sorted(shapes.items())

    def xla_ms(x_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> float:
        a = jax.random.normal(jax.random.key(2), x_shape)
        k = jax.random.normal(jax.random.key(3), k_shape)
        jax.block_until_ready(conv(a, k))
        return 1e3 * common.median(common.timed(lambda: conv(a, k), fv.repeats))

    def torch_ms(x_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> float:
        b, h, w, c = x_shape
        kernel = torch.randn(k_shape[3], k_shape[2], k_shape[0], k_shape[1])
        images = torch.randn(b, c, h, w)
        best = float("inf")
        for layout in (torch.contiguous_format, torch.channels_last):
            inputs = images.contiguous(memory_format=layout)

            def call(inputs: Any = inputs) -> Any:
                with torch.no_grad():
                    return torch.nn.functional.conv2d(inputs, kernel, padding=k_shape[0] // 2)

            call()
            best = min(best, common.median(common.timed(call, fv.repeats)))
        return 1e3 * best

    rows = [{"input": "x".join(map(str, x_shape)), "kernel": "x".join(map(str, k_shape)),
             "count": count, "xla_ms": xla_ms(x_shape, k_shape)}
            for (x_shape, k_shape), count in order]
    torch.manual_seed(0)
    for row, ((x_shape, k_shape), _) in zip(rows, order, strict=True):
        row["torch_ms"] = torch_ms(x_shape, k_shape)
        row["ratio"] = row["xla_ms"] / row["torch_ms"]
    totals = {side: sum(r[f"{side}_ms"] * r["count"] for r in rows) for side in ("xla", "torch")}
    print(console.table(rows, ["input", "kernel", "count", "xla_ms", "torch_ms", "ratio"]))
    print(f"forward at batch {fv.batch_size}: {1e3 * forward_s:.4g} ms; its convolutions: XLA "
          f"{totals['xla']:.4g} ms ({totals['xla'] / 1e3 / forward_s:.0%} of the forward), "
          f"PyTorch {totals['torch']:.4g} ms; XLA / PyTorch {totals['xla'] / totals['torch']:.3f}")
    return {"batch_size": fv.batch_size, "forward_ms": 1e3 * forward_s, "convolutions": rows,
            "xla_conv_ms": totals["xla"], "torch_conv_ms": totals["torch"],
            "conv_share_of_forward": totals["xla"] / 1e3 / forward_s,
            "xla_over_torch": totals["xla"] / totals["torch"]}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
