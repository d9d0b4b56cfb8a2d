"""Flax NNX architectures, installed as `swift_jax.models`."""

from .config import MlaConfig, ModelConfig, MoeConfig, RopeConfig
from .decoder import CausalLM, set_scan_layers
from .registry import ARCHITECTURES, Architecture, architecture
from .weight_map import Rule, WeightMap

__all__ = [
    "MlaConfig",
    "ModelConfig",
    "MoeConfig",
    "RopeConfig",
    "CausalLM",
    "set_scan_layers",
    "ARCHITECTURES",
    "Architecture",
    "architecture",
    "Rule",
    "WeightMap",
]
