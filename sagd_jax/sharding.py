"""The device mesh and the shardings used everywhere: a 2-D mesh ``(data, fsdp)``; batches split
over both axes, every array of the train state (parameters, optimizer state, EMA) sharded over
``fsdp`` along its largest divisible axis (big_vision's ``fsdp`` rule; arrays under
``FSDP_MIN_SIZE`` elements replicated). jit's partitioner inserts the all-gathers of the
parameters and the reduce-scatters of their gradients. Works unchanged on 1 or N devices and
hosts; ``fsdp = 1`` is plain data parallelism with a replicated state."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS, FSDP_AXIS = "data", "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # a batch is split over every device
FSDP_MIN_SIZE = 2**14  # elements; smaller arrays (biases, norms) stay replicated


def make_mesh(devices: list[jax.Device] | None = None, fsdp: int = 1) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all global devices), ``fsdp``
    devices per parameter shard; ``fsdp`` must divide the device count."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    if fsdp < 1 or devices.size % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp}: must divide the device count ({devices.size})")
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all devices (``data`` x ``fsdp``); other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """This process's slice ``(B / process_count, ...)`` -> the global ``(B, ...)`` array;
    a tuple of them (images and labels) -> a tuple of global arrays, each split so."""
    sharding = batch_sharding(mesh)

    def one(local: np.ndarray) -> jax.Array:
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        return jax.make_array_from_process_local_data(sharding, local, global_shape)

    return tuple(map(one, local_batch)) if isinstance(local_batch, tuple) else one(local_batch)


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


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """The ``PartitionSpec`` of an array of ``shape`` under the fsdp rule: its largest axis
    divisible by ``fsdp`` split over ``fsdp`` (ties: the last such axis), or replicated when
    ``fsdp == 1``, the array is small, or no axis divides."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return PartitionSpec()
    candidates = [i for i, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda i: (shape[i], i))
    return PartitionSpec(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def state_sharding(abstract_state: Any, mesh: Mesh) -> Any:
    """The ``NamedSharding`` of every leaf of a train state on ``mesh`` (``fsdp_spec``)."""
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)),
                        abstract_state)


def per_device_bytes(tree: Any) -> int:
    """Bytes of ``tree``'s arrays on its most loaded device (from the shardings alone)."""
    per_device: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        itemsize = np.dtype(x.dtype).itemsize
        for device, index in x.sharding.devices_indices_map(tuple(x.shape)).items():
            size = int(np.prod([len(range(*i.indices(n)))
                                for i, n in zip(index, x.shape, strict=True)], dtype=np.int64))
            per_device[device] = per_device.get(device, 0) + size * itemsize
    return max(per_device.values(), default=0)
