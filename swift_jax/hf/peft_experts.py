"""PEFT's file layout for LoRA on MoE expert parameters (`target_parameters`, PEFT's `ParamWrapper`).

For `model.layers.{i}.mlp.experts` PEFT stores per targeted parameter `lora_A.weight` `[rank x E, in]`
(rows expert-major: row `e * rank + j`) and `lora_B.weight` `[out, rank x E]` (columns rank-major:
column `j * E + e`), so that `delta[e] = scale * B_e @ A_e` in the parameter's `[out, in]` layout.
Several targeted parameters of one module nest their wrappers in transformers' registration order
(`gate_up_proj` innermost): the k-th of n adapted parameters sits under `base_layer.` repeated n-1-k
times, e.g. `...mlp.experts.base_layer.lora_A.weight` (gate_up_proj) and `...mlp.experts.lora_A.weight`
(down_proj).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from flax import nnx

from swift_jax.models.scan import stack_size
from swift_jax.parallel.distributed import host_array
from swift_jax.tuners.experts import (
    EXPERT_PARAMETERS,
    expert_lora_blocks,
    hf_expert_modules,
    iter_experts,
    loraize_experts,
    matches,
)

PREFIX = "base_model.model."
_EXPERTS = "mlp.experts"
_NESTED = ".base_layer"


def to_peft(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ours A `[E, in, r]`, B `[E, r, out]` -> PEFT's lora_A `[r x E, in]`, lora_B `[out, r x E]`."""
    experts, in_features, rank = a.shape
    peft_a = a.transpose(0, 2, 1).reshape(experts * rank, in_features)
    peft_b = b.transpose(2, 1, 0).reshape(b.shape[-1], rank * experts)
    return np.ascontiguousarray(peft_a), np.ascontiguousarray(peft_b)


def from_peft(kind: str, value: np.ndarray, experts: int) -> np.ndarray:
    """PEFT's lora_A `[r x E, in]` -> ours A `[E, in, r]`; lora_B `[out, r x E]` -> ours B `[E, r, out]`."""
    if kind == "A":
        return value.reshape(experts, -1, value.shape[1]).transpose(0, 2, 1)
    return value.reshape(value.shape[0], -1, experts).transpose(2, 1, 0)


def adapter_shapes(model: nnx.Module) -> tuple[set, set]:
    """(ranks, {(scale, use_rslora)}) of the model's expert adapters, for the one-config check."""
    adapters = [ad for _, e in expert_lora_blocks(model) for ad in e.lora.adapters().values()]
    return {ad.lora_a.shape[-1] for ad in adapters}, {(ad.scale, ad.use_rslora) for ad in adapters}


def expert_tensors(model: nnx.Module, dtype=None) -> tuple[dict[str, np.ndarray], list[str]]:
    """PEFT's tensors for every expert adapter and the config's `target_parameters`: the short names
    (`mlp.experts.gate_up_proj`) when a parameter is adapted in every MoE layer, else one full name per
    adapted layer. Stacked layers a target left out (all-zero A and B) are not written."""
    tensors, adapted = {}, {}
    for path, experts in expert_lora_blocks(model):
        modules = hf_expert_modules(model, path)
        stacked = stack_size(experts.gate_proj) is not None
        arrays = {p: (host_array(ad.lora_a[...]), host_array(ad.lora_b[...])) for p, ad in experts.lora.adapters().items()}
        for slot, module in enumerate(modules):
            pick = (lambda t: t[slot]) if stacked else (lambda t: t)
            active = [p for p, (a, b) in arrays.items() if pick(a).any() or pick(b).any()]
            for k, param in enumerate(active):
                a, b = (pick(t) for t in arrays[param])
                peft_a, peft_b = to_peft(a, b)
                where = PREFIX + module + _NESTED * (len(active) - 1 - k)
                tensors[f"{where}.lora_A.weight"] = peft_a.astype(dtype or peft_a.dtype)
                tensors[f"{where}.lora_B.weight"] = peft_b.astype(dtype or peft_b.dtype)
                adapted[(module, param)] = True
    all_modules = [m for path, _ in iter_experts(model) for m in hf_expert_modules(model, path)]
    targets = []
    for param in EXPERT_PARAMETERS:
        hit = [m for m in all_modules if (m, param) in adapted]
        if hit and len(hit) == len(all_modules):
            targets.append(f"{_EXPERTS}.{param}")
        else:
            targets += [f"{m}.{param}" for m in hit]
    return tensors, targets


def is_expert_tensor(name: str) -> bool:
    """True for a PEFT tensor of an expert parameter adapter (`...mlp.experts[.base_layer]*.lora_X.weight`)."""
    module = name.removeprefix(PREFIX).rpartition(".lora_")[0]
    while module.endswith(_NESTED):
        module = module.removesuffix(_NESTED)
    return ".lora_" in name and module.endswith("." + _EXPERTS)


def load_expert_tensors(model: nnx.Module, config: dict[str, Any], names: Sequence[str], get_tensor, *,
                        rngs: nnx.Rngs) -> list[str]:
    """Attach the expert adapters `config["target_parameters"]` describes and fill them from the file's
    tensors `names` (read with `get_tensor`); returns the problems found (unexpected, missing, misshapen)."""
    targets = config.get("target_parameters") or []
    if not targets:
        return [f"tensor {names[0]} adapts an expert parameter, but the config has no target_parameters"]
    loraize_experts(model, targets, rank=int(config["r"]), alpha=float(config["lora_alpha"]), rngs=rngs,
                    use_rslora=bool(config.get("use_rslora")))
    by_module = {}
    for path, experts in expert_lora_blocks(model):
        modules = hf_expert_modules(model, path)
        stacked = stack_size(experts.gate_proj) is not None
        for slot, module in enumerate(modules):
            by_module[module] = (experts, slot if stacked else None)
    problems, seen = [], set()
    for name in names:
        where, _, kind = name.removeprefix(PREFIX).rpartition(".lora_")
        kind = kind.removesuffix(".weight").removesuffix(".default")
        depth = 0
        while where.endswith(_NESTED):
            where, depth = where.removesuffix(_NESTED), depth + 1
        experts, slot = by_module.get(where, (None, None))
        active = [p for p in EXPERT_PARAMETERS if matches(f"{where}.{p}", targets)]
        if experts is None or kind not in "AB" or depth >= len(active):
            problems.append(f"unexpected tensor {name}")
            continue
        param = active[len(active) - 1 - depth]
        adapter = getattr(experts.lora, param)
        var = adapter.lora_a if kind == "A" else adapter.lora_b
        want = tuple(var.shape[0 if slot is None else 1 :])  # [E, in, r] / [E, r, out]
        value = np.asarray(get_tensor(name))
        num_experts = want[0]
        if value.ndim != 2 or value.size != int(np.prod(want)):
            problems.append(f"tensor {name} has shape {list(value.shape)}, which does not fit {num_experts} experts x {list(want[1:])}")
            continue
        ours = from_peft(kind, value, num_experts)
        if tuple(ours.shape) != want:
            problems.append(f"tensor {name} has shape {list(value.shape)}, expected the layout of {list(want)}")
            continue
        current = var[...]
        var[...] = current.at[slot].set(ours.astype(var.dtype)) if slot is not None else ours.astype(var.dtype)
        seen.add((where, param, kind))
    for module, (experts, _) in sorted(by_module.items(), key=lambda kv: kv[0]):
        for param in (p for p in EXPERT_PARAMETERS if matches(f"{module}.{p}", targets)):
            for kind in "AB":
                if (module, param, kind) not in seen:
                    problems.append(f"missing the lora_{kind} of {module}.{param}")
    return problems
