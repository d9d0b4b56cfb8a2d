"""Flax NNX architectures, installed as `swift_jax.models`."""

from .config import InternVisionConfig, MlaConfig, ModelConfig, MoeConfig, RopeConfig, VisionConfig
from .decoder import CausalLM
from .registry import ARCHITECTURES, Architecture, architecture
from .weight_map import Rule, WeightMap

__all__ = [
    "MlaConfig",
    "ModelConfig",
    "MoeConfig",
    "RopeConfig",
    "VisionConfig",
    "InternVisionConfig",
    "CausalLM",
    "ARCHITECTURES",
    "Architecture",
    "architecture",
    "Rule",
    "WeightMap",
]
