"""Flax NNX architectures, installed as `swift_jax.models`."""

from .config import InternVisionConfig, MlaConfig, ModelConfig, MoeConfig, Qwen2VLVisionConfig, RopeConfig
from .decoder import CausalLM
from .registry import ARCHITECTURES, Architecture, architecture
from .weight_map import Rule, WeightMap

__all__ = [
    "MlaConfig",
    "ModelConfig",
    "MoeConfig",
    "RopeConfig",
    "Qwen2VLVisionConfig",
    "InternVisionConfig",
    "CausalLM",
    "ARCHITECTURES",
    "Architecture",
    "architecture",
    "Rule",
    "WeightMap",
]
