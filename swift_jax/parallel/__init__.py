"""Meshes, logical-axis sharding rules, multi-host start-up and memory accounting."""

from .distributed import DistributedArgs, initialize_distributed, is_main_process
from .memory import memory_report, per_device_bytes
from .mesh import MESH_AXES, MeshArgs, make_mesh, mesh_from_args
from .rules import DEFAULT_RULES, constrain, current_rules, logical_rules, logical_to_spec, param_sharding

__all__ = [
    "DEFAULT_RULES",
    "DistributedArgs",
    "MESH_AXES",
    "MeshArgs",
    "constrain",
    "current_rules",
    "initialize_distributed",
    "is_main_process",
    "logical_rules",
    "logical_to_spec",
    "make_mesh",
    "memory_report",
    "per_device_bytes",
    "mesh_from_args",
    "param_sharding",
]
