"""Write a quantized model in the compressed-tensors layout (what vLLM serves and `transformers` loads).

Layout, as compressed-tensors 0.20 reads it (`compressors/pack_quantized`, `naive_quantized`):
- int4 / int8 (`format: pack-quantized`), per quantized Linear `X`:
  `X.weight_packed` int32 `[out, in * bits / 32]` (values + 2^(bits-1), packed little-end first, 32 / bits
  per word), `X.weight_scale` `[out, in / group_size]` (model dtype), `X.weight_shape` int64 `[2]`;
  symmetric, so no zero point. `strategy` is `group`, or `channel` for `--group_size -1`.
- fp8 (`format: float-quantized`): `X.weight` float8_e4m3fn `[out, in]`, `X.weight_scale` `[out, 1]`.
- MoE experts are written as HF's per-expert modules (`...mlp.experts.{j}.gate_proj.weight_packed`, ...),
  each quantized like a Linear; transformers dequantizes them and fuses them into its stacked experts.
Every other tensor is written as `save_pretrained` writes it, and `config.json` gets a
`quantization_config` whose `ignore` lists the layers left in full precision (`lm_head`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import jax
import numpy as np
from flax import nnx

from swift_jax.hf.safetensors_io import write_sharded_safetensors
from swift_jax.models.config import to_jnp_dtype
from swift_jax.models.layers import Buffer
from swift_jax.models.registry import architecture
from swift_jax.models.weight_map import to_hf
from swift_jax.quant.base import NOT_QUANTIZED, QuantizedWeight, QuantSpec

CT_VERSION = "0.20.0"  # the compressed-tensors release whose layout this writer follows


def pack_int32(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack signed `bits`-bit values `[rows, cols]` (int8) into int32 `[rows, ceil(cols * bits / 32)]`.

    Value `j` of a row lands at bit `j * bits` of the row's bit stream (little end first), offset by
    `2^(bits-1)` to be unsigned: compressed-tensors' `pack_to_int32` for bits that divide 32.
    """
    if 32 % bits:
        raise ValueError(f"packing supports bit widths that divide 32, got {bits}")
    per_word = 32 // bits
    rows, cols = q.shape
    u = (q.astype(np.int64) + (1 << (bits - 1))).astype(np.uint64)
    u = np.pad(u, ((0, 0), (0, (-cols) % per_word))).reshape(rows, -1, per_word)
    words = np.bitwise_or.reduce(u << (np.arange(per_word, dtype=np.uint64) * bits), axis=-1)
    return words.astype(np.uint32).view(np.int32)


def unpack_int32(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Inverse of `pack_int32`: int8 `[rows, cols]`."""
    per_word = 32 // bits
    u = packed.view(np.uint32).astype(np.uint64)[..., None] >> (np.arange(per_word, dtype=np.uint64) * bits)
    u = (u & ((1 << bits) - 1)).reshape(packed.shape[0], -1)[:, :cols]
    return (u.astype(np.int64) - (1 << (bits - 1))).astype(np.int8)


def quantization_config(spec: QuantSpec) -> dict:
    """The `quantization_config` block of config.json for a weight-only spec (compressed-tensors schema)."""
    if spec.is_float:
        fmt = "float-quantized"
        weights = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": "channel", "dynamic": False}
    else:
        fmt = "pack-quantized"
        grouped = spec.group_size != -1
        weights = {
            "num_bits": spec.bits,
            "type": "int",
            "symmetric": True,
            "group_size": spec.group_size if grouped else None,
            "strategy": "group" if grouped else "channel",
            "dynamic": False,
        }
    group = {"targets": ["Linear"], "weights": weights, "input_activations": None, "output_activations": None, "format": fmt}
    return {
        "config_groups": {"group_0": group},
        "format": fmt,
        "global_compression_ratio": None,
        "ignore": list(NOT_QUANTIZED),
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_VERSION,
    }


def _quantized_tensors(base: str, qw: QuantizedWeight, spec: QuantSpec, dtype: np.dtype) -> dict[str, np.ndarray]:
    """HF tensors of one quantized Linear `base` (e.g. `model.layers.0.mlp.up_proj`), HF layout `[out, in]`."""
    scale = np.ascontiguousarray(qw.scale.T).astype(dtype)  # [out, groups]
    if spec.is_float:
        weight = np.ascontiguousarray(qw.qvalue.T).view(np.uint8)  # float8 bits; retagged F8_E4M3 after writing
        return {f"{base}.weight": weight, f"{base}.weight_scale": scale}
    q = np.ascontiguousarray(qw.qvalue.T)  # [out, in] int8
    return {
        f"{base}.weight_packed": pack_int32(q, spec.bits),
        f"{base}.weight_scale": scale,
        f"{base}.weight_shape": np.asarray(q.shape, np.int64),
    }


def _retag_float8(path: str, names: set[str]) -> None:
    """Rewrite a safetensors header so `names` (written as U8) read as F8_E4M3 (numpy has no float8)."""
    with open(path, "rb") as src:
        (size,) = struct.unpack("<Q", src.read(8))
        header = json.loads(src.read(size))
        hits = names & set(header)
        if not hits:
            return
        for name in hits:
            header[name]["dtype"] = "F8_E4M3"
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)
        with open(path + ".tmp", "wb") as dst:
            dst.write(struct.pack("<Q", len(raw)) + raw)
            shutil.copyfileobj(src, dst, 1 << 24)  # tensor data unchanged (offsets are relative to it)
    os.replace(path + ".tmp", path)


def save_compressed(
    model: nnx.Module,
    quantized: dict[str, QuantizedWeight],
    spec: QuantSpec,
    output_dir: str,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
) -> list[str]:
    """Write `model` with the `quantized` layers (module path -> values/scales) in compressed-tensors form.

    `dtype` is the dtype of unquantized tensors and scales (default: the model's parameter dtype).
    Returns the safetensors file names.
    """
    from swift_jax.quant.experts import split_key

    cfg = model.config
    arch = architecture(cfg.model_type)
    out_dtype = np.dtype(to_jnp_dtype(dtype or cfg.param_dtype))
    variables = nnx.state(model, nnx.Any(nnx.Param, Buffer))  # buffers: deepseek_v3's router correction bias
    params = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(variables)}
    entries: list[tuple[str, int]] = []
    producers: dict[str, object] = {}
    float8_names: set[str] = set()
    for path, var in params.items():
        hit = arch.weights.ours_to_hf(path)
        if hit is None:
            raise ValueError(f"parameter {path} has no Hugging Face name; merge LoRA adapters before exporting")
        name, rule = hit
        if rule.stack:  # stacked experts: HF's per-expert tensors, each quantized as a Linear's
            for j, expert_name in enumerate(rule.stacked_names(name, var.shape[0])):
                qw = quantized.get(f"{path}[{j}]")
                tensors = {expert_name: (var, rule, j)} if qw is None else _quantized_tensors(expert_name.removesuffix(".weight"), qw, spec, out_dtype)
                for tname, source in tensors.items():
                    entries.append((tname, source.nbytes if isinstance(source, np.ndarray) else int(np.prod(var.shape[1:])) * out_dtype.itemsize))
                    producers[tname] = source
                if qw is not None and spec.is_float:
                    float8_names.add(expert_name)
            continue
        module = path.removesuffix(".kernel")
        if path.endswith(".kernel") and module in quantized:
            tensors = _quantized_tensors(name.removesuffix(".weight"), quantized[module], spec, out_dtype)
            for tname, array in tensors.items():
                entries.append((tname, array.nbytes))
                producers[tname] = array
            if spec.is_float:
                float8_names.add(name)
            continue
        entries.append((name, int(np.prod(var.shape)) * out_dtype.itemsize))
        producers[name] = (var, rule)
    missing = sorted({(split_key(k) or (k, 0))[0] for k in quantized} - {p.removesuffix(".kernel") for p in params})
    if missing:
        raise ValueError(f"quantized layers {missing} are not in the model")

    def fetch(name: str) -> np.ndarray:
        source = producers.pop(name)
        if isinstance(source, np.ndarray):
            return source
        var, rule, *slot = source  # slot: one expert of a stacked weight
        value = np.asarray(jax.device_get(var[...][slot[0]] if slot else var[...]))
        return to_hf(value, rule.transform).astype(out_dtype)

    os.makedirs(output_dir, exist_ok=True)
    files = write_sharded_safetensors(output_dir, entries, fetch, max_shard_size=max_shard_size)
    if float8_names:
        for file in files:
            _retag_float8(os.path.join(output_dir, file), float8_names)
    hf = cfg.hf_config
    hf.pop("torch_dtype", None)
    hf["dtype"] = str(out_dtype)
    hf["quantization_config"] = quantization_config(spec)
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    return files

