"""The parts of each vision-language model (language model, vision tower, aligner) and transformers' module
names for them, in one table.

Checkpoints and transformers' modules name a VL model differently (transformers 5 loads `model.layers.*` of
a Qwen2-VL checkpoint into `model.language_model.layers.*`); PEFT adapters, ms-swift's LoRA target regexes
and `--target_regex` use the module names, the weight maps the checkpoint names. The part prefixes are
checkpoint names (and, for the vision tower and aligner, our parameter paths too), following ms-swift's
`model_arch` (`MultiModelKeys`): what `--freeze_vit` / `--freeze_aligner` / `--freeze_llm` and `--vit_lr` /
`--aligner_lr` act on.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class VisionParts:
    """Checkpoint-name prefixes of each part (the aligner sits inside the vision tower in Qwen2-VL; the
    aligner wins) and the `(regex, replacement)` renames to transformers' module names, first match only."""

    language_model: tuple[str, ...]
    vision_tower: tuple[str, ...]
    aligner: tuple[str, ...]
    module_names: tuple[tuple[str, str], ...]


_LLAVA_NAMES = (  # transformers' LLaVA-style models: everything under `model.` but the LM head
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\b", "lm_head"),
    (r"^vision_tower\.(vision_model\.)?", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)
_QWEN2_VL = VisionParts(
    language_model=("model.", "lm_head."),
    vision_tower=("visual.",),
    aligner=("visual.merger.",),
    module_names=((r"^model\.", "model.language_model."), (r"^visual\.", "model.visual.")),
)
_LLAVA = VisionParts(
    language_model=("language_model.model.", "language_model.lm_head."),
    vision_tower=("vision_tower.",),
    aligner=("multi_modal_projector.",),
    module_names=_LLAVA_NAMES,
)
VISION_PARTS: dict[str, VisionParts] = {
    "qwen2_vl": _QWEN2_VL,
    "qwen2_5_vl": _QWEN2_VL,
    "internvl": _LLAVA,
    "gemma3": _LLAVA,
}
PARTS = ("language_model", "vision_tower", "aligner")


def module_name(model_type: str, hf_name: str) -> str:
    """transformers' module (or parameter) name for a checkpoint name; unchanged for text-only models."""
    parts = VISION_PARTS.get(model_type)
    for pattern, replacement in parts.module_names if parts else ():
        renamed, hits = re.subn(pattern, replacement, hf_name, count=1)
        if hits:
            return renamed
    return hf_name


def part_of(model_type: str, name: str) -> str:
    """`aligner`, `vision_tower` or `language_model` for a checkpoint name or one of our parameter paths
    (anything outside the vision tower and aligner belongs to the language model, as in ms-swift's optimizer)."""
    parts = VISION_PARTS[model_type]
    if name.startswith(parts.aligner):
        return "aligner"
    return "vision_tower" if name.startswith(parts.vision_tower) else "language_model"
