"""The device mesh: five named axes (data, fsdp, expert, sequence, tensor), sizes from the config.

Axis order puts `tensor` innermost: `mesh_utils.create_device_mesh` assigns the last axes to the
most tightly connected devices (same host / ICI neighbours), which is where the per-layer
collectives of tensor parallelism belong; data parallelism (one gradient all-reduce per step)
is outermost, so in multi-host runs each process holds a contiguous block of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import ml_collections as mlc
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "expert", "sequence", "tensor")


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves a single -1 to the devices left over; checks the product equals `num_devices`."""
    sizes = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh axes {sizes}: {num_devices} devices are not divisible by {fixed}")
        sizes[free[0]] = num_devices // fixed
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise ValueError(f"mesh axes {sizes} use {int(np.prod(list(sizes.values())))} devices, "
                         f"but {num_devices} are available")
    return sizes


def make_mesh(parallel: mlc.ConfigDict | Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `devices` (default: all) with axes `MESH_AXES`; `parallel` holds the axis sizes
    (`train_config.parallel`), -1 = the rest.

    Axis types are `Auto`: shardings are propagated by the compiler from the rules' constraints
    (jax.make_mesh now defaults to `Explicit` sharding-in-types, which the model does not use).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(dict(parallel), len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        # Topologies mesh_utils does not know (e.g. CPU); keep process-major device order so
        # each process owns a contiguous block of the leading (data) axis.
        devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
