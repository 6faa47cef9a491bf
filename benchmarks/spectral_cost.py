"""Cost of the spectral covariance operator over image sizes and batches.

    python benchmarks/spectral_cost.py
    python benchmarks/spectral_cost.py --sizes 32,64,128,256 --batches 16,64 --channels 3

For each (batch, size), all jitted and timed in the same run (median of ``--repeats``):
* ``sqrt``: ``Sigma^{1/2} x`` (rfft2, multiply, irfft2) on an existing array;
* ``sample``: ``Sigma^{1/2} eps`` with fresh white noise (what the train step does);
* ``normal``: white-noise generation alone (``jax.random.normal``);
* ``copy``: ``2 * x``, one read and one write of the array: the memory-bandwidth floor of any
  operator that reads its input and writes its output once.
``ns_per_px_log`` is the ``sqrt`` time per pixel per log2(pixels per image): flat across sizes
when the cost grows as N log N. The noise weights come from the config's ``noise`` section.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common
from sagd_jax import console


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("sizes", ["32", "64", "128", "256"], "Image sides.", flag_values=fv)
    flags.DEFINE_list("batches", ["16", "64"], "Batch sizes.", flag_values=fv)
    flags.DEFINE_integer("channels", 3, "Channels.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("repeats", 7, "Timed calls per operator (median).", lower_bound=1,
                         flag_values=fv)


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    config = fv.config
    sizes = common.int_list(fv.sizes, "--sizes")
    batches = common.int_list(fv.batches, "--batches")

    import jax
    import jax.numpy as jnp

    from sagd_jax.spectral import SpectralCovariance

    rows: list[dict[str, Any]] = []
    for size in sizes:
        cov = SpectralCovariance.from_config(config.noise, size, size)
        for batch in batches:
            shape = (batch, size, size, fv.channels)
            x = jax.random.normal(jax.random.key(0), shape)
            key = jax.random.key(1)
            ops = {
                "sqrt": (jax.jit(lambda c, x: c.sqrt(x)), (cov, x)),
                "sample": (jax.jit(lambda c, k, shape=shape: c.sample(k, shape)), (cov, key)),
                "normal": (jax.jit(lambda k, shape=shape: jax.random.normal(k, shape)), (key,)),
                "copy": (jax.jit(lambda x: 2.0 * x), (x,)),
            }
            seconds = {}
            for name, (fn, fn_args) in ops.items():
                jax.block_until_ready(fn(*fn_args))
                seconds[name] = common.median(common.timed(lambda fn=fn, a=fn_args: fn(*a),
                                                           fv.repeats))
            pixels = batch * size * size * fv.channels
            nbytes = 2 * pixels * jnp.dtype(jnp.float32).itemsize
            rows.append({
                "batch": batch, "size": size, **{f"{k}_ms": 1e3 * v for k, v in seconds.items()},
                "sample_over_normal": seconds["sample"] / seconds["normal"],
                "sqrt_over_copy": seconds["sqrt"] / seconds["copy"],
                "copy_gb_per_s": nbytes / seconds["copy"] / 1e9,
                "ns_per_px_log": 1e9 * seconds["sqrt"] / pixels / math.log2(size * size),
            })
            print(f"batch {batch} {size}x{size}: sqrt {1e3 * seconds['sqrt']:.3g} ms, "
                  f"sample/normal {rows[-1]['sample_over_normal']:.3g}, "
                  f"sqrt/copy {rows[-1]['sqrt_over_copy']:.3g}", flush=True)
    print(console.table(rows, list(rows[0])))
    return {"channels": fv.channels, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
