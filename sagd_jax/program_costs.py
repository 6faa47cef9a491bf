"""What a compiled XLA program costs on one device, read from the compiler: memory
(``memory_analysis``), FLOPs and bytes (``cost_analysis``), the collectives of its HLO, and
the roofline lower bound on its time on a chip.

Every figure is per device (the compiler's counts for one SPMD partition). A loop body is
counted once, as XLA's cost analysis counts it: a program whose work sits in a loop
(``train.grad_accum_steps > 1``, a sampler) costs its trip count times more.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

# ``%name = SHAPE op(`` or ``... op-start(``: the op's result SHAPE, e.g. ``f32[8,128]{1,0}``
# or a tuple ``(f32[8]{0}, bf16[4,4]{1,0})``.
_OP = re.compile(r"=\s*(?P<shape>\(?[a-z0-9]+\[[^=]*?)\s+(?P<op>" + "|".join(COLLECTIVES)
                 + r")(?P<start>-start)?\(")
_COMMENT = re.compile(r"/\*.*?\*/")
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([\d,]+)\]<=")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\].*?\{([^}]*)\}")

_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1}


def _itemsize(dtype: str) -> int:
    if dtype in _DTYPE_BYTES:
        return _DTYPE_BYTES[dtype]
    if dtype.startswith("f8") or dtype.startswith("s8") or dtype.startswith("u8"):
        return 1
    return np.dtype({"bf16": "float16", "f16": "float16", "f32": "float32", "f64": "float64",
                     "s16": "int16", "u16": "uint16", "s32": "int32", "u32": "uint32",
                     "s64": "int64", "u64": "uint64", "c64": "complex64",
                     "c128": "complex128"}.get(dtype, "float32")).itemsize


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape, an array ``f32[8,128]{1,0}`` or a tuple of them."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        total += _itemsize(dtype) * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _group_size(line: str, device_count: int) -> int:
    """Devices taking part in each group of a collective's ``replica_groups``."""
    if m := _GROUPS_LIST.search(line):
        return len([x for x in m.group(1).split(",") if x])
    if m := _GROUPS_IOTA.search(line):
        return int(m.group(1).split(",")[-1])
    if m := _GROUPS_MESH.search(line):
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        axes = re.findall(r"'([^']+)'", m.group(2))
        return math.prod(int(sizes[a]) for a in axes if a in sizes) or device_count
    return device_count


def _traffic(op: str, result_bytes: int, group: int) -> float:
    """Bytes one device sends (= receives) in a bandwidth-optimal ring over ``group``
    devices: all-gather ``out (n-1)/n``, reduce-scatter ``out (n-1)``, all-reduce
    ``2 out (n-1)/n``, all-to-all ``out (n-1)/n``, collective-permute ``out``."""
    if group <= 1:
        return 0.0
    n = group
    return {"all-gather": result_bytes * (n - 1) / n,
            "reduce-scatter": result_bytes * (n - 1),
            "all-reduce": 2 * result_bytes * (n - 1) / n,
            "all-to-all": result_bytes * (n - 1) / n,
            "collective-permute": float(result_bytes)}[op]


def collectives(hlo_text: str, device_count: int) -> dict[str, dict[str, float]]:
    """``{op: {"count", "bytes", "traffic_bytes"}}`` of the collectives in an HLO module's
    text: how many the text holds (a loop body's once), their result bytes per device, and
    the bytes each device sends for them (``_traffic``). Async pairs count once (their
    ``-start``)."""
    out = {op: {"count": 0, "bytes": 0, "traffic_bytes": 0.0} for op in COLLECTIVES}
    for line in hlo_text.splitlines():
        line = _COMMENT.sub("", line)  # a long tuple's /*index=5*/ markers
        m = _OP.search(line)
        if m is None:
            continue
        op, shape = m.group("op"), m.group("shape")
        if m.group("start") and shape.startswith("("):  # (operands, results, ...) of a start
            arrays = _ARRAY.findall(shape)
            shape = " ".join(f"{d}[{s}]" for d, s in arrays[len(arrays) // 2:])
        size = shape_bytes(shape)
        stats = out[op]
        stats["count"] += 1
        stats["bytes"] += size
        stats["traffic_bytes"] += _traffic(op, size, _group_size(line, device_count))
    return out


@dataclasses.dataclass(frozen=True)
class ProgramCosts:
    """One compiled program's costs per device. Bytes are bytes; ``flops`` and
    ``bytes_accessed`` are the compiler's counts for one execution."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    flops: float
    transcendentals: float
    bytes_accessed: float
    collectives: dict[str, dict[str, float]]
    # "compiled": the partitioned program's own counts (TPU); "unpartitioned": the program
    # before partitioning and optimisation divided by the device count (the GPU compiler
    # counts none of its own, and its library calls, cuDNN's convolutions, count as nothing).
    cost_source: str = "compiled"

    @property
    def hbm_bytes(self) -> int:
        """Peak device memory of the program: arguments, outputs not aliased to an argument
        (donated buffers count once), temporaries and code."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def collective_traffic_bytes(self) -> float:
        return sum(c["traffic_bytes"] for c in self.collectives.values())

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"hbm_bytes": self.hbm_bytes}


def _unpartitioned_cost(lowered: Any, device_count: int) -> dict[str, float]:
    """XLA's cost analysis of the lowered (global, unoptimised) program, per device."""
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    module = lowered.compiler_ir("hlo").get_hlo_module()
    cost = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
    return {key: float(cost.get(key, 0.0)) / device_count
            for key in ("flops", "transcendentals", "bytes accessed")}


def measure(compiled: Any, device_count: int, lowered: Any = None) -> ProgramCosts:
    """The ``ProgramCosts`` of a ``jax.stages.Compiled`` partitioned over ``device_count``
    devices; ``lowered`` (its ``jax.stages.Lowered``) stands in for the counts where the
    compiler gives none (GPU)."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost  # older JAX: one per module
    source = "compiled"
    if not cost and lowered is not None:
        cost, source = _unpartitioned_cost(lowered, device_count), "unpartitioned"
    cost = cost or {}
    return ProgramCosts(
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes),
        flops=float(cost.get("flops", 0.0)),
        transcendentals=float(cost.get("transcendentals", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        collectives=collectives(compiled.as_text(), device_count),
        cost_source=source,
    )


def roofline(costs: ProgramCosts, *, flops_per_s: float, hbm_bandwidth: float,
             ici_bandwidth: float, images: int | None = None) -> dict[str, Any]:
    """The roofline lower bound on one execution's time on a device: the largest of compute
    (``flops / flops_per_s``), memory (``bytes_accessed / hbm_bandwidth``) and inter-chip
    traffic (``collective traffic / ici_bandwidth``), as if the three overlapped perfectly
    and ran at peak. ``images``: the images one execution processes (global), for the
    images/s the bound allows. A bound from the compiler's counts, not a measured time."""
    times = {"compute_s": costs.flops / flops_per_s,
             "memory_s": costs.bytes_accessed / hbm_bandwidth,
             "ici_s": costs.collective_traffic_bytes / ici_bandwidth}
    bound = max(times.values())
    out: dict[str, Any] = times | {"bound_s": bound,
                                   "limited_by": max(times, key=times.get)[:-2]}
    if images is not None:
        out["images_per_s"] = images / bound if bound > 0 else math.inf
    return out
