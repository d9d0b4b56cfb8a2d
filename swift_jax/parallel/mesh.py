"""Device mesh construction from flat parallelism sizes (ms-swift/Megatron style)."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def make_mesh(
    data_parallel_size: int = 1,
    fsdp_size: int = -1,
    tensor_parallel_size: int = 1,
    *,
    devices: list | None = None,
) -> Mesh:
    """A `(data, fsdp, tensor)` mesh over `devices` (default: all); one size may be -1 = the rest."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data_parallel_size, "fsdp": fsdp_size, "tensor": tensor_parallel_size}
    unknown = [k for k, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"only one parallel size may be -1, got -1 for {unknown}")
    known = math.prod(v for v in sizes.values() if v != -1)
    if unknown:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices are not divisible by the fixed parallel sizes {sizes}")
        sizes[unknown[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"parallel sizes {sizes} multiply to {math.prod(sizes.values())}, but there are {len(devices)} devices"
        )
    grid = np.asarray(devices).reshape(tuple(sizes[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES)
