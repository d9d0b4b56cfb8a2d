"""Tuners as parameter-tree transforms: LoRA (and QLoRA's quantized base), full fine-tuning."""

from .lora import ALL_LINEAR, LoRA, count_params, lora_layers, lora_state_filter, loraize, merge_lora, resolve_targets

__all__ = [
    "ALL_LINEAR",
    "LoRA",
    "count_params",
    "lora_layers",
    "lora_state_filter",
    "loraize",
    "merge_lora",
    "resolve_targets",
]
