"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` from flags or environment.

Precedence: explicit arguments (the trainer's ``--coordinator_address``, ``--num_processes``,
``--process_id`` flags) > the ``SAGD_COORDINATOR_ADDRESS``, ``SAGD_NUM_PROCESSES``,
``SAGD_PROCESS_ID`` environment variables > JAX's own cluster auto-detection (TPU pod slices,
SLURM with more than one task, Open MPI, ...) > a single process. Must run before anything
touches a JAX backend. On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax

ENV_PREFIX = "SAGD_"


def _cluster_detected() -> bool:
    """True inside a multi-task SLURM step, on a multi-worker TPU slice or under mpirun."""
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    mpi = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1)
    return (("SLURM_JOB_ID" in os.environ and slurm_tasks > 1) or "," in tpu_workers
            or mpi > 1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join a multi-process run if one is configured; returns True if it did.

    ``coordinator_address``: ``host:port`` of process 0; ``num_processes``: total processes;
    ``process_id``: this process's index in [0, num_processes). Either all three (after
    falling back to the environment) or none must be given.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get(f"{ENV_PREFIX}COORDINATOR_ADDRESS")
    if num_processes is None and f"{ENV_PREFIX}NUM_PROCESSES" in env:
        num_processes = int(env[f"{ENV_PREFIX}NUM_PROCESSES"])
    if process_id is None and f"{ENV_PREFIX}PROCESS_ID" in env:
        process_id = int(env[f"{ENV_PREFIX}PROCESS_ID"])
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "--coordinator_address, --num_processes and --process_id: give all three or none "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if all(given):
        if not (num_processes >= 1 and 0 <= process_id < num_processes):
            raise ValueError(f"--process_id={process_id}: must be in [0, {num_processes})")
        if num_processes == 1:
            return False
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif _cluster_detected():
        jax.distributed.initialize()
    else:
        return False
    logging.info("process %d of %d joined (coordinator %s)", jax.process_index(),
                 jax.process_count(), coordinator_address or "auto-detected")
    return True


def barrier(name: str, timeout_s: float = 600.0) -> None:
    """Wait until every process reaches ``name`` (a no-op with one process).

    Uses the coordination service's barrier, not a collective: the first collective on CPU
    builds the gloo context, which gives up after 30 s, and processes can drift further apart
    than that before it (imports and data loading on a loaded machine). Names must be unique.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the client that JAX and Orbax share

    jax_distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1e3))


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (a no-op with one process)."""
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def on_process0(action: Callable[[], Any], barrier_name: str) -> None:
    """Run ``action`` (a check, taking a lock) on process 0 only; a ``ValueError`` it raises
    is raised on every process (process 0's own line; the others say where to look)."""
    refusal = None
    if jax.process_index() == 0:
        try:
            action()
        except ValueError as err:
            refusal = err
    barrier(barrier_name)  # processes may be far apart: not the first collective's 30 s
    if any_process(refusal is not None):
        raise refusal or ValueError("refused on process 0 (see its error line)")
