"""Meshes, logical-axis sharding rules, multi-host start-up and memory accounting."""

import importlib

_EXPORTS = {
    "DistributedArgs": ".distributed", "initialize_distributed": ".distributed", "is_main_process": ".distributed",
    "host_array": ".distributed", "memory_report": ".memory", "per_device_bytes": ".memory", "MESH_AXES": ".mesh",
    "MeshArgs": ".mesh", "make_mesh": ".mesh", "mesh_from_args": ".mesh", "DEFAULT_RULES": ".rules", "constrain": ".rules",
    "current_rules": ".rules", "devices_for": ".rules", "logical_rules": ".rules", "logical_to_spec": ".rules", "param_sharding": ".rules",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Public names imported on first use, so argument parsing does not import flax."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
