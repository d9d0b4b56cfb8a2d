"""Tuners as parameter-tree transforms: LoRA (and QLoRA's quantized base), full fine-tuning."""

from .adapters import base_model_of, load_adapter
from .lora import ALL_LINEAR, LoRA, adapters_disabled, count_params, inference_view, lora_layers, lora_state_filter, loraize, merge_lora, resolve_targets

__all__ = [
    "ALL_LINEAR",
    "base_model_of",
    "load_adapter",
    "LoRA",
    "adapters_disabled",
    "count_params",
    "inference_view",
    "lora_layers",
    "lora_state_filter",
    "loraize",
    "merge_lora",
    "resolve_targets",
]
