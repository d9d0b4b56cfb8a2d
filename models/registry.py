"""HF `model_type` -> (config adapter, module class, weight map).

Adding an architecture means adding a row here: a function that reads the HF config into a
`ModelConfig`, the Flax module to build, and the weight-map table.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from flax import nnx

from .config import ModelConfig, MoeConfig, RopeConfig
from .decoder import CausalLM
from .weight_map import Rule, WeightMap

LLAMA_FAMILY_WEIGHTS = WeightMap(
    [
        Rule("model.embed_tokens.weight", "model.embed_tokens.embedding"),
        Rule(
            "model.layers.{i}.self_attn.{proj}.weight",
            "model.layers.{i}.self_attn.{proj}.kernel",
            "transpose",
            {"proj": ("q_proj", "k_proj", "v_proj", "o_proj")},
        ),
        Rule(
            "model.layers.{i}.self_attn.{proj}.bias",
            "model.layers.{i}.self_attn.{proj}.bias",
            values={"proj": ("q_proj", "k_proj", "v_proj", "o_proj")},
        ),
        Rule(
            "model.layers.{i}.self_attn.{norm}.weight",
            "model.layers.{i}.self_attn.{norm}.scale",
            values={"norm": ("q_norm", "k_norm")},
        ),
        Rule(
            "model.layers.{i}.mlp.{proj}.weight",
            "model.layers.{i}.mlp.{proj}.kernel",
            "transpose",
            {"proj": ("gate_proj", "up_proj", "down_proj")},
        ),
        Rule(
            "model.layers.{i}.mlp.{proj}.bias",
            "model.layers.{i}.mlp.{proj}.bias",
            values={"proj": ("gate_proj", "up_proj", "down_proj")},
        ),
        Rule(
            "model.layers.{i}.{norm}.weight",
            "model.layers.{i}.{norm}.scale",
            values={"norm": ("input_layernorm", "post_attention_layernorm")},
        ),
        Rule("model.norm.weight", "model.norm.scale"),
        Rule("lm_head.weight", "lm_head.kernel", "transpose"),
    ]
)

_ROPE_FIELDS = {f.name for f in dataclasses.fields(RopeConfig)}


def _hf_dict(hf_config: Any) -> dict[str, Any]:
    return hf_config if isinstance(hf_config, dict) else hf_config.to_dict()


def rope_from_hf(hf: dict[str, Any]) -> RopeConfig:
    """Read rotary settings from either transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    theta = params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0
    if kind in ("llama3", "yarn") and params.get("original_max_position_embeddings") is None:
        params["original_max_position_embeddings"] = hf.get("max_position_embeddings")
    if "partial_rotary_factor" not in params and hf.get("partial_rotary_factor") is not None:
        params["partial_rotary_factor"] = hf["partial_rotary_factor"]
    unknown = sorted(set(params) - _ROPE_FIELDS)
    if unknown:
        raise ValueError(f"rope parameters {unknown} are not supported (rope_type={kind!r})")
    params = {k: v for k, v in params.items() if v is not None}
    return RopeConfig(rope_type=kind, theta=float(theta), **params)


def _layer_windows(hf: dict[str, Any], num_layers: int, model_type: str) -> tuple[int | None, ...]:
    window = hf.get("sliding_window")
    if model_type == "mistral":
        return (window,) * num_layers
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        return (None,) * num_layers
    if model_type == "llama" or window is None:
        return (None,) * num_layers
    types = hf.get("layer_types")
    if types is None:
        first_sliding = hf.get("max_window_layers", num_layers)
        types = ["sliding_attention" if i >= first_sliding else "full_attention" for i in range(num_layers)]
    return tuple(window if t == "sliding_attention" else None for t in types)


def llama_family_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """Build a `ModelConfig` for llama, qwen2, qwen3 and mistral from an HF config (object or dict)."""
    hf = _hf_dict(hf_config)
    model_type = hf["model_type"]
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    attention_bias = bool(hf.get("attention_bias", False))
    checkpoint_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    param_dtype = param_dtype or dtype or checkpoint_dtype
    return ModelConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rope=rope_from_hf(hf),
        hidden_act=hf.get("hidden_act", "silu"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=attention_bias or model_type == "qwen2",
        o_bias=attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        layer_windows=_layer_windows(hf, hf["num_hidden_layers"], model_type),
        initializer_range=hf.get("initializer_range", 0.02),
        dtype=str(dtype or param_dtype),
        param_dtype=str(param_dtype),
        hf_config_json=json.dumps(hf, sort_keys=True, default=str),
    )


_EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")

# qwen3_moe: Llama rows (dense MLPs of `mlp_only_layers`) + router + per-expert tensors stacked on axis 0.
QWEN3_MOE_WEIGHTS = WeightMap(
    [
        *LLAMA_FAMILY_WEIGHTS.rules,
        Rule("model.layers.{i}.mlp.gate.weight", "model.layers.{i}.mlp.gate.kernel", "transpose"),
        Rule(
            "model.layers.{i}.mlp.experts.{j}.{proj}.weight",
            "model.layers.{i}.mlp.experts.{proj}",
            "transpose",
            {"proj": _EXPERT_PROJS},
            stack="j",
        ),
    ]
)

# mixtral checkpoints keep the 4.x names (`block_sparse_moe`, w1 = gate, w3 = up, w2 = down).
MIXTRAL_WEIGHTS = WeightMap(
    [
        *LLAMA_FAMILY_WEIGHTS.rules,
        Rule("model.layers.{i}.block_sparse_moe.gate.weight", "model.layers.{i}.mlp.gate.kernel", "transpose"),
        *(
            Rule(
                f"model.layers.{{i}}.block_sparse_moe.experts.{{j}}.{w}.weight",
                f"model.layers.{{i}}.mlp.experts.{proj}",
                "transpose",
                stack="j",
            )
            for w, proj in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj"))
        ),
    ]
)


def moe_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """`ModelConfig` for mixtral and qwen3_moe: the Llama-family fields plus `MoeConfig`."""
    hf = _hf_dict(hf_config)
    model_type, layers = hf["model_type"], hf["num_hidden_layers"]
    cfg = llama_family_config(hf, dtype=dtype, param_dtype=param_dtype)
    num_experts = hf.get("num_local_experts") or hf.get("num_experts") or 0
    if model_type == "mixtral":
        sparse = tuple(range(layers))
        windows, expert_size, norm_topk = (hf.get("sliding_window"),) * layers, hf["intermediate_size"], True
    else:  # qwen3_moe
        skip, step = set(hf.get("mlp_only_layers") or ()), hf.get("decoder_sparse_step", 1)
        sparse = tuple(i for i in range(layers) if i not in skip and num_experts > 0 and (i + 1) % step == 0)
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        windows, expert_size, norm_topk = (window,) * layers, hf["moe_intermediate_size"], bool(hf.get("norm_topk_prob"))
    moe = MoeConfig(
        num_experts=num_experts,
        top_k=hf["num_experts_per_tok"],
        intermediate_size=expert_size,
        norm_topk_prob=norm_topk,
        sparse_layers=sparse,
        router_aux_loss_coef=float(hf.get("router_aux_loss_coef") or 0.0),
        output_router_logits=bool(hf.get("output_router_logits", False)),
    )
    return cfg.replace(moe=moe, layer_windows=windows, qk_norm=model_type == "qwen3_moe")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one HF model_type maps onto our code."""

    config_from_hf: Callable[..., ModelConfig]
    module: Callable[..., nnx.Module]
    weights: WeightMap


ARCHITECTURES: dict[str, Architecture] = {
    name: Architecture(llama_family_config, CausalLM, LLAMA_FAMILY_WEIGHTS)
    for name in ("llama", "qwen2", "qwen3", "mistral")
}
ARCHITECTURES["qwen3_moe"] = Architecture(moe_config, CausalLM, QWEN3_MOE_WEIGHTS)
ARCHITECTURES["mixtral"] = Architecture(moe_config, CausalLM, MIXTRAL_WEIGHTS)


def architecture(model_type: str, *, source: str = "config.json") -> Architecture:
    """Look up an architecture, with an error that lists the supported model_types."""
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{source}: model_type={model_type!r} is not supported; supported model_types: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]
