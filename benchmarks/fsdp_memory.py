"""Per-device bytes of a config's train state (parameters, EMA, optimizer state) on each
``(data, fsdp)`` mesh of ``--devices`` devices, from the shardings of ``sharding.state_sharding``.

    python benchmarks/fsdp_memory.py --config=configs/cifar10_ddpmpp.py --devices=8 [--json=F]

Shapes only: nothing is allocated or compiled. Without that many devices, fake CPU devices are
used (``--xla_force_host_platform_device_count``, set before JAX starts): the shardings, and
so the bytes, are the same on real ones.
"""

from __future__ import annotations

import os
import sys
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from benchmarks import common


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("devices", 8, "Devices of the meshes (fake CPU ones if needed).",
                         lower_bound=1, flag_values=fv)


def _fake_devices(argv: list[str]) -> None:
    """Ask XLA for enough CPU devices before JAX starts (a no-op once it has)."""
    count = next((a.split("=", 1)[1] for a in argv if a.startswith("--devices=")), "8")
    if "jax" not in sys.modules and count.isdigit():
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={count}")


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    import jax

    from sagd_jax.run import Run
    from sagd_jax.sharding import make_mesh, per_device_bytes

    if jax.device_count() < fv.devices:
        raise common.Failed(f"--devices={fv.devices}: JAX has {jax.device_count()} devices "
                            "(run the script directly, so it can ask for fake ones)")
    devices = jax.devices()[:fv.devices]
    run = Run.from_config(fv.config, load_data=False, device_count=1)
    rows, whole = [], None
    fsdp = 1
    while fsdp <= fv.devices:
        mesh = make_mesh(devices, fsdp)
        size = per_device_bytes(run.abstract_state(mesh))
        whole = size if whole is None else whole
        rows.append({"data": fv.devices // fsdp, "fsdp": fsdp, "mib_per_device": size / 2**20,
                     "vs_replicated": whole / size})
        fsdp *= 2
    from sagd_jax.console import table

    print(table(rows, digits=4))
    return {"devices": fv.devices, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    _fake_devices(list(sys.argv if argv is None else argv))
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py")


if __name__ == "__main__":
    sys.exit(main())
