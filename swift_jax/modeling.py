"""Public model API: `load_model`, `init_model`, `save_pretrained`, `load_tokenizer`.

Loading builds the model abstractly (`nnx.eval_shape`), decides each parameter's sharding from its
logical axes, and fills every device shard straight from the safetensors slice it owns, so host memory
stays near one tensor whatever the model size. Saving gathers one tensor at a time into shards.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from swift_jax.hf.hub import resolve_model_dir
from swift_jax.hf.safetensors_io import SafetensorsReader, write_sharded_safetensors
from swift_jax.models.config import ModelConfig, dtype_name, to_jnp_dtype
from swift_jax.models.layers import Buffer
from swift_jax.models.registry import Architecture, architecture
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
    hf_config: dict[str, Any], *, dtype: Any = None, param_dtype: Any = None
) -> tuple[ModelConfig, Architecture]:
    """`ModelConfig` and architecture for an HF config dict.

    `dtype` is the compute dtype and, unless `param_dtype` is given, also the parameters' (default: the
    checkpoint's). Full fine-tuning in bf16 passes `param_dtype="float32"` for float32 master weights.
    """
    arch = architecture(hf_config.get("model_type", "<missing>"))
    return arch.config_from_hf(hf_config, dtype=dtype_name(dtype), param_dtype=dtype_name(param_dtype)), arch


def _placement(axes, shape, mesh: Mesh | None):
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return param_sharding(axes, shape, mesh)


def _flat_params(state: nnx.State) -> dict[str, nnx.Variable]:
    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def init_model(
    hf_config: dict[str, Any],
    *,
    dtype: Any = None,
    seed: int = 0,
    mesh: Mesh | None = None,
    param_dtype: Any = None,
) -> nnx.Module:
    """A randomly initialised model for an HF config dict (training from scratch)."""
    cfg, arch = model_config(hf_config, dtype=dtype, param_dtype=param_dtype)
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
    path_or_hub_id: str, *, dtype: Any = None, mesh: Mesh | None = None, param_dtype: Any = None
) -> nnx.Module:
    """Load an HF safetensors checkpoint (local folder or hub id) into our Flax model.

    `dtype` (`"float32"`, `"bfloat16"`, `jnp.bfloat16`, `np.dtype("float32")`) sets parameter and compute
    dtype; default: the checkpoint's.
    `param_dtype` stores parameters in another dtype than the compute one (float32 master weights).
    `mesh` shards parameters by their logical axes; default: the first device.
    Raises one error listing every missing, unexpected or mis-shaped tensor.
    """
    model_dir = resolve_model_dir(path_or_hub_id)
    cfg, arch = model_config(read_hf_config(model_dir), dtype=dtype, param_dtype=param_dtype)
    abstract = nnx.eval_shape(lambda: arch.module(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = _flat_params(state)
    reader = SafetensorsReader(model_dir)

    expected: dict[str, tuple[str, Rule]] = {}
    sources: dict[str, tuple[Rule, list[str]]] = {}  # our path -> (rule, its HF names: one, or one per slice)
    unmapped = []
    for path in params:
        hit = arch.weights.ours_to_hf(path)
        if hit is None:
            unmapped.append(path)
            continue
        name, rule = hit
        names = rule.stacked_names(name, params[path].shape[0]) if rule.stack else [name]
        sources[path] = (rule, names)
        expected.update({n: (path, rule) for n in names})
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
        path, rule = expected[name]
        hf_shape, _ = reader.shape_dtype(name)
        want = to_hf_shape(params[path].shape[1:] if rule.stack else params[path].shape, rule)
        if hf_shape != want:
            problems.append(f"tensor {name} has shape {list(hf_shape)}, expected {list(want)}")
    if problems:
        raise ValueError(f"{model_dir}: checkpoint does not match {cfg.model_type} config:\n  " + "\n  ".join(problems))

    pure: dict[str, Any] = {}
    for path, (rule, names) in sources.items():
        var = params[path]
        sharding = _placement(var.logical_axes, var.shape, mesh)
        dtype_ = var.dtype

        def read_shard(index, names=names, rule=rule, dtype_=dtype_):
            t = rule.transform
            if not rule.stack:
                return to_ours(reader.read(names[0], hf_index_to_ours(index, t)), t).astype(dtype_)
            rows = range(*index[0].indices(len(names)))  # a stacked array: one HF tensor per slice
            return np.stack([to_ours(reader.read(names[j], hf_index_to_ours(index[1:], t)), t) for j in rows]).astype(dtype_)

        _assign(pure, path, jax.make_array_from_callback(tuple(var.shape), sharding, read_shard))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


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
        hit = arch.weights.ours_to_hf(path)
        if hit is None:
            raise ValueError(
                f"parameter {path} has no Hugging Face name; merge LoRA adapters before save_pretrained "
                "(swift_jax.tuners.merge) or export them with the PEFT exporter"
            )
        name, rule = hit
        out_dtype = np.dtype(to_jnp_dtype(dtype_name(dtype))) if dtype else np.dtype(var.dtype)
        slices = list(enumerate(rule.stacked_names(name, var.shape[0]))) if rule.stack else [(None, name)]
        for j, hf_name in slices:  # a stacked array (experts) is written as one HF tensor per slice
            shape = var.shape if j is None else var.shape[1:]
            entries.append((hf_name, int(np.prod(shape)) * out_dtype.itemsize))
            sources[hf_name] = (var, rule, out_dtype, j)

    def fetch(name: str) -> np.ndarray:
        var, rule, out_dtype, j = sources[name]
        value = var[...] if j is None else var[...][j]
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
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)


def load_tokenizer(path_or_hub_id: str):
    """The Hugging Face tokenizer of a local model folder or hub id."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(path_or_hub_id))
