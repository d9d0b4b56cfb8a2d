"""Device meshes from flat parallelism sizes (ms-swift / Megatron style arguments).

The mesh axes, outermost first, are `data`, `fsdp`, `expert`, `sequence`, `tensor`: the innermost axes get
the fastest interconnect (`jax.make_mesh` lays devices out by the physical topology on TPU and GPU).
"""

from __future__ import annotations

import dataclasses
import math

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "expert", "sequence", "tensor")


@dataclasses.dataclass
class MeshArgs:
    """How to lay the devices out. -1 on one size means "all remaining devices"."""

    data_parallel_size: int = 1
    """Pure data parallelism: replicas of the (FSDP-sharded) model."""
    fsdp_size: int = -1
    """Fully-sharded data parallelism: parameters and optimizer state sharded over these devices."""
    tensor_parallel_size: int = 1
    """Tensor parallelism: heads and MLP columns split over these devices."""
    expert_parallel_size: int = 1
    """Expert parallelism for Mixture-of-Experts layers."""
    sequence_parallel_size: int = 1
    """Sequence (context) parallelism axis."""

    def sizes(self) -> dict[str, int]:
        return {
            "data": self.data_parallel_size,
            "fsdp": self.fsdp_size,
            "expert": self.expert_parallel_size,
            "sequence": self.sequence_parallel_size,
            "tensor": self.tensor_parallel_size,
        }


_FLAG = {
    "data": "data_parallel_size",
    "fsdp": "fsdp_size",
    "expert": "expert_parallel_size",
    "sequence": "sequence_parallel_size",
    "tensor": "tensor_parallel_size",
}


def resolve_sizes(sizes: dict[str, int], num_devices: int) -> dict[str, int]:
    """Fill in the one -1 size and check that the sizes multiply to the device count."""
    sizes = dict(sizes)
    bad = [f"--{_FLAG[k]}={v}" for k, v in sizes.items() if v == 0 or v < -1]
    if bad:
        raise ValueError(f"parallel sizes must be positive or -1, got {', '.join(bad)}")
    wildcard = [k for k, v in sizes.items() if v == -1]
    if len(wildcard) > 1:
        raise ValueError(f"only one parallel size may be -1, got -1 for {', '.join('--' + _FLAG[k] for k in wildcard)}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if wildcard:
        if num_devices % fixed:
            raise ValueError(
                f"{num_devices} devices cannot be split: the other parallel sizes multiply to {fixed}, "
                f"which does not divide {num_devices}"
            )
        sizes[wildcard[0]] = num_devices // fixed
    total = math.prod(sizes.values())
    if total != num_devices:
        given = " x ".join(f"--{_FLAG[k]}={v}" for k, v in sizes.items() if v != 1)
        raise ValueError(
            f"parallel sizes {given or '1'} multiply to {total}, but there are {num_devices} devices; "
            "set one size to -1 to use all remaining devices"
        )
    return sizes


def make_mesh(
    data_parallel_size: int = 1,
    fsdp_size: int = -1,
    tensor_parallel_size: int = 1,
    expert_parallel_size: int = 1,
    sequence_parallel_size: int = 1,
    *,
    devices: list | None = None,
) -> Mesh:
    """A mesh with axes `MESH_AXES` over `devices` (default: all devices of all processes).

    Default: pure FSDP over every device. Sizes that do not multiply to the device count raise an error
    that says so.
    """
    args = MeshArgs(data_parallel_size, fsdp_size, tensor_parallel_size, expert_parallel_size, sequence_parallel_size)
    return mesh_from_args(args, devices=devices)


def mesh_from_args(args: MeshArgs, *, devices: list | None = None) -> Mesh:
    """The mesh for a `MeshArgs`; axis types are Auto so XLA propagates shardings (jax >= 0.7 defaults differ)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_sizes(args.sizes(), len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
