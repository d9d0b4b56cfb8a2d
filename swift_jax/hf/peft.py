"""PEFT's LoRA adapter format: write ours so `peft.PeftModel.from_pretrained` loads it, read PEFT's back.

Layout: `adapter_config.json` (peft_type LORA, r, lora_alpha, target_modules, base model) and
`adapter_model.safetensors` with `base_model.model.<HF module path>.lora_A.weight` `[r, in]` and
`.lora_B.weight` `[out, r]`. Module paths come from the architecture's weight-map table (the HF name of
the layer's kernel without `.weight`), so they are the names PEFT sees in `transformers`.
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
from swift_jax.parallel.distributed import host_array, is_main_process
from swift_jax.tuners.lora import iter_linears, lora_layers, loraize

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def hf_module_path(model: nnx.Module, path: str) -> str:
    """The HF module path of one of our Linear layers (e.g. `model.layers.0.self_attn.q_proj`)."""
    hit = architecture(model.config.model_type).weights.ours_to_hf(path + ".kernel")
    if hit is None:
        raise ValueError(f"layer {path} has no Hugging Face name in the {model.config.model_type} weight map")
    return hit[0].removesuffix(".weight")


def save_peft_adapter(
    model: nnx.Module,
    output_dir: str,
    *,
    base_model_name_or_path: str,
    lora_dropout: float = 0.0,
    dtype: str | None = None,
) -> None:
    """Write the model's LoRA adapters in PEFT's format (one rank/alpha for all layers, as PEFT's config); a
    reward model's value head (`score`) goes in `modules_to_save` of a `SEQ_CLS` adapter."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save (train with --tuner_type lora)")
    ranks = {m.lora.lora_a.shape[1] for _, m in layers}
    scales = {m.lora.scale for _, m in layers}
    if len(ranks) != 1 or len(scales) != 1:
        raise ValueError(f"PEFT's config holds one rank and alpha; the adapters have ranks {ranks}, scales {scales}")
    rank, scale = ranks.pop(), scales.pop()
    tensors, targets = {}, set()
    for path, linear in layers:
        module = hf_module_path(model, path)
        targets.add(module.split(".")[-1])
        a = host_array(linear.lora.lora_a[...])  # [in, r]; gathered from every process when sharded across hosts
        b = host_array(linear.lora.lora_b[...])  # [r, out]
        out_dtype = np.dtype(to_jnp_dtype(dtype)) if dtype else a.dtype
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T).astype(out_dtype)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T).astype(out_dtype)
    head = getattr(model, "score", None)  # a reward model's value head (swift_jax.rlhf): PEFT's modules_to_save
    if head is not None:
        kernel = host_array(head.kernel[...])  # [embed, 1]
        tensors[f"{PREFIX}score.weight"] = np.ascontiguousarray(kernel.T).astype(np.dtype(to_jnp_dtype(dtype)) if dtype else kernel.dtype)
    if not is_main_process():  # multi-host: every process gathers, process 0 writes
        return
    os.makedirs(output_dir, exist_ok=True)
    save_file(tensors, os.path.join(output_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if head is None else "SEQ_CLS",
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
        "modules_to_save": None if head is None else ["score"],
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
    listing them with the folder's path.
    """
    from safetensors import safe_open

    config = read_peft_config(adapter_dir)
    path = os.path.join(adapter_dir, WEIGHTS_FILE)
    if not os.path.exists(path):
        found = sorted(os.listdir(adapter_dir))
        raise FileNotFoundError(f"{adapter_dir}: no {WEIGHTS_FILE} (files: {found}); only safetensors adapters are supported")
    # The adapted layers are the ones the file holds tensors for: PEFT's target_modules may be a regex.
    ours = {hf_module_path(model, p): p for p, _ in iter_linears(model)}
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
    by_module = {hf_module_path(model, p): m for p, m in iter_linears(model) if m.lora is not None}
    if config.get("use_rslora"):  # rank-stabilised LoRA scales by alpha / sqrt(r)
        for linear in by_module.values():
            linear.lora.scale = float(config["lora_alpha"]) / math.sqrt(rank)
    problems, seen = [], set()
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            module, kind = _module_of(name), _kind_of(name)
            linear = by_module.get(module)
            if linear is None or kind not in ("A", "B"):
                problems.append(f"unexpected tensor {name}")
                continue
            value = f.get_tensor(name).T  # A: [in, r], B: [r, out]
            var = linear.lora.lora_a if kind == "A" else linear.lora.lora_b
            if tuple(value.shape) != tuple(var.shape):
                problems.append(f"tensor {name} has shape {list(value.T.shape)}, expected {list(var.shape[::-1])}")
                continue
            var[...] = jax.device_put(value.astype(var.dtype), var[...].sharding)
            seen.add((module, kind))
    problems += [f"missing tensor {PREFIX}{m}.lora_{k}.weight" for m in sorted(by_module) for k in "AB" if (m, k) not in seen]
    if problems:
        raise ValueError(f"{adapter_dir}: adapter does not match the model:\n  " + "\n  ".join(problems))
    return model
