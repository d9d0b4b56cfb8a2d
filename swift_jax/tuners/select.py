"""Which parameters train: ms-swift's `--freeze_parameters*` / `--trainable_parameters*` (full fine-tuning of a
chosen part) and, beside LoRA adapters, `--modules_to_save` and `--lora_bias all`.

Rules read the Hugging Face parameter names (`model.layers.3.mlp.down_proj.weight`), as ms-swift's do on
`model.named_parameters()`. One of our variables can hold several HF tensors (the `[layers, ...]` stacks of
scanned layers, stacked experts): a variable with some trainable slices trains under a 0/1 mask on its
stacked axes (`TrainSelection.masks`, applied to gradients and updates by trainer/optim.py), so frozen
slices stay bit-identical; a variable with none is left out of the optimizer altogether.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from typing import Callable, Iterable

from typing import Any, NamedTuple

import numpy as np
from flax import nnx

# transformers' registration order inside a decoder layer (named_parameters order, for --freeze_parameters_ratio)
_LAYER_ORDER = ("self_attn", "mlp", "block_sparse_moe", "input_layernorm", "post_attention_layernorm",
                "pre_feedforward_layernorm", "post_feedforward_layernorm")
_PROJ_ORDER = ("q_", "kv_", "k_", "v_", "o_", "q_norm", "k_norm", "gate", "shared_expert", "experts", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class TrainSelection:
    """The trainable variables (`paths`, our dotted names) and the masks of partly trainable ones."""

    paths: frozenset[str]
    masks: dict[str, np.ndarray]  # our path -> 0/1 `[stacked axes..., 1, ...]` broadcastable to the variable

    def filter(self, also=None):
        """An nnx filter: the selected Params (plus whatever `also` selects, e.g. nnx.LoRAParam)."""
        chosen = lambda path, value: isinstance(value, nnx.Param) and ".".join(map(str, path)) in self.paths
        return chosen if also is None else nnx.Any(also, chosen)


class HFParam(NamedTuple):
    """One HF tensor held by one of our variables (at `index` on its stacked axes)."""

    name: str  # HF name, e.g. model.layers.3.mlp.down_proj.weight
    path: str  # our variable, e.g. model.stacks.0.layers.mlp.down_proj.kernel
    index: tuple[int, ...]
    shape: tuple[int, ...]  # our variable's shape
    rule: Any  # weight-map rule (its transform maps our layout to HF's)


def hf_parameters(model: nnx.Module) -> list[HFParam]:
    """Every base parameter's HF tensors, in transformers' `named_parameters()` order (embeddings, layers in
    order, final norm, LM head)."""
    from swift_jax.modeling import hf_slices
    from swift_jax.models.registry import architecture

    arch = architecture(model.config.model_type)
    out = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        dotted = ".".join(map(str, path))
        for index, name, rule in hf_slices(arch, model.config, dotted, var.shape) or ():
            out.append(HFParam(name, dotted, index, tuple(var.shape), rule))
    return sorted(out, key=lambda row: _order_key(row[0]))


def _order_key(name: str):
    parts = name.split(".")
    if ".layers." not in name:
        section = 0 if "embed" in name else (3 if name.startswith("lm_head") else 2)
        return (section, 0, 0, 0, name)
    i = parts.index("layers")
    rest = parts[i + 2 :]
    first = _LAYER_ORDER.index(rest[0]) if rest[0] in _LAYER_ORDER else len(_LAYER_ORDER)
    second = next((k for k, p in enumerate(_PROJ_ORDER) if len(rest) > 1 and rest[1].startswith(p)), len(_PROJ_ORDER))
    expert = [int(p) for p in rest if p.isdigit()]
    return (1, int(parts[i + 1]), first, second, (expert, rest[-1] != "weight", name))


def _hf_matcher(prefixes: Iterable[str], regex: str | None, flag: str) -> Callable[[str], bool]:
    prefixes = list(prefixes)
    try:
        pattern = re.compile(regex) if regex else None
    except re.error as e:
        raise ValueError(f"--{flag}_regex {regex!r} is not a valid regular expression: {e}") from None
    return lambda name: any(name.startswith(p) for p in prefixes) or bool(pattern and pattern.search(name))


def full_selection(model: nnx.Module, *, freeze_parameters=(), freeze_parameters_regex=None, freeze_parameters_ratio=0.0,
                   trainable_parameters=(), trainable_parameters_regex=None) -> TrainSelection:
    """ms-swift's full-tuning rules: all trainable; freeze the first `ratio` of the parameter count (in
    named_parameters order), the `freeze_parameters` prefixes and the regex matches; then make trainable the
    `trainable_parameters` prefixes and regex matches (these win). Prefixes and regexes read transformers'
    parameter names (a vision-language model's `model.language_model.*`, models/vision/parts.py)."""
    if not 0 <= freeze_parameters_ratio <= 1:
        raise ValueError(f"--freeze_parameters_ratio must be in [0, 1], got {freeze_parameters_ratio}")
    from swift_jax.models.vision.parts import module_name

    rows = hf_parameters(model)
    trainable = {name: True for name, *_ in rows}
    shown = {name: module_name(model.config.model_type, name) for name in trainable}  # transformers' names
    if freeze_parameters_ratio > 0:
        sizes = np.cumsum([int(np.prod(r.shape[len(r.index) :])) for r in rows])
        count = bisect.bisect_right(sizes.tolist(), int(sizes[-1] * freeze_parameters_ratio))
        for name, *_ in rows[:count]:
            trainable[name] = False
    frozen = _hf_matcher(freeze_parameters, freeze_parameters_regex, "freeze_parameters")
    active = _hf_matcher(trainable_parameters, trainable_parameters_regex, "trainable_parameters")
    for name in trainable:
        if frozen(shown[name]):
            trainable[name] = False
        if active(shown[name]):
            trainable[name] = True
    for flag, prefixes in (("freeze_parameters", freeze_parameters), ("trainable_parameters", trainable_parameters)):
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in shown.values())]
        if unknown:
            raise ValueError(f"--{flag} {unknown} match no parameter; names look like {shown[rows[1][0]]}")
    return _selection(rows, trainable)


def _selection(rows, trainable: dict[str, bool]) -> TrainSelection:
    by_path: dict[str, list] = {}
    for r in rows:
        by_path.setdefault(r.path, []).append((r.index, r.shape, trainable.get(r.name, False)))
    paths, masks = set(), {}
    for path, slices in by_path.items():
        flags = [t for *_, t in slices]
        if not any(flags):
            continue
        paths.add(path)
        if not all(flags):
            index, shape, _ = slices[0]
            mask = np.zeros(shape[: len(index)] + (1,) * (len(shape) - len(index)), np.float32)
            for index, _, t in slices:
                mask[index] = float(t)
            masks[path] = mask
    return TrainSelection(frozenset(paths), masks)


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]  # model.layers.3.self_attn.q_proj.bias -> model.layers.3.self_attn.q_proj


def _names_module(name: str, module: str) -> bool:
    """PEFT's modules_to_save match: the module is `module` or ends with `.module`."""
    return _module_of(name) == module or _module_of(name).endswith("." + module)


def _carried(name: str, modules_to_save, lora_bias: str) -> bool:
    """True for a base tensor that trains beside the adapters and is saved with them."""
    return any(_names_module(name, m) for m in modules_to_save) or (lora_bias == "all" and name.endswith(".bias"))


def module_selection(model: nnx.Module, modules_to_save=(), lora_bias: str = "none") -> TrainSelection:
    """PEFT's `modules_to_save` (modules whose name ends with one of the names train in full, e.g.
    `embed_tokens`, `lm_head`) and `bias="all"` (every bias trains) beside the adapters."""
    if lora_bias not in ("none", "all"):
        raise ValueError(f"--lora_bias {lora_bias!r}: expected none or all")
    rows = hf_parameters(model)
    missing = [m for m in modules_to_save if not any(_names_module(r.name, m) for r in rows)]
    if missing:
        names = sorted({_module_of(r.name).split(".")[-1] for r in rows})
        raise ValueError(f"--modules_to_save {missing} match no module of this {model.config.model_type} model "
                         f"(tied embeddings have no separate lm_head); module names are {names}")
    return _selection(rows, {r.name: _carried(r.name, modules_to_save, lora_bias) for r in rows})


def saved_parameters(model: nnx.Module, modules_to_save=(), lora_bias: str = "none") -> list[HFParam]:
    """The base tensors an adapter file carries (modules_to_save, biases with `lora_bias all`)."""
    module_selection(model, modules_to_save, lora_bias)  # validates the names
    return [r for r in hf_parameters(model) if _carried(r.name, modules_to_save, lora_bias)]
