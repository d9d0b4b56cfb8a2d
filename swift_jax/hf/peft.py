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
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from swift_jax.models.config import to_jnp_dtype
from swift_jax.models.registry import architecture
from swift_jax.modeling import HEAD_RULES
from swift_jax.models.scan import layer_paths
from swift_jax.models.vision.parts import module_name
from swift_jax.parallel.distributed import host_array, is_main_process
from swift_jax.tuners.lora import iter_linears, lora_layers, loraize

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def hf_module_paths(model: nnx.Module, path: str) -> list[str]:
    """The HF module paths of one of our Linear layers (e.g. `model.layers.0.self_attn.q_proj`): one, or,
    for a Linear of scanned layers (`model.stacks....`), one per stacked layer in slot order. These are
    transformers' module names (PEFT's), which for vision-language models differ from the checkpoint's
    (`model.language_model.layers.0...` for `model.layers.0...`, models/vision/parts.py)."""
    weights = architecture(model.config.model_type).weights
    modules = []
    for layer_path in layer_paths(model.config, path) or [path]:
        hit = weights.ours_to_hf(layer_path + ".kernel")
        if hit is None:
            raise ValueError(f"layer {layer_path} has no Hugging Face name in the {model.config.model_type} weight map")
        modules.append(module_name(model.config.model_type, hit[0].removesuffix(".weight")))
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
    modules_to_save: Sequence[str] = (),
    lora_bias: str = "none",
    target_regex: str | None = None,
) -> None:
    """Write the model's LoRA adapters in PEFT's format (one rank/alpha for all layers, as PEFT's config).

    DoRA adds `lora_magnitude_vector` `[out]` per layer; rsLoRA sets `use_rslora`; `modules_to_save` and
    `lora_bias all` add those base tensors under their HF names (a bias of an adapted layer as
    `<module>.base_layer.bias`, as PEFT names it). PiSSA/OLoRA adapters are written as PEFT's conversion
    (`path_initial_model_for_weight_conversion`) writes them: the rank-2r LoRA `[A; A0]`, `[B, -B0]`, which
    applies to the original base model. With `target_regex` the config's target_modules is the regex, and
    the stacked layers it left out (all-zero A and B) are not written. A reward model's value head (`score`)
    is written as `modules_to_save` of a `SEQ_CLS` adapter.
    """
    from .peft_experts import adapter_shapes, expert_tensors  # LoRA on MoE experts (--target_parameters)

    layers = lora_layers(model)
    expert_ranks, expert_scales = adapter_shapes(model)
    if not layers and not expert_ranks:
        raise ValueError("the model has no LoRA adapters to save (train with --tuner_type lora)")
    ranks = {m.lora.lora_a.shape[-1] for _, m in layers} | expert_ranks
    scales = {(m.lora.scale, m.lora.use_rslora) for _, m in layers} | expert_scales
    kinds = {(hasattr(m.lora, "magnitude"), hasattr(m.lora, "initial_a")) for _, m in layers} or {(False, False)}
    if len(ranks) != 1 or len(scales) != 1 or len(kinds) != 1:
        raise ValueError(f"PEFT's config holds one rank, alpha and kind; the adapters have ranks {ranks}, scales {scales}")
    rank, (scale, rslora), (dora, converted) = ranks.pop(), scales.pop(), kinds.pop()
    if dora and converted:
        raise ValueError("PEFT cannot convert a DoRA adapter initialised with PiSSA/OLoRA to plain LoRA")
    tensors, targets = {}, set()
    for path, linear in layers:
        a_all = host_array(linear.lora.lora_a[...])  # [in, r] or [layers, in, r]; gathered from every process when sharded across hosts
        b_all = host_array(linear.lora.lora_b[...])  # [r, out] or [layers, r, out]
        if converted:  # PEFT's conversion: W_res + s B A = W + s [B, -B0] [A; A0]
            a_all = np.concatenate([a_all, host_array(linear.lora.initial_a[...])], axis=-1)
            b_all = np.concatenate([b_all, -host_array(linear.lora.initial_b[...])], axis=-2)
        m_all = host_array(linear.lora.magnitude[...]) if dora else None  # [out] or [layers, out]
        out_dtype = np.dtype(to_jnp_dtype(dtype)) if dtype else a_all.dtype
        for module, slot in _slots(model, path):
            targets.add(module.split(".")[-1])
            pick = (lambda t: t) if slot is None else (lambda t: t[slot])
            if target_regex and not (pick(a_all).any() or pick(b_all).any()):
                continue  # a layer the regex leaves out
            tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(pick(a_all).T).astype(out_dtype)
            tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(pick(b_all).T).astype(out_dtype)
            if dora:
                tensors[f"{PREFIX}{module}.lora_magnitude_vector"] = np.ascontiguousarray(pick(m_all)).astype(out_dtype)
    expert_arrays, target_parameters = expert_tensors(model, np.dtype(to_jnp_dtype(dtype)) if dtype else None)
    tensors.update(expert_arrays)
    adapted = {module for p, _ in layers for module in hf_module_paths(model, p)}
    for name, array in _saved_base_tensors(model, modules_to_save, lora_bias):
        module, _, leaf = name.rpartition(".")
        key = f"{module}.base_layer.{leaf}" if module in adapted else name
        tensors[PREFIX + key] = array.astype(np.dtype(to_jnp_dtype(dtype)) if dtype else array.dtype)
    head = getattr(model, "score", None)  # a reward model's value head (swift_jax.rlhf): PEFT's modules_to_save
    if head is not None:
        kernel = host_array(head.kernel[...])  # [embed, labels]
        tensors[HEAD_TENSOR] = np.ascontiguousarray(kernel.T).astype(np.dtype(to_jnp_dtype(dtype)) if dtype else kernel.dtype)
    if not is_main_process():  # multi-host: every process gathers, process 0 writes
        return
    os.makedirs(output_dir, exist_ok=True)
    save_file(tensors, os.path.join(output_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    alpha = scale * (math.sqrt(rank) if rslora else rank)
    if converted:  # PEFT doubles r and alpha (sqrt(2) x alpha with rsLoRA) so the scale stays the same
        rank, alpha = 2 * rank, alpha * (math.sqrt(2) if rslora else 2)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if head is None else "SEQ_CLS",
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(rank),
        "lora_alpha": float(alpha),
        "lora_dropout": float(lora_dropout),
        "target_modules": target_regex or sorted(targets),
        "bias": lora_bias,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": bool(rslora),
        "use_dora": bool(dora),
        "modules_to_save": (list(modules_to_save) + (["score"] if head is not None else [])) or None,
        "layers_to_transform": None,
    }
    if target_parameters:
        config["target_parameters"] = target_parameters
    if modules_to_save and model.config.tie_word_embeddings:  # our tied LM head reads the trained embedding
        config["ensure_weight_tying"] = True
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def _saved_base_tensors(model: nnx.Module, modules_to_save: Sequence[str], lora_bias: str):
    """(HF name, HF-layout host array) of the base tensors an adapter carries (tuners/select.py)."""
    if not modules_to_save and lora_bias == "none":
        return []
    from swift_jax.models.weight_map import to_hf
    from swift_jax.tuners.select import saved_parameters

    variables = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    out = []
    for r in saved_parameters(model, modules_to_save, lora_bias):
        value = host_array(variables[r.path][...][r.index] if r.index else variables[r.path][...])
        out.append((module_name(model.config.model_type, r.name), np.ascontiguousarray(to_hf(value, r.rule.transform))))
    return out


def read_peft_config(adapter_dir: str) -> dict[str, Any]:
    """An adapter folder's `adapter_config.json`, refused with the reason when we cannot apply it."""
    path = os.path.join(adapter_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{adapter_dir}: no {CONFIG_FILE}; expected a PEFT LoRA adapter folder")
    with open(path) as f:
        config = json.load(f)
    unsupported = {}
    if config.get("bias", "none") not in ("none", "all"):
        unsupported["bias"] = config["bias"]
    if config.get("lora_bias"):
        unsupported["lora_bias"] = config["lora_bias"]
    if config.get("peft_type", "LORA") != "LORA" or unsupported:
        kind = config.get("peft_type")
        raise ValueError(f"{path}: only LoRA / DoRA / rsLoRA adapters are supported, on linear layers or expert target_parameters (got peft_type={kind}, {unsupported})")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{path}: per-layer rank_pattern/alpha_pattern are not supported")
    return config


HEAD_TENSOR = PREFIX + HEAD_RULES["score.kernel"].hf  # the value head's HF name, from the one table


def _load_value_head(model: nnx.Module, weight: np.ndarray, problems: list[str]) -> None:
    """Attach the `score` head (`[1, embed]` in PEFT's file) to `model`, or note a shape mismatch."""
    from swift_jax.tuners.value_head import attach_value_head

    attach_value_head(model, num_labels=weight.shape[0])  # [labels, embed]
    kernel = model.score.kernel
    if tuple(weight.T.shape) != tuple(kernel.shape):
        problems.append(f"tensor {HEAD_TENSOR} has shape {list(weight.shape)}, expected {list(kernel.shape[::-1])}")
        return
    kernel[...] = jax.device_put(weight.T.astype(kernel.dtype), kernel[...].sharding)


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
    from .peft_experts import is_expert_tensor, load_expert_tensors

    # The adapted layers are the ones the file holds tensors for: PEFT's target_modules may be a regex.
    ours = {module: p for p, _ in iter_linears(model) for module in hf_module_paths(model, p)}
    with safe_open(path, framework="numpy") as f:
        names = list(f.keys())
    expert_names = [n for n in names if is_expert_tensor(n)]  # target_parameters (MoE experts)
    names = [n for n in names if not is_expert_tensor(n)]
    targets = sorted({ours[m] for m in (_module_of(n) for n in names) if m in ours})
    if not targets and not expert_names:
        raise ValueError(f"{path}: no tensor names a linear layer of this {model.config.model_type} model (first: {names[:2]})")
    rank = int(config["r"])
    rngs = rngs or nnx.Rngs(0)
    if targets:
        loraize(
            model,
            target_modules=targets,
            rank=rank,
            alpha=float(config["lora_alpha"]),
            dropout=float(config.get("lora_dropout", 0.0) if dropout is None else dropout),
            rngs=rngs,
            use_rslora=bool(config.get("use_rslora")),  # rank-stabilised LoRA scales by alpha / sqrt(r)
            use_dora=bool(config.get("use_dora")),
        )
    problems = []
    if expert_names:
        with safe_open(path, framework="numpy") as f:
            problems += load_expert_tensors(model, config, expert_names, f.get_tensor, rngs=rngs)
    by_module = {
        module: (m, slot) for p, m in iter_linears(model) if m.lora is not None for module, slot in _slots(model, p)
    }
    base = _base_tensor_targets(model)
    seen = set()
    with safe_open(path, framework="numpy") as f:
        for name in names:
            if name == HEAD_TENSOR:  # a reward model's value head (PEFT's modules_to_save of a SEQ_CLS adapter)
                _load_value_head(model, f.get_tensor(name), problems)
                continue
            hf_name = name.removeprefix(PREFIX).replace(".base_layer.", ".")  # modules_to_save, bias tensors
            if ".lora_" not in name and hf_name in base:
                problems += _set_base_tensor(base[hf_name], name, f.get_tensor(name))
                continue
            module, kind = _module_of(name), _kind_of(name)
            linear, slot = by_module.get(module, (None, None))
            kinds = ("A", "B", "magnitude_vector") if config.get("use_dora") else ("A", "B")
            if linear is None or kind not in kinds:
                problems.append(f"unexpected tensor {name}")
                continue
            if kind == "magnitude_vector":
                var, value = linear.lora.magnitude, f.get_tensor(name)  # [out]
                want = tuple(var.shape) if slot is None else tuple(var.shape[1:])
                if tuple(value.shape) != want:
                    problems.append(f"tensor {name} has shape {list(value.shape)}, expected {list(want)}")
                else:
                    _set_slot(var, slot, value)
                continue
            value = f.get_tensor(name).T  # A: [in, r], B: [r, out]
            var = linear.lora.lora_a if kind == "A" else linear.lora.lora_b
            want = tuple(var.shape) if slot is None else tuple(var.shape[1:])
            if tuple(value.shape) != want:
                problems.append(f"tensor {name} has shape {list(value.T.shape)}, expected {list(want[::-1])}")
                continue
            _set_slot(var, slot, value)
            seen.add((module, kind))
    # layers_to_transform or a regex may leave out some layers of a stack
    partial = config.get("layers_to_transform") is not None or isinstance(config.get("target_modules"), str)
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


def _base_tensor_targets(model: nnx.Module) -> dict[str, tuple]:
    """HF name -> (variable, HFParam) of every base tensor (for modules_to_save and bias tensors)."""
    from swift_jax.tuners.select import hf_parameters

    variables = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return {module_name(model.config.model_type, r.name): (variables[r.path], r) for r in hf_parameters(model)}


def _set_base_tensor(target: tuple, name: str, value: np.ndarray) -> list[str]:
    """Write a base tensor an adapter carries (modules_to_save, bias) into our variable; problems found."""
    from swift_jax.models.weight_map import to_ours

    var, r = target
    ours = to_ours(value, r.rule.transform)
    want = tuple(r.shape[len(r.index) :])
    if tuple(ours.shape) != want:
        return [f"tensor {name} has shape {list(value.shape)}, which does not fit {r.path} {list(want)}"]
    _set_slot(var, r.index or None, ours)
    return []


def _set_slot(var: nnx.Variable, slot: int | tuple[int, ...] | None, value: np.ndarray) -> None:
    """Write a host array into a variable (slot None) or into slice `slot` of its stacked axes."""
    current = var[...]
    if slot is None:
        var[...] = jax.device_put(value.astype(var.dtype), current.sharding)
    else:
        var[...] = current.at[slot].set(value.astype(var.dtype))
