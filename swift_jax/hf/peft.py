"""PEFT's LoRA adapter format: write ours so `peft.PeftModel.from_pretrained` loads it, read PEFT's back.

Layout: `adapter_config.json` (peft_type LORA, r, lora_alpha, target_modules, base model) and
`adapter_model.safetensors` with `base_model.model.<HF module path>.lora_A.weight` `[r, in]` and
`.lora_B.weight` `[out, r]`. Module paths come from the architecture's weight-map table (the HF name of
the layer's kernel without `.weight`), so they are the names PEFT sees in `transformers`. The stacked
adapters of scanned layers (`[layers, in, r]`) are written and read as one tensor pair per layer.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from swift_jax.models.config import to_jnp_dtype
from swift_jax.models.registry import architecture
from swift_jax.models.scan import layer_paths
from swift_jax.parallel.distributed import host_array, is_main_process
from swift_jax.tuners.lora import iter_linears, lora_layers, loraize

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def hf_module_paths(model: nnx.Module, path: str) -> list[str]:
    """The HF module paths of one of our Linear layers (e.g. `model.layers.0.self_attn.q_proj`): one, or,
    for a Linear of scanned layers (`model.stacks....`), one per stacked layer in slot order."""
    weights = architecture(model.config.model_type).weights
    modules = []
    for layer_path in layer_paths(model.config, path) or [path]:
        hit = weights.ours_to_hf(layer_path + ".kernel")
        if hit is None:
            raise ValueError(f"layer {layer_path} has no Hugging Face name in the {model.config.model_type} weight map")
        modules.append(hit[0].removesuffix(".weight"))
    return modules


def _slots(model: nnx.Module, path: str) -> list[tuple[str, int | None]]:
    """`(HF module path, slot)` of a Linear: slot None for an unstacked one, else its index on axis 0."""
    modules = hf_module_paths(model, path)
    if layer_paths(model.config, path) is None:
        return [(modules[0], None)]
    return list(zip(modules, range(len(modules))))


def save_peft_adapter(
    model: nnx.Module,
    output_dir: str,
    *,
    base_model_name_or_path: str,
    lora_dropout: float = 0.0,
    dtype: str | None = None,
) -> None:
    """Write the model's LoRA adapters in PEFT's format (one rank/alpha for all layers, as PEFT's config)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save (train with --tuner_type lora)")
    ranks = {m.lora.lora_a.shape[-1] for _, m in layers}
    scales = {m.lora.scale for _, m in layers}
    if len(ranks) != 1 or len(scales) != 1:
        raise ValueError(f"PEFT's config holds one rank and alpha; the adapters have ranks {ranks}, scales {scales}")
    rank, scale = ranks.pop(), scales.pop()
    tensors, targets = {}, set()
    for path, linear in layers:
        a_all = host_array(linear.lora.lora_a[...])  # [in, r] or [layers, in, r]; gathered from every process when sharded across hosts
        b_all = host_array(linear.lora.lora_b[...])  # [r, out] or [layers, r, out]
        out_dtype = np.dtype(to_jnp_dtype(dtype)) if dtype else a_all.dtype
        for module, slot in _slots(model, path):
            targets.add(module.split(".")[-1])
            a, b = (a_all, b_all) if slot is None else (a_all[slot], b_all[slot])
            tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T).astype(out_dtype)
            tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T).astype(out_dtype)
    if not is_main_process():  # multi-host: every process gathers, process 0 writes
        return
    os.makedirs(output_dir, exist_ok=True)
    save_file(tensors, os.path.join(output_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(rank),
        "lora_alpha": float(scale * rank),
        "lora_dropout": float(lora_dropout),
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
    }
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def read_peft_config(adapter_dir: str) -> dict[str, Any]:
    """An adapter folder's `adapter_config.json`, refused with the reason when we cannot apply it."""
    path = os.path.join(adapter_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{adapter_dir}: no {CONFIG_FILE}; expected a PEFT LoRA adapter folder")
    with open(path) as f:
        config = json.load(f)
    unsupported = {k: config.get(k) for k in ("use_dora",) if config.get(k)}
    if config.get("bias", "none") != "none":
        unsupported["bias"] = config["bias"]
    if config.get("modules_to_save"):
        unsupported["modules_to_save"] = config["modules_to_save"]
    if config.get("peft_type", "LORA") != "LORA" or unsupported:
        raise ValueError(f"{path}: only plain LoRA adapters are supported (got peft_type={config.get('peft_type')}, {unsupported})")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{path}: per-layer rank_pattern/alpha_pattern are not supported")
    return config


def _module_of(name: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `model.layers.0.self_attn.q_proj`."""
    return name.removeprefix(PREFIX).rpartition(".lora_")[0]


def _kind_of(name: str) -> str:
    """"A" or "B" for a PEFT LoRA tensor name (older files carry the adapter name: `lora_A.default.weight`)."""
    return name.rpartition(".lora_")[2].removesuffix(".default.weight").removesuffix(".weight")


def load_peft_adapter(
    model: nnx.Module, adapter_dir: str, *, dropout: float | None = None, rngs: nnx.Rngs | None = None
) -> nnx.Module:
    """Attach the adapter stored in a PEFT folder to `model` (in place) and return the model.

    Every tensor in the file must land on a layer of the model and vice versa; mismatches raise one error
    listing them with the folder's path. With scanned layers an adapted Linear carries an adapter for every
    stacked layer: layers a `layers_to_transform` adapter leaves out get a zero adapter (no effect).
    """
    from safetensors import safe_open

    config = read_peft_config(adapter_dir)
    path = os.path.join(adapter_dir, WEIGHTS_FILE)
    if not os.path.exists(path):
        found = sorted(os.listdir(adapter_dir))
        raise FileNotFoundError(f"{adapter_dir}: no {WEIGHTS_FILE} (files: {found}); only safetensors adapters are supported")
    # The adapted layers are the ones the file holds tensors for: PEFT's target_modules may be a regex.
    ours = {module: p for p, _ in iter_linears(model) for module in hf_module_paths(model, p)}
    with safe_open(path, framework="numpy") as f:
        names = list(f.keys())
    targets = sorted({ours[m] for m in (_module_of(n) for n in names) if m in ours})
    if not targets:
        raise ValueError(f"{path}: no tensor names a linear layer of this {model.config.model_type} model (first: {names[:2]})")
    rank = int(config["r"])
    loraize(
        model,
        target_modules=targets,
        rank=rank,
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout", 0.0) if dropout is None else dropout),
        rngs=rngs or nnx.Rngs(0),
    )
    by_module = {
        module: (m, slot) for p, m in iter_linears(model) if m.lora is not None for module, slot in _slots(model, p)
    }
    if config.get("use_rslora"):  # rank-stabilised LoRA scales by alpha / sqrt(r)
        for linear, _ in by_module.values():
            linear.lora.scale = float(config["lora_alpha"]) / math.sqrt(rank)
    problems, seen = [], set()
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            module, kind = _module_of(name), _kind_of(name)
            linear, slot = by_module.get(module, (None, None))
            if linear is None or kind not in ("A", "B"):
                problems.append(f"unexpected tensor {name}")
                continue
            value = f.get_tensor(name).T  # A: [in, r], B: [r, out]
            var = linear.lora.lora_a if kind == "A" else linear.lora.lora_b
            want = tuple(var.shape) if slot is None else tuple(var.shape[1:])
            if tuple(value.shape) != want:
                problems.append(f"tensor {name} has shape {list(value.T.shape)}, expected {list(want[::-1])}")
                continue
            _set_slot(var, slot, value)
            seen.add((module, kind))
    partial = config.get("layers_to_transform") is not None
    for module, (linear, slot) in sorted(by_module.items()):
        for kind in "AB":
            if (module, kind) in seen:
                continue
            if partial and slot is not None:  # a stacked layer the adapter does not cover: no update there
                var = linear.lora.lora_a if kind == "A" else linear.lora.lora_b
                _set_slot(var, slot, np.zeros(var.shape[1:], var.dtype))
            else:
                problems.append(f"missing tensor {PREFIX}{module}.lora_{kind}.weight")
    if problems:
        raise ValueError(f"{adapter_dir}: adapter does not match the model:\n  " + "\n  ".join(problems))
    return model


def _set_slot(var: nnx.Variable, slot: int | None, value: np.ndarray) -> None:
    """Write a host array into a variable (slot None) or into slice `slot` of its stacked axis 0."""
    current = var[...]
    if slot is None:
        var[...] = jax.device_put(value.astype(var.dtype), current.sharding)
    else:
        var[...] = current.at[slot].set(value.astype(var.dtype))
