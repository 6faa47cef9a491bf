"""Kernel gradient of a 3x3 'SAME' convolution: XLA's against the shifted-matmul formulation.

    python benchmarks/conv_grad.py [--json=FILE]

Both are measured in the same process on the same inputs (median of 5 after a warm-up); the
ratio decides where ``sagd_jax.models.conv`` uses the shifted matmuls (CPU, large maps).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
from absl import flags

from benchmarks import common
from sagd_jax.models.conv import _conv, kernel_grad

SHAPES = [  # (batch, side, C_in, C_out)
    (64, 28, 32, 32), (64, 28, 64, 32), (64, 14, 32, 64), (64, 14, 128, 64), (64, 7, 128, 64),
    (32, 32, 128, 128),
]


def median_seconds(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def define_flags(fv: flags.FlagValues) -> None:
    pass  # the shared --json only


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    rows = []
    print(f"device: {jax.devices()[0].device_kind}; GFLOP/s of the kernel gradient")
    for batch, side, c_in, c_out in SHAPES:
        x = jax.random.normal(jax.random.key(0), (batch, side, side, c_in))
        dy = jax.random.normal(jax.random.key(1), (batch, side, side, c_out))
        w = jnp.zeros((3, 3, c_in, c_out))
        xla = jax.jit(lambda x, dy, w=w: jax.vjp(lambda k: _conv(x, k), w)[1](dy)[0])
        shifted = jax.jit(lambda x, dy: kernel_grad(x, dy, 3))
        flops = 2 * batch * side * side * 9 * c_in * c_out
        rate_xla = flops / median_seconds(xla, x, dy) / 1e9
        rate_shift = flops / median_seconds(shifted, x, dy) / 1e9
        rows.append(dict(batch=batch, side=side, c_in=c_in, c_out=c_out, xla_gflops=rate_xla,
                         shifted_gflops=rate_shift, ratio=rate_shift / rate_xla))
        print(f"B={batch:3d} {side:2d}x{side:<2d} {c_in:4d}->{c_out:<4d} XLA {rate_xla:6.1f}  "
              f"shifted {rate_shift:6.1f}  ratio {rate_shift / rate_xla:5.2f}")
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
