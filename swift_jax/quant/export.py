"""Write a quantized model in the compressed-tensors `pack-quantized` format (vLLM, transformers).

Every Linear but the LM head is stored as `<module>.weight_packed` (int32 words holding 32 / bits codes
each, offset by 2^(bits-1), packed along the input dimension), `<module>.weight_scale` `[out, in / group]`
and `<module>.weight_shape`; everything else is written as is. `config.json` gains the
`quantization_config` that compressed-tensors reads.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from swift_jax.hf.safetensors_io import write_sharded_safetensors
from swift_jax.models.registry import architecture
from swift_jax.tuners.lora import EXCLUDED_FROM_ALL_LINEAR

from .rtn import quantize_rtn

METHODS = ("rtn",)


def pack_int32(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack int codes `[out, in]` into int32 words along the input dimension (compressed-tensors' layout)."""
    per_word = 32 // bits
    out_features, in_features = q.shape
    if in_features % per_word:
        raise ValueError(f"input dimension {in_features} is not a multiple of {per_word} ({bits}-bit packing)")
    unsigned = (q.astype(np.int64) + (1 << (bits - 1))).astype(np.uint32).reshape(out_features, -1, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, None, :]
    words = np.bitwise_or.reduce(unsigned << shifts, axis=-1)
    return words.astype(np.uint32).view(np.int32)


def quantization_config(bits: int, group_size: int) -> dict:
    """The `quantization_config` block of config.json for symmetric group-wise int weights."""
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": bits,
                    "type": "int",
                    "symmetric": True,
                    "strategy": "group",
                    "group_size": group_size,
                    "dynamic": False,
                },
                "input_activations": None,
                "output_activations": None,
            }
        },
        "ignore": list(EXCLUDED_FROM_ALL_LINEAR),
        "kv_cache_scheme": None,
    }


def save_quantized(model: nnx.Module, output_dir: str, *, method: str, bits: int, group_size: int, max_shard_size: str = "5GB") -> None:
    """Quantize every Linear but the LM head and write config.json + safetensors in compressed-tensors format."""
    if method not in METHODS:
        raise ValueError(f"--quant_method {method!r}: expected one of {METHODS}")
    if bits not in (4, 8):
        raise ValueError(f"--quant_bits {bits}: expected 4 or 8")
    cfg = model.config
    weights = architecture(cfg.model_type).weights
    entries, sources = [], {}
    for path, var in ((".".join(map(str, p)), v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))):
        name, rule = weights.ours_to_hf(path)
        module = name.removesuffix(".weight")
        quantize = path.endswith(".kernel") and module.split(".")[-1] not in EXCLUDED_FROM_ALL_LINEAR
        if not quantize:
            entries.append((name, int(np.prod(var.shape)) * np.dtype(var.dtype).itemsize))
            sources[name] = ("plain", var, rule)
            continue
        in_features, out_features = var.shape
        entries += [
            (f"{module}.weight_packed", out_features * in_features * bits // 8),
            (f"{module}.weight_scale", out_features * (in_features // group_size) * np.dtype(var.dtype).itemsize),
            (f"{module}.weight_shape", 16),
        ]
        for suffix in ("weight_packed", "weight_scale", "weight_shape"):
            sources[f"{module}.{suffix}"] = (suffix, var, None)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def fetch(name: str) -> np.ndarray:
        kind, var, rule = sources[name]
        host = np.asarray(jax.device_get(var[...]))
        if kind == "plain":
            return np.ascontiguousarray(host.T) if rule.transform == "transpose" else host
        if kind == "weight_shape":
            return np.asarray(host.T.shape, np.int64)
        if id(var) not in cache:  # packed and scale come from one quantization
            q, scale = quantize_rtn(host.T, bits=bits, group_size=group_size)
            cache.clear()
            cache[id(var)] = (np.asarray(q), np.asarray(scale))
        q, scale = cache[id(var)]
        return pack_int32(q, bits) if kind == "weight_packed" else scale.astype(host.dtype)

    write_sharded_safetensors(output_dir, entries, fetch, max_shard_size=max_shard_size)
    hf = cfg.hf_config
    hf.pop("torch_dtype", None)
    hf["dtype"] = str(np.dtype(cfg.params_dtype))
    hf["quantization_config"] = quantization_config(bits, group_size)
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
