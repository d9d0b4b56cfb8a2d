"""ms-swift's training controls for vision-language models: `--freeze_llm` / `--freeze_vit` /
`--freeze_aligner`, `--vit_lr` / `--aligner_lr` and `--vit_gradient_checkpointing`.

As ms-swift 4.6 applies them (`TunerArguments._init_multimodal_full`, `get_multimodal_target_regex`,
`MultimodalOptimizerCallback`, `get_modules_to_not_convert`):
- full fine-tuning freezes the frozen parts' parameters; an unfrozen aligner trains even inside a frozen
  vision tower (Qwen2-VL's merger);
- LoRA `all-linear` adapts the linear layers of the unfrozen parts only (by default the language model),
  never the LM head, through a regex over transformers' module names that PEFT reads back the same;
- QLoRA leaves the vision tower and aligner unquantized;
- the vision tower and aligner parameters learn at `vit_lr` / `aligner_lr` (default: the learning rate).
The parts come from `models/vision/parts.py`.
"""

from __future__ import annotations

import re
from typing import Callable

from flax import nnx

from swift_jax.models.vision.parts import PARTS, VISION_PARTS, module_name, part_of

from .lora import EXCLUDED_FROM_ALL_LINEAR, iter_linears


def is_multimodal(model: nnx.Module) -> bool:
    """True for a model with a vision tower (a `models/vision/parts.py` row)."""
    return model.config.model_type in VISION_PARTS and model.config.vision is not None


def check_controls(model: nnx.Module, tuner) -> None:
    """Refuse multimodal controls given for a text-only model (naming the flag)."""
    if is_multimodal(model):
        return
    given = dict(freeze_llm=tuner.freeze_llm, freeze_vit=not tuner.freeze_vit, freeze_aligner=not tuner.freeze_aligner,
                 vit_lr=tuner.vit_lr is not None, aligner_lr=tuner.aligner_lr is not None)
    wrong = [flag for flag, set_ in given.items() if set_]
    if wrong:
        kind = model.config.model_type
        raise ValueError(f"--{wrong[0]} applies to vision-language models; {kind} has no vision tower")


def _frozen(tuner) -> dict[str, bool]:
    return {"language_model": tuner.freeze_llm, "vision_tower": tuner.freeze_vit, "aligner": tuner.freeze_aligner}


def full_freeze_rules(model: nnx.Module, tuner) -> tuple[list[str], list[str]]:
    """`(freeze_parameters, trainable_parameters)` prefixes of transformers' parameter names that full
    fine-tuning adds (ms-swift's `_init_multimodal_full`: frozen parts are frozen, an unfrozen aligner is
    made trainable); prefixes the model lacks (`lm_head.` of tied embeddings) are left out."""
    from .select import hf_parameters

    kind = model.config.model_type
    names = [module_name(kind, row.name) for row in hf_parameters(model)]
    parts, frozen = VISION_PARTS[kind], _frozen(tuner)
    present = lambda prefixes: [  # noqa: E731
        module_name(kind, p) for p in prefixes if any(n.startswith(module_name(kind, p)) for n in names)
    ]
    freeze = present([p for part in PARTS if frozen[part] for p in getattr(parts, part)])
    return freeze, ([] if tuner.freeze_aligner else present(parts.aligner))


def _leaf(relative: str) -> str:
    """The regex of a module name's last two parts below its part's prefix (`self_attn\\.q_proj`, `mlp\\.0`,
    `linear_1`): two parts tell a linear layer from other modules of the same last name (Qwen2-VL's
    `attn.proj` from its `patch_embed.proj` conv)."""
    names = relative.split(".")[-2:]
    return r"\.".join(r"\d+" if n.isdigit() and i < len(names) - 1 else re.escape(n) for i, n in enumerate(names))


def lora_target_regex(model: nnx.Module, tuner) -> str:
    """ms-swift's `all-linear` for a VL model: a regex over transformers' module names that matches the
    linear layers (LM head excluded) of each unfrozen part, in ms-swift's form
    `^(<part prefix>(?=\\.).*\\.(<layer names>)|...)$`, an aligner inside the vision tower left to its own flag."""
    from swift_jax.hf.peft import hf_module_paths  # lazy: hf.peft builds on the tuners

    kind, frozen, parts = model.config.model_type, _frozen(tuner), VISION_PARTS[model.config.model_type]
    prefixes = {  # runtime prefix -> its part, the aligner's first (it may sit inside the vision tower)
        module_name(kind, p).rstrip("."): part for part in reversed(PARTS) for p in getattr(parts, part)
    }
    leaves: dict[str, set[str]] = {prefix: set() for prefix in prefixes}
    for path, _ in iter_linears(model):
        if path.split(".")[-1] in EXCLUDED_FROM_ALL_LINEAR:
            continue
        module, part = hf_module_paths(model, path)[0], part_of(kind, path)
        prefix = next(p for p, owner in prefixes.items() if owner == part and module.startswith(p + "."))
        leaves[prefix].add(_leaf(module[len(prefix) + 1 :]))
    aligners = [re.escape(p) for p, part in prefixes.items() if part == "aligner"]
    alternatives = []
    for prefix, part in prefixes.items():
        if frozen[part] or not leaves[prefix]:
            continue
        nested = [a for a in aligners if part == "vision_tower" and a.startswith(re.escape(prefix) + r"\.")]
        reject = f"(?!({'|'.join(nested)}))" if nested else ""
        alternatives.append(rf"{reject}{re.escape(prefix)}(?=\.).*\.({'|'.join(sorted(leaves[prefix]))})")
    if not alternatives:
        raise ValueError(f"--freeze_llm {tuner.freeze_llm} --freeze_vit {tuner.freeze_vit} --freeze_aligner "
                         f"{tuner.freeze_aligner} leave no linear layer for LoRA all-linear to adapt")
    return f"^({'|'.join(alternatives)})$"


def quantization_skip(model: nnx.Module) -> Callable[[str], bool]:
    """For QLoRA: True for our Linear paths that stay unquantized (the vision tower and aligner)."""
    if not is_multimodal(model):
        return lambda path: False
    kind = model.config.model_type
    return lambda path: part_of(kind, path) != "language_model"


def lr_factors(model: nnx.Module, learning_rate: float, tuner) -> Callable[[str], float | None] | None:
    """Per-parameter learning-rate multiples for the optimizer (`scale_by_path` on our dotted names):
    `vit_lr / learning_rate` on the vision tower, `aligner_lr / learning_rate` on the aligner; None when
    neither is set."""
    if tuner.vit_lr is None and tuner.aligner_lr is None:
        return None
    kind = model.config.model_type
    factor = {"vision_tower": tuner.vit_lr, "aligner": tuner.aligner_lr}
    factor = {part: None if lr is None else lr / learning_rate for part, lr in factor.items()}
    return lambda name: factor.get(part_of(kind, name))


def set_vision_remat(model: nnx.Module, remat: bool) -> None:
    """`--vit_gradient_checkpointing`: recompute each vision-tower layer in the backward pass."""
    if is_multimodal(model):
        tower = next(getattr(model, name) for name in _TOWERS if hasattr(model, name))
        tower.remat = bool(remat)


_TOWERS = ("visual", "vision_tower")  # the vision tower module: Qwen2-VL's, InternVL's and Gemma 3's
