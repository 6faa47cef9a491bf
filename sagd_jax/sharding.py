"""The device mesh and the shardings used everywhere: batches split over ``data``, state
replicated (room for an ``fsdp`` axis later). Works unchanged on 1 or N devices and hosts."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices with the axis ``data``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's slice ``(B / process_count, ...)`` -> the global ``(B, ...)`` array."""
    sharding = batch_sharding(mesh)
    global_shape = (local_batch.shape[0] * jax.process_count(), *local_batch.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local_batch, global_shape)


def prefetch_to_device(host_batches: Iterable[np.ndarray], mesh: Mesh, size: int = 2
                       ) -> Iterator[jax.Array]:
    """``global_batch`` of each host batch, ``size`` ahead: the next batches are already on
    their devices (transfers are asynchronous) while the current step runs."""
    host_batches = iter(host_batches)
    queue: collections.deque[jax.Array] = collections.deque()

    def enqueue(count: int) -> None:
        for batch in itertools.islice(host_batches, count):
            queue.append(global_batch(batch, mesh))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)  # when the next batch is asked for: after this step was dispatched


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` replicated on the mesh."""
    return jax.device_put(tree, replicated(mesh))


def state_sharding(abstract_state: Any, mesh: Mesh) -> Any:
    """The sharding of every leaf of a train state on ``mesh``: replicated (parameters,
    optimizer state and EMA are small next to the activations; an ``fsdp`` axis comes later)."""
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
