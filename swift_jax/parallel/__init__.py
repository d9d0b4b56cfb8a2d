"""Meshes and logical-axis sharding rules."""

from .rules import DEFAULT_RULES, logical_to_spec, param_sharding
from .mesh import make_mesh

__all__ = ["DEFAULT_RULES", "logical_to_spec", "param_sharding", "make_mesh"]
