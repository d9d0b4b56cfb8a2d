"""`--adapters PATH`: attach a trained LoRA adapter (a PEFT folder, as our LoRA checkpoints also hold)."""

from __future__ import annotations

import json
import os

from flax import nnx


def load_adapter(model: nnx.Module, path: str, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Attach the LoRA adapter in `path` (PEFT format: ours from a training checkpoint, or PEFT's/ms-swift's).

    `rngs` seeds the adapter's dropout stream (training continues with the run's --seed)."""
    from swift_jax.hf.peft import CONFIG_FILE, load_peft_adapter  # lazy: hf.peft builds on tuners.lora

    if not os.path.isdir(path):
        raise FileNotFoundError(f"--adapters {path}: no such folder")
    if not os.path.exists(os.path.join(path, CONFIG_FILE)):
        raise FileNotFoundError(
            f"--adapters {path}: no {CONFIG_FILE}; expected a LoRA checkpoint (output_dir/vN-.../checkpoint-STEP) "
            "or a PEFT adapter folder"
        )
    return load_peft_adapter(model, path, rngs=rngs)


def base_model_of(path: str) -> str:
    """The base model an adapter was trained on (`base_model_name_or_path` of its adapter_config.json)."""
    from swift_jax.hf.peft import CONFIG_FILE

    if not os.path.isdir(path):
        raise FileNotFoundError(f"--adapters {path}: no such folder")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"--adapters {path}: no {CONFIG_FILE}, so the base model is unknown; pass --model")
    with open(config_path) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_path}: no base_model_name_or_path; pass --model")
    return base
