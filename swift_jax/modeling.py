"""Public model API: `load_model`, `init_model`, `save_pretrained`, `load_tokenizer`.

Loading builds the model abstractly (`nnx.eval_shape`), decides each parameter's sharding from its
logical axes, and fills every device shard straight from the safetensors slice it owns, so host memory
stays near one tensor whatever the model size. Saving gathers one tensor at a time into shards.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from swift_jax.hf.hub import resolve_model_dir
from swift_jax.hf.safetensors_io import SafetensorsReader, write_sharded_safetensors
from swift_jax.models.config import ModelConfig, dtype_name, to_jnp_dtype
from swift_jax.models.layers import Buffer
from swift_jax.models.registry import Architecture, architecture
from swift_jax.models.scan import layer_paths
from swift_jax.models.weight_map import Rule, hf_index_to_ours, to_hf, to_ours
from swift_jax.parallel.distributed import host_array, is_main_process
from swift_jax.parallel.rules import param_sharding

# Checkpoint entries that carry no learned state (old rotary caches) and are skipped silently.
_IGNORED_HF_NAMES = (re.compile(r".*\.rotary_emb\.inv_freq\Z"),)


def read_hf_config(model_dir: str) -> dict[str, Any]:
    """The full HF config of a model folder as a dict (class defaults filled in by transformers)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a Hugging Face model folder")
    with open(path) as f:
        raw = json.load(f)
    if "model_type" not in raw:
        raise ValueError(f"{path}: no 'model_type' field")
    architecture(raw["model_type"], source=path)  # unknown model types fail here, listing supported ones
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).to_dict()


def model_config(
    hf_config: dict[str, Any], *, dtype: Any = None, param_dtype: Any = None, scan_layers: bool = True
) -> tuple[ModelConfig, Architecture]:
    """`ModelConfig` and architecture for an HF config dict.

    `dtype` is the compute dtype and, unless `param_dtype` is given, also the parameters' (default: the
    checkpoint's). Full fine-tuning in bf16 passes `param_dtype="float32"` for float32 master weights.
    `scan_layers` stacks runs of identical layers and runs them under `jax.lax.scan` (models/scan.py).
    """
    arch = architecture(hf_config.get("model_type", "<missing>"))
    cfg = arch.config_from_hf(hf_config, dtype=dtype_name(dtype), param_dtype=dtype_name(param_dtype))
    return cfg.replace(scan_layers=scan_layers), arch


def _placement(axes, shape, mesh: Mesh | None):
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return param_sharding(axes, shape, mesh)


def _flat_params(state: nnx.State) -> dict[str, nnx.Variable]:
    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


HEAD_RULES = {"score.kernel": Rule("score.weight", "score.kernel", "transpose")}
"""Parameters outside every architecture's table: the value head a reward model adds (swift_jax.tuners.value_head)."""


def hf_slices(arch: Architecture, cfg: ModelConfig, path: str, shape) -> list[tuple[tuple[int, ...], str, Rule]] | None:
    """Every HF tensor one of our parameters holds: `(index into our array, HF name, rule)`.

    A plain parameter holds one tensor at index `()`. Stacked axes lead: scanned layers (`[layers, ...]`,
    see models/scan.py) hold one per layer, stacked experts one per expert, both `[layers, expert, ...]`.
    None when the weight map has no row for the parameter.
    """
    if path in HEAD_RULES:  # a reward model's value head: transformers' *ForSequenceClassification `score`
        return [((), HEAD_RULES[path].hf, HEAD_RULES[path])]
    per_layer = layer_paths(cfg, path)
    prefixes = [((), path)] if per_layer is None else [((s,), p) for s, p in enumerate(per_layer)]
    out = []
    for index, ours in prefixes:
        hit = arch.weights.ours_to_hf(ours)
        if hit is None:
            return None
        name, rule = hit
        if rule.stack:
            names = rule.stacked_names(name, shape[len(index)])
            out += [((*index, j), n, rule) for j, n in enumerate(names)]
        else:
            out.append((index, name, rule))
    return out


def init_model(
    hf_config: dict[str, Any],
    *,
    dtype: Any = None,
    seed: int = 0,
    mesh: Mesh | None = None,
    param_dtype: Any = None,
    scan_layers: bool = True,
) -> nnx.Module:
    """A randomly initialised model for an HF config dict (training from scratch)."""
    cfg, arch = model_config(hf_config, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
    model = arch.module(cfg, rngs=nnx.Rngs(seed))
    if mesh is not None:
        graphdef, state = nnx.split(model)
        state = jax.tree.map(
            lambda v: v.replace(jax.device_put(v[...], _placement(v.logical_axes, v.shape, mesh))),
            state,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )
        model = nnx.merge(graphdef, state)
    return model


def load_model(
    path_or_hub_id: str,
    *,
    dtype: Any = None,
    mesh: Mesh | None = None,
    param_dtype: Any = None,
    scan_layers: bool = True,
    adjust_config: Callable[[dict], dict] | None = None,
) -> nnx.Module:
    """Load an HF safetensors checkpoint (local folder or hub id) into our Flax model.

    `dtype` (`"float32"`, `"bfloat16"`, `jnp.bfloat16`, `np.dtype("float32")`) sets parameter and compute
    dtype; default: the checkpoint's.
    `param_dtype` stores parameters in another dtype than the compute one (float32 master weights).
    `mesh` shards parameters by their logical axes; default: the first device.
    `scan_layers` (default) stacks each run of identical layers into `[layers, ...]` arrays, filled from
    the per-layer HF tensors; False builds one module per layer.
    `adjust_config` maps the checkpoint's HF config dict before the model is built (`--rope_scaling`).
    A checkpoint with `score.weight` (a reward model, saved as `*ForSequenceClassification`) loads with its
    value head (`model.score`). Raises one error listing every missing, unexpected or mis-shaped tensor.
    """
    model_dir = resolve_model_dir(path_or_hub_id)
    hf_config = read_hf_config(model_dir)
    hf_config = adjust_config(hf_config) if adjust_config else hf_config
    cfg, arch = model_config(hf_config, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
    reader = SafetensorsReader(model_dir, arch.hf_aliases)
    with_head = HEAD_RULES["score.kernel"].hf in set(reader.names())  # a reward model (`--rlhf_type rm`)
    abstract = nnx.eval_shape(lambda: _with_value_head(arch.module(cfg, rngs=nnx.Rngs(0)), with_head))
    graphdef, state = nnx.split(abstract)
    params = _flat_params(state)

    expected: dict[str, tuple[str, tuple[int, ...], Rule]] = {}  # HF name -> (our path, index, rule)
    sources: dict[str, list] = {}  # our path -> its hf_slices
    unmapped = []
    for path in params:
        slices = hf_slices(arch, cfg, path, params[path].shape)
        if slices is None:
            unmapped.append(path)
            continue
        sources[path] = slices
        expected.update({name: (path, index, rule) for index, name, rule in slices})
    if unmapped:  # a table bug, not a user error
        raise RuntimeError(f"weight map for {cfg.model_type} has no row for parameters {unmapped}")

    available = set(reader.names())
    skipped = _IGNORED_HF_NAMES + tuple(re.compile(p + r"\Z") for p in arch.ignored_hf)
    ignorable = {n for n in available if any(p.match(n) for p in skipped)}
    if cfg.tie_word_embeddings:
        # tied checkpoints sometimes store the shared matrix twice
        ignorable.update(n for n in available if n.endswith("lm_head.weight"))
    problems = [f"missing tensor {n} (for {expected[n][0]})" for n in sorted(set(expected) - available)]
    problems += [f"unexpected tensor {n}" for n in sorted(available - set(expected) - ignorable)]
    for name in sorted(set(expected) & available):
        path, index, rule = expected[name]
        hf_shape, _ = reader.shape_dtype(name)
        want = to_hf_shape(params[path].shape[len(index) :], rule)
        if hf_shape != want:
            problems.append(f"tensor {name} has shape {list(hf_shape)}, expected {list(want)}")
    if problems:
        raise ValueError(f"{model_dir}: checkpoint does not match {cfg.model_type} config:\n  " + "\n  ".join(problems))

    pure: dict[str, Any] = {}
    for path, slices in sources.items():
        var = params[path]
        if mesh is None:  # one device: no shards to cut, and no second host copy of each tensor
            _assign(pure, path, _read_whole(reader, slices, tuple(var.shape), var.dtype))
            continue
        sharding = _placement(var.logical_axes, var.shape, mesh)
        read_shard = _shard_reader(reader, slices, tuple(var.shape), var.dtype)
        _assign(pure, path, jax.make_array_from_callback(tuple(var.shape), sharding, read_shard))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _with_value_head(model: nnx.Module, attach: bool) -> nnx.Module:
    """The model with a reward model's `score` head when its checkpoint has one (`score.weight`)."""
    from swift_jax.tuners.value_head import attach_value_head

    return attach_value_head(model) if attach else model


def _shard_reader(reader: SafetensorsReader, slices, shape: tuple[int, ...], dtype):
    """`index -> array`: one device shard of a parameter, read from the HF tensors of its `hf_slices`."""
    by_index = {index: (name, rule) for index, name, rule in slices}
    depth = len(slices[0][0])  # number of stacked leading axes

    def read(index, prefix=()):
        if len(prefix) == depth:
            name, rule = by_index[prefix]
            t = rule.transform
            return to_ours(reader.read(name, hf_index_to_ours(index[depth:], t)), t).astype(dtype, copy=False)
        rows = range(*index[len(prefix)].indices(shape[len(prefix)]))
        out = None  # filled row by row: host memory holds the shard once, not its rows and a stacked copy
        for n, j in enumerate(rows):
            row = read(index, (*prefix, j))
            if out is None:
                out = np.empty((len(rows), *row.shape), dtype)
            out[n] = row
        return out

    return read


_CHUNK_BYTES = 64 << 20  # HF tensors are copied into place in row blocks of about this size
_ALIGN = 64  # XLA:CPU adopts host buffers aligned like this without copying them


def _aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised host array whose data starts on a `_ALIGN`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def _read_whole(reader: SafetensorsReader, slices, shape: tuple[int, ...], dtype) -> jax.Array:
    """A parameter on the default device, read from the HF tensors of its `hf_slices`.

    The tensors are copied in row blocks into one aligned host buffer, which `device_put(may_alias=True)`
    adopts on the CPU (and copies once to an accelerator). Host memory then holds each parameter once:
    going through `make_array_from_callback` held a read copy beside the device copy, so the largest tensor
    (the embedding) doubled the load's peak.
    """
    out = _aligned_empty(shape, dtype)
    for index, name, rule in slices:
        target = out[index] if index else out  # [in, out] in our layout
        hf_shape, _ = reader.shape_dtype(name)
        rows = hf_shape[0] if hf_shape else 1
        step = max(1, _CHUNK_BYTES // max(1, target.nbytes // max(rows, 1)))
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            block = reader.read(name, (slice(start, stop),)) if hf_shape else reader.read(name)
            if rule.transform == "transpose":  # HF rows are our columns
                target[..., start:stop] = block.T
            else:
                target[start:stop] = block
    return jax.device_put(out, jax.devices()[0], may_alias=True)


def to_hf_shape(shape, rule: Rule) -> tuple[int, ...]:
    """The HF tensor shape that corresponds to one of our parameter shapes."""
    return tuple(reversed(shape)) if rule.transform == "transpose" else tuple(shape)


def _assign(tree: dict, dotted: str, value: Any) -> None:
    keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def save_pretrained(model: nnx.Module, output_dir: str, *, dtype: Any = None, max_shard_size: int | str = "5GB") -> None:
    """Write `config.json` and (sharded) safetensors that `transformers` loads.

    `dtype` casts the saved weights (default: the parameters' dtype). Parameters are gathered to the
    host one at a time. A model with unmerged LoRA adapters must be merged first. In a multi-host run every
    process calls it (parameters sharded across hosts are gathered from all) and process 0 writes.
    """
    cfg: ModelConfig = model.config
    arch = architecture(cfg.model_type)
    params = _flat_params(nnx.state(model, nnx.Any(nnx.Param, Buffer)))  # buffers: non-trained tensors
    entries, sources = [], {}
    for path, var in params.items():
        if hf_slices(arch, cfg, path, var.shape) is None:
            raise ValueError(
                f"parameter {path} has no Hugging Face name; merge LoRA adapters before save_pretrained "
                "(swift_jax.tuners.merge) or export them with the PEFT exporter"
            )
        out_dtype = np.dtype(to_jnp_dtype(dtype_name(dtype))) if dtype else np.dtype(var.dtype)
        for index, hf_name, rule in hf_slices(arch, cfg, path, var.shape):  # stacked arrays: one per slice
            entries.append((hf_name, int(np.prod(var.shape[len(index) :])) * out_dtype.itemsize))
            sources[hf_name] = (var, rule, out_dtype, index)

    def fetch(name: str) -> np.ndarray:
        var, rule, out_dtype, index = sources[name]
        value = var[...][index] if index else var[...]
        return to_hf(host_array(value), rule.transform).astype(out_dtype)

    if not is_main_process():  # multi-host: take part in every gather, write nothing
        for name, _ in entries:
            fetch(name)
        return
    os.makedirs(output_dir, exist_ok=True)
    write_sharded_safetensors(output_dir, entries, fetch, max_shard_size=max_shard_size)
    hf = cfg.hf_config
    hf.pop("torch_dtype", None)
    hf["dtype"] = str(np.dtype(to_jnp_dtype(dtype_name(dtype) or cfg.param_dtype)))
    if "score.kernel" in params:  # a reward model: transformers reads it as *ForSequenceClassification, one label
        hf["architectures"] = [a.replace("ForCausalLM", "ForSequenceClassification") for a in hf.get("architectures") or []]
        hf["id2label"], hf["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)


def load_tokenizer(path_or_hub_id: str):
    """The Hugging Face tokenizer of a local model folder or hub id."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(path_or_hub_id))
