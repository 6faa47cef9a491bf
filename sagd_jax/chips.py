"""Accelerator chips and slice topologies, for compiling a run for hardware this machine lacks.

``CHIPS`` is the one table of chip figures (per chip, from the public pages named beside each
entry). ``parse_topology("v5e:4x4")`` reads a slice name; ``topology_devices`` returns its
devices through a deviceless compiler: libtpu's for TPUs (``pip install libtpu``), the CUDA
plugin's for GPUs (``jax[cuda12-local]``, with the target description ``gpu_target_config``
builds from the chip's published figures). A ``Mesh`` over them compiles with
``jit(...).lower(...).compile()`` and no accelerator attached.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import jax

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip. Bandwidths in bytes/s, compute in FLOP/s, memory in bytes.

    ``f32_flops``: float32 matrix products at JAX's default precision, which on TPU is one
    bfloat16 pass with float32 accumulation (docs.jax.dev/en/latest/201/precision.html): the
    MXU's bfloat16 rate; ``precision="highest"`` takes about six passes.
    ``ici_bandwidth``: bidirectional inter-chip bandwidth of all of one chip's links.
    ``tpu_name``: the platform name libtpu's topologies take; ``accelerator_type`` the
    ``TPU_ACCELERATOR_TYPE`` prefix, whose suffix counts cores (``cores_per_chip``)."""

    name: str
    hbm_bytes: float
    bf16_flops: float
    f32_flops: float
    hbm_bandwidth: float
    ici_bandwidth: float
    tpu_name: str  # "" for a GPU
    accelerator_type: str
    cores_per_chip: int
    dims: int  # torus dimensions of a slice name: 2 (v5e, v6e), 3 (v4, v5p), 1 (GPUs)

    @property
    def platform(self) -> str:
        return "tpu" if self.tpu_name else "cuda"

    def share(self, devices_per_chip: int) -> Chip:
        """The figures of one of ``devices_per_chip`` devices on a chip (libtpu's deviceless
        v4 slices have a device per TensorCore, two a chip: each gets half)."""
        if devices_per_chip == 1:
            return self
        n = devices_per_chip
        return dataclasses.replace(
            self, name=f"{self.name} (1/{n} chip)", hbm_bytes=self.hbm_bytes / n,
            bf16_flops=self.bf16_flops / n, f32_flops=self.f32_flops / n,
            hbm_bandwidth=self.hbm_bandwidth / n, ici_bandwidth=self.ici_bandwidth / n)


CHIPS: dict[str, Chip] = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s.
    # ICI from jax-ml.github.io/scaling-book/tpus: 6 links of 4.5e10 B/s each way.
    "v4": Chip("v4", 32 * GiB, 275e12, 275e12, 1200e9, 6 * 2 * 45e9, "v4", "v4", 2, 3),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s, ICI 400 GB/s
    # bidirectional per chip.
    "v5e": Chip("v5e", 16 * GiB, 197e12, 197e12, 819e9, 400e9, "v5e", "v5litepod", 1, 2),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, ICI
    # 1200 GB/s bidirectional per chip.
    "v5p": Chip("v5p", 95 * GiB, 459e12, 459e12, 2765e9, 1200e9, "v5p", "v5p", 2, 3),
    # cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s, ICI 800 GB/s
    # bidirectional per chip.
    "v6e": Chip("v6e", 32e9, 918e12, 918e12, 1638e9, 800e9, "v6e", "v6e", 1, 2),
    # NVIDIA H100 SXM5 datasheet (nvidia.com/en-us/data-center/h100): 80 GB HBM3 at 3.35 TB/s,
    # dense BF16 989 TFLOP/s, dense TF32 495 TFLOP/s (JAX's default precision for float32
    # matrix products on this GPU), NVLink 900 GB/s (bidirectional, within a node of 8).
    "h100": Chip("h100", 80e9, 989e12, 495e12, 3.35e12, 900e9, "", "", 1, 1),
}

GPUS_PER_HOST = 8

# Published figures of the H100 SXM5 that XLA's GPU compiler reads from its target
# description (stream_executor.GpuTargetConfigProto, text format). The CUDA limits are those
# of compute capability 9.0 (CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability"); the rest from NVIDIA's H100 datasheet and architecture whitepaper.
# Without the first four the compiler fails; without the others it still compiles, but
# reads them as 0 and sizes its buffers differently.
_H100_DEVICE_INFO = {
    "threads_per_warp": 32,
    "block_dim_limit_x": 2**31 - 1, "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
    "shared_memory_per_block_optin": 227 * 1024,  # 228 KiB a multiprocessor, 1 KiB reserved
    "shared_memory_per_block": 48 * 1024,
    "shared_memory_per_core": 228 * 1024,
    "registers_per_block_limit": 65536, "registers_per_core_limit": 65536,
    "threads_per_block_limit": 1024, "threads_per_core_limit": 2048,
    "thread_dim_limit_x": 1024, "thread_dim_limit_y": 1024, "thread_dim_limit_z": 64,
    "core_count": 132,  # streaming multiprocessors
    "fpus_per_core": 128,  # FP32 lanes a multiprocessor
    "clock_rate_ghz": 1.98,  # 67 TFLOP/s FP32 = 2 x 132 x 128 x clock
    "memory_bandwidth": 3_350_000_000_000,
    "device_memory_size": 80_000_000_000,
    "l2_cache_size": 50 * 2**20,
}


def gpu_target_config() -> str:
    """The H100 SXM5's ``GpuTargetConfigProto`` in protobuf text format, for the CUDA
    plugin's deviceless topology (compute capability 9.0 with Hopper's sm_90a features)."""
    fields = "".join(f"  {key}: {value}\n" for key, value in _H100_DEVICE_INFO.items())
    return ('platform_name: "CUDA"\ndevice_description_str: "NVIDIA H100 80GB HBM3"\n'
            "gpu_device_info {\n" + fields + "  cuda_compute_capability {\n    major: 9\n"
            "    feature_extension: ACCELERATED_FEATURES\n  }\n}\n")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice: ``name`` as given (``v5e:4x4``), its ``chip`` and torus ``shape``."""

    name: str
    chip: Chip
    shape: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)

    def device_chip(self, device_count: int) -> Chip:
        """The figures of one of the slice's ``device_count`` devices (``Chip.share``)."""
        return self.chip.share(max(device_count // self.num_chips, 1))

    @property
    def gpu_topology_name(self) -> str:
        """``partitions x hosts x devices a host`` of the CUDA plugin's topology."""
        count = self.num_chips
        per_host = min(count, GPUS_PER_HOST)
        return f"1x{count // per_host}x{per_host}"

    @property
    def tpu_topology_name(self) -> str:
        return f"{self.chip.tpu_name}:{'x'.join(map(str, self.shape))}"

    @property
    def accelerator_type(self) -> str:
        """``TPU_ACCELERATOR_TYPE`` of the slice (``v5litepod-16``, ``v4-16``)."""
        return f"{self.chip.accelerator_type}-{self.num_chips * self.chip.cores_per_chip}"


def parse_topology(name: str) -> Topology:
    """``CHIP:AxB[xC]`` (TPU) or ``GPU:N`` -> ``Topology``; a one-line ``ValueError`` naming
    ``--topology`` for a name that does not parse or a chip the table lacks."""
    match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", name.strip().lower())
    if match is None:
        raise ValueError(f"--topology={name!r}: expected CHIP:AxB or CHIP:AxBxC (v5e:4x4, "
                         f"v4:2x2x2) or GPU:N (h100:8); chips: {', '.join(CHIPS)}")
    chip_name, shape_text = match.groups()
    if chip_name not in CHIPS:
        raise ValueError(f"--topology={name!r}: unknown chip {chip_name!r}; known: "
                         f"{', '.join(CHIPS)}")
    chip = CHIPS[chip_name]
    shape = tuple(int(s) for s in shape_text.split("x"))
    if len(shape) != chip.dims or min(shape) < 1:
        example = "x".join(["2"] * chip.dims)
        raise ValueError(f"--topology={name!r}: a {chip_name} slice has {chip.dims} positive "
                         f"dimension{'s' if chip.dims > 1 else ''} ({chip_name}:{example})")
    if chip.platform == "cuda" and shape[0] > GPUS_PER_HOST and shape[0] % GPUS_PER_HOST:
        raise ValueError(f"--topology={name!r}: more than {GPUS_PER_HOST} GPUs come in whole "
                         f"hosts of {GPUS_PER_HOST}")
    return Topology(name, chip, shape)


def topology_devices(topology: Topology) -> list[jax.Device]:
    """The slice's devices from libtpu's deviceless topology (no TPU needed): one a chip, or
    one a TensorCore on v4 (``Chip.share`` gives a device's figures); a one-line
    ``ValueError`` if libtpu is not installed or refuses the shape. Sets the environment that
    keeps libtpu from probing for a TPU (kept where already set)."""
    from jax.experimental import topologies

    if topology.chip.platform == "cuda":
        return _gpu_devices(topology)
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # No TPU is opened: let several compiles run at once (libtpu's lockfile is for devices).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"--topology={topology.name!r}: needs libtpu's compiler: pip install "
                         "'sagd-jax[tpu]' (or jax[tpu])") from None
    options = {}
    if topology.shape[0] < 2 or topology.shape[1] < 2:  # smaller than a host's 2x2 chips
        options["chips_per_host_bounds"] = (min(topology.shape[0], 2),
                                            min(topology.shape[1], 2), 1)
    try:
        desc = topologies.get_topology_desc(platform="tpu",
                                            topology_name=topology.tpu_topology_name,
                                            **options)
    except Exception as err:  # noqa: BLE001 - libtpu's errors are of several kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--topology={topology.name!r}: {reason}") from None
    return list(desc.devices)


def _gpu_devices(topology: Topology) -> list[jax.Device]:
    """The GPUs of the CUDA plugin's deviceless topology (``jax[cuda12-local]``: the plugin
    without NVIDIA's libraries; compiling still runs the CUDA toolkit's ``ptxas``)."""
    from jax.experimental import topologies

    if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        raise ValueError(f"--topology={topology.name!r}: needs the CUDA plugin's compiler: "
                         "pip install 'sagd-jax[gpu]' (or jax[cuda12-local])") from None
    try:
        desc = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(),
                                            topology=topology.gpu_topology_name)
    except Exception as err:  # noqa: BLE001 - the plugin's errors are of several kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--topology={topology.name!r}: {reason}") from None
    return list(desc.devices)
