"""Flax NNX architectures, installed as `swift_jax.models`."""

from .config import InternVisionConfig, MlaConfig, ModelConfig, MoeConfig, Qwen2VLVisionConfig, RopeConfig
from .decoder import CausalLM, set_scan_layers
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
    "set_scan_layers",
    "ARCHITECTURES",
    "Architecture",
    "architecture",
    "Rule",
    "WeightMap",
]
