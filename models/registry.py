"""HF `model_type` -> (config adapter, module class, weight map).

Adding an architecture means adding a row here: a function that reads the HF config into a
`ModelConfig`, the Flax module to build, and the weight-map table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

from flax import nnx

from .config import InternVisionConfig, MlaConfig, ModelConfig, MoeConfig, Qwen2VLVisionConfig, RopeConfig
from .decoder import CausalLM
from .vision.gemma3 import Gemma3ForConditionalGeneration, gemma3_vision_config
from .vision.internvl import InternVLForConditionalGeneration
from .vision.qwen2_vl import Qwen2VLForConditionalGeneration
from .weight_map import Rule, WeightMap


def decoder_weights(
    attn_projs: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    mlp_projs: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj"),
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm"),
    prefix: str = "",
) -> WeightMap:
    """The weight-map table of our decoder for one set of HF module names (they are ours too).

    `prefix` is where a larger HF model keeps the language model (`language_model.` in Gemma 3's
    image-text checkpoints); our paths stay the same.
    """
    rules = [
        Rule("model.embed_tokens.weight", "model.embed_tokens.embedding"),
        Rule(
            "model.layers.{i}.self_attn.{proj}.weight",
            "model.layers.{i}.self_attn.{proj}.kernel",
            "transpose",
            {"proj": attn_projs},
        ),
        Rule(
            "model.layers.{i}.self_attn.{proj}.bias",
            "model.layers.{i}.self_attn.{proj}.bias",
            values={"proj": attn_projs},
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
            {"proj": mlp_projs},
        ),
        Rule(
            "model.layers.{i}.mlp.{proj}.bias",
            "model.layers.{i}.mlp.{proj}.bias",
            values={"proj": mlp_projs},
        ),
        Rule("model.layers.{i}.{norm}.weight", "model.layers.{i}.{norm}.scale", values={"norm": layer_norms}),
        Rule("model.norm.weight", "model.norm.scale"),
        Rule("lm_head.weight", "lm_head.kernel", "transpose"),
    ]
    return WeightMap([Rule(prefix + r.hf, r.ours, r.transform, dict(r.values)) for r in rules])


LLAMA_FAMILY_WEIGHTS = decoder_weights()
# Gemma 2/3: norms before and after both sublayers.
GEMMA_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
GEMMA_WEIGHTS = decoder_weights(layer_norms=GEMMA_NORMS)
# Phi-3: fused projections keep their HF (and PEFT target) names; the split happens after the matmul.
PHI3_WEIGHTS = decoder_weights(attn_projs=("qkv_proj", "o_proj"), mlp_projs=("gate_up_proj", "down_proj"))

_ROPE_FIELDS = {f.name for f in dataclasses.fields(RopeConfig)}


def _hf_dict(hf_config: Any) -> dict[str, Any]:
    return hf_config if isinstance(hf_config, dict) else hf_config.to_dict()


def rope_from_hf(hf: dict[str, Any]) -> RopeConfig:
    """Read rotary settings from either transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    legacy = params.pop("type", None)  # 4.x configs spell it `type`
    kind = params.pop("rope_type", None) or legacy or "default"
    if hf.get("model_type") == "phi3" and kind in ("su", "yarn"):  # Phi-3's old names for longrope
        kind = "longrope"
    theta = params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0
    if kind in ("llama3", "yarn", "longrope") and params.get("original_max_position_embeddings") is None:
        params["original_max_position_embeddings"] = hf.get("original_max_position_embeddings") or hf.get(
            "max_position_embeddings"
        )
    for key in ("short_factor", "long_factor"):  # lists -> tuples: the config must stay hashable
        if params.get(key) is not None:
            params[key] = tuple(float(f) for f in params[key])
    if params.get("mrope_section") is not None:
        params["mrope_section"] = tuple(int(n) for n in params["mrope_section"])
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


def _common_fields(hf: dict[str, Any], dtype: str | None, param_dtype: str | None) -> dict[str, Any]:
    """The `ModelConfig` fields every architecture reads the same way from its HF config."""
    heads = hf["num_attention_heads"]
    attention_bias = bool(hf.get("attention_bias", False))
    checkpoint_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    param_dtype = param_dtype or dtype or checkpoint_dtype
    return dict(
        model_type=hf["model_type"],
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        hidden_act=hf.get("hidden_act") or "silu",
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        initializer_range=hf.get("initializer_range", 0.02),
        dtype=str(dtype or param_dtype),
        param_dtype=str(param_dtype),
        hf_config_json=json.dumps(hf, sort_keys=True, default=str),
    )


def llama_family_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """Build a `ModelConfig` for llama, qwen2, qwen3 and mistral from an HF config (object or dict)."""
    hf = _hf_dict(hf_config)
    model_type = hf["model_type"]
    fields = _common_fields(hf, dtype, param_dtype)
    return ModelConfig(
        **{**fields, "qkv_bias": fields["qkv_bias"] or model_type == "qwen2"},
        rope=rope_from_hf(hf),
        qk_norm=model_type == "qwen3",
        layer_windows=_layer_windows(hf, hf["num_hidden_layers"], model_type),
    )


def _gemma_layer_types(hf: dict[str, Any]) -> list[str]:
    """`layer_types`, or the pattern transformers derives when a config predates the field."""
    n = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    pattern = 2 if hf["model_type"] == "gemma2" else hf.get("sliding_window_pattern") or 6
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]


def _gemma3_ropes(hf: dict[str, Any], layer_types: list[str]) -> tuple[RopeConfig, ...]:
    """Per-layer rotary settings of Gemma 3: transformers 5 nests `rope_parameters` by layer type;
    4.x configs carry `rope_theta` / `rope_scaling` (global layers) and `rope_local_base_freq` (local)."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        by_type = {t: rope_from_hf({**hf, "rope_parameters": params.get(t) or {}}) for t in set(layer_types)}
    else:
        by_type = {
            "full_attention": rope_from_hf({**hf, "rope_theta": hf.get("rope_theta") or 1_000_000.0}),
            "sliding_attention": RopeConfig(theta=float(hf.get("rope_local_base_freq") or 10_000.0)),
        }
    return tuple(by_type[t] for t in layer_types)


def gemma_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """Build a `ModelConfig` for gemma2 and gemma3_text: (1 + w) norms, sqrt(hidden) embedding scale,
    norms around both sublayers, GeGLU, query_pre_attn_scalar, soft caps, local/global layers."""
    hf = _hf_dict(hf_config)
    model_type = hf["model_type"]
    if hf.get("use_bidirectional_attention"):
        raise ValueError(f"{model_type}: use_bidirectional_attention=True is not supported (causal LMs only)")
    types = _gemma_layer_types(hf)
    window = hf.get("sliding_window")
    gemma3 = model_type == "gemma3_text"
    fields = _common_fields(hf, dtype, param_dtype)
    fields["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings", True))
    fields["hidden_act"] = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    return ModelConfig(
        **fields,
        rope=rope_from_hf(hf) if not gemma3 else RopeConfig(),
        layer_ropes=_gemma3_ropes(hf, types) if gemma3 else (),
        qk_norm=gemma3,
        layer_windows=tuple(window if t == "sliding_attention" else None for t in types),
        norm_offset=1.0,
        embed_scale=float(hf["hidden_size"]) ** 0.5,
        post_norms=True,
        query_scale=float(hf.get("query_pre_attn_scalar") or 256) ** -0.5,
        # transformers' Gemma 3 attention never applies attn_logit_softcapping, so neither do we.
        attn_soft_cap=None if gemma3 else hf.get("attn_logit_softcapping"),
        final_soft_cap=hf.get("final_logit_softcapping"),
    )


def gemma3_multimodal_config(
    hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None
) -> ModelConfig:
    """A `gemma3` image-text config: its `text_config` read as `gemma3_text`, plus the SigLIP tower and
    projector (`Gemma3VisionConfig`); saved back as the image-text checkpoint."""
    hf = _hf_dict(hf_config)
    text = dict(hf["text_config"])
    text["model_type"] = "gemma3_text"
    text["architectures"] = ["Gemma3ForCausalLM"]
    text["dtype"] = text.get("dtype") or hf.get("dtype") or hf.get("torch_dtype")
    if hf.get("tie_word_embeddings") is not None:
        text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    # transformers' Gemma3ForConditionalGeneration never applies final_logit_softcapping (its text-only
    # model does): dropped, so we and the saved gemma3_text model compute what the checkpoint did.
    text["final_logit_softcapping"] = None
    cfg = gemma_config(text, dtype=dtype, param_dtype=param_dtype)
    return cfg.replace(
        model_type="gemma3", vision=gemma3_vision_config(hf), hf_config_json=json.dumps(hf, sort_keys=True, default=str)
    )


def phi3_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """Build a `ModelConfig` for phi3: fused qkv / gate-up projections, longrope, optional partial
    rotary, one sliding window for every layer when `sliding_window` is set."""
    hf = _hf_dict(hf_config)
    window = hf.get("sliding_window")
    return ModelConfig(
        **_common_fields(hf, dtype, param_dtype),
        rope=rope_from_hf(hf),
        layer_windows=(window,) * hf["num_hidden_layers"],
        fused_qkv=True,
        fused_gate_up=True,
    )


_EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")
# The router and the per-expert tensors (stacked on axis 0) under HF's `mlp.` (qwen3_moe, deepseek_v3).
ROUTED_EXPERT_RULES = (
    Rule("model.layers.{i}.mlp.gate.weight", "model.layers.{i}.mlp.gate.kernel", "transpose"),
    Rule(
        "model.layers.{i}.mlp.experts.{j}.{proj}.weight",
        "model.layers.{i}.mlp.experts.{proj}",
        "transpose",
        {"proj": _EXPERT_PROJS},
        stack="j",
    ),
)

# qwen3_moe: Llama rows (dense MLPs of `mlp_only_layers`) + router + per-expert tensors stacked on axis 0.
QWEN3_MOE_WEIGHTS = WeightMap(
    [
        *LLAMA_FAMILY_WEIGHTS.rules,
        *ROUTED_EXPERT_RULES,
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


_MLA_PROJS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")

# deepseek_v3: latent-attention projections and norms, dense MLPs of the first `first_k_dense_replace`
# layers, then router (+ its non-trained correction bias), stacked routed experts and shared experts.
DEEPSEEK_V3_WEIGHTS = WeightMap(
    [
        *decoder_weights(attn_projs=_MLA_PROJS).rules,
        Rule(
            "model.layers.{i}.self_attn.{norm}.weight",
            "model.layers.{i}.self_attn.{norm}.scale",
            values={"norm": ("q_a_layernorm", "kv_a_layernorm")},
        ),
        *ROUTED_EXPERT_RULES,
        Rule("model.layers.{i}.mlp.gate.e_score_correction_bias", "model.layers.{i}.mlp.gate.e_score_correction_bias"),
        Rule(
            "model.layers.{i}.mlp.shared_experts.{proj}.weight",
            "model.layers.{i}.mlp.shared_experts.{proj}.kernel",
            "transpose",
            {"proj": _EXPERT_PROJS},
        ),
    ]
)
# The multi-token-prediction layer of the released DeepSeek-V3 (layer 61) is not built, as in transformers.
DEEPSEEK_V3_MTP = (r"model\.layers\.61\..*",)


def _yarn_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def deepseek_v3_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """`ModelConfig` for deepseek_v3: latent attention (`MlaConfig`), sigmoid group-limited routing with
    a correction bias and shared experts (`MoeConfig`), dense MLPs in the first `first_k_dense_replace`
    layers. `head_dim` is the rotary dim (HF's config sets head_dim = qk_rope_head_dim)."""
    hf = _hf_dict(hf_config)
    heads, layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    mla = MlaConfig(
        q_lora_rank=hf.get("q_lora_rank"),
        kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf.get("v_head_dim") or hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"],
        rope_interleave=bool(hf.get("rope_interleave", True)),
    )
    rope = rope_from_hf(hf)
    scale = mla.qk_head_dim**-0.5
    if rope.rope_type != "default" and rope.mscale_all_dim:  # transformers' yarn_apply_mscale
        scale *= _yarn_mscale(rope.factor, rope.mscale_all_dim) ** 2
    num_experts = hf.get("n_routed_experts") or 0
    first_dense = hf.get("first_k_dense_replace") or 0
    moe = MoeConfig(
        num_experts=num_experts,
        top_k=hf.get("num_experts_per_tok") or 1,
        intermediate_size=hf["moe_intermediate_size"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        sparse_layers=tuple(range(first_dense, layers)) if num_experts else (),
        scoring="sigmoid",
        n_group=hf.get("n_group") or 1,
        topk_group=hf.get("topk_group") or 1,
        routed_scaling_factor=float(hf.get("routed_scaling_factor") or 1.0),
        score_correction_bias=True,
        shared_intermediate_size=hf["moe_intermediate_size"] * (hf.get("n_shared_experts") or 0),
    )  # transformers computes no load-balancing loss for deepseek_v3: router_aux_loss_coef stays 0
    fields = _common_fields(hf, dtype, param_dtype)
    return ModelConfig(
        **{**fields, "head_dim": mla.qk_rope_head_dim, "num_key_value_heads": heads},
        rope=rope,
        layer_windows=(None,) * layers,
        query_scale=scale,
        moe=moe,
        mla=mla,
    )


def linear_rules(hf: str, ours: str, names: tuple[str, ...]) -> list[Rule]:
    """Rows for Linear layers `names` under HF prefix `hf` / our prefix `ours`: weight -> kernel, bias."""
    return [
        Rule(hf + "{m}.weight", ours + "{m}.kernel", "transpose", {"m": names}),
        Rule(hf + "{m}.bias", ours + "{m}.bias", values={"m": names}),
    ]


def norm_rules(hf: str, ours: str, names: tuple[str, ...]) -> list[Rule]:
    """Rows for (Layer/RMS)Norm layers `names`: weight -> scale, bias (LayerNorm only)."""
    return [
        Rule(hf + "{m}.weight", ours + "{m}.scale", values={"m": names}),
        Rule(hf + "{m}.bias", ours + "{m}.bias", values={"m": names}),
    ]


_VISION_MLP = ("fc1", "fc2", "gate_proj", "up_proj", "down_proj")  # Qwen2-VL: fc1/fc2; Qwen2.5-VL: SwiGLU
_BLOCK = "visual.blocks.{i}."
# Qwen2-VL / Qwen2.5-VL as transformers saves them (and the hub holds them): the language model under
# `model.` + `lm_head`, the vision tower under `visual.`.
QWEN2_VL_WEIGHTS = WeightMap(
    [
        *LLAMA_FAMILY_WEIGHTS.rules,
        Rule("visual.patch_embed.proj.weight", "visual.patch_embed.weight"),  # HF's Conv3d layout, kept
        *norm_rules(_BLOCK, _BLOCK, ("norm1", "norm2")),
        *linear_rules(_BLOCK + "attn.", _BLOCK + "attn.", ("qkv", "proj")),
        *linear_rules(_BLOCK + "mlp.", _BLOCK + "mlp.", _VISION_MLP),
        *norm_rules("visual.merger.", "visual.merger.", ("ln_q",)),
        *linear_rules("visual.merger.mlp.", "visual.merger.mlp_", ("0", "2")),
    ]
)


def qwen2_vl_vision_config(hf: dict[str, Any]) -> Qwen2VLVisionConfig:
    """The vision tower of a `qwen2_vl` / `qwen2_5_vl` config (the two name their widths differently)."""
    vis, kind = hf["vision_config"], hf["model_type"]
    if kind == "qwen2_5_vl":
        widths = {k: vis[k] for k in ("hidden_size", "out_hidden_size", "intermediate_size")}
        extra = dict(
            window_size=vis.get("window_size", 112),
            fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes") or ()),
            tokens_per_second=float(vis.get("tokens_per_second", 4)),
        )
    else:  # qwen2_vl: embed_dim is the blocks' width, hidden_size the language model's
        embed = vis["embed_dim"]
        mlp = int(embed * vis.get("mlp_ratio", 4))
        widths = dict(hidden_size=embed, out_hidden_size=vis["hidden_size"], intermediate_size=mlp)
        extra = {}
    return Qwen2VLVisionConfig(
        kind=kind,
        depth=vis["depth"],
        num_heads=vis["num_heads"],
        hidden_act=vis.get("hidden_act") or ("silu" if kind == "qwen2_5_vl" else "quick_gelu"),
        patch_size=vis["patch_size"],
        temporal_patch_size=vis["temporal_patch_size"],
        spatial_merge_size=vis["spatial_merge_size"],
        in_channels=vis.get("in_channels", 3),
        rope_theta=float((vis.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
        image_token_id=hf["image_token_id"],
        video_token_id=hf["video_token_id"],
        **widths,
        **extra,
    )


def qwen2_vl_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """`ModelConfig` of a Qwen2-VL / Qwen2.5-VL checkpoint: its `text_config` read as qwen2 (q/k/v
    biases, M-RoPE over `mrope_section`), the top-level tying flag, and the vision tower."""
    hf = _hf_dict(hf_config)
    text = dict(hf["text_config"])
    text.update(model_type=hf["model_type"], tie_word_embeddings=hf.get("tie_word_embeddings", False))
    text["dtype"] = text.get("dtype") or hf.get("dtype") or hf.get("torch_dtype")
    fields = _common_fields(text, dtype, param_dtype)
    rope = rope_from_hf(text)
    if rope.mrope_section is None:  # transformers' default
        rope = dataclasses.replace(rope, mrope_section=(16, 24, 24))
    return ModelConfig(
        **{**fields, "qkv_bias": True, "o_bias": False, "hf_config_json": json.dumps(hf, sort_keys=True, default=str)},
        rope=rope,
        layer_windows=_layer_windows(text, text["num_hidden_layers"], "qwen2"),
        vision=qwen2_vl_vision_config(hf),
    )


_WEIGHT_BIAS, _PROJ = ("weight", "bias"), "projection_layer"
_SIGLIP_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
# The hub's SigLIP names (transformers 5 writes them without `vision_model.`: GEMMA3_ALIASES) and ours.
_SIGLIP, _TOWER = "vision_tower.vision_model.", "vision_tower."
# Gemma 3 image-text checkpoints (`gemma3`): the text model under `language_model.`, SigLIP under
# `vision_tower.vision_model.`, the projector under `multi_modal_projector.` (its matrix is `[in, out]`).
GEMMA3_MULTIMODAL_WEIGHTS = WeightMap(
    [
        *decoder_weights(layer_norms=GEMMA_NORMS, prefix="language_model.").rules,
        Rule(_SIGLIP + "embeddings.patch_embedding.{p}", _TOWER + "embeddings.patch_{p}", values={"p": _WEIGHT_BIAS}),
        Rule(_SIGLIP + "embeddings.position_embedding.weight", _TOWER + "embeddings.position_embedding"),
        *linear_rules(_SIGLIP + "encoder.layers.{i}.self_attn.", _TOWER + "layers.{i}.self_attn.", _SIGLIP_ATTN),
        *linear_rules(_SIGLIP + "encoder.layers.{i}.mlp.", _TOWER + "layers.{i}.mlp.", ("fc1", "fc2")),
        *norm_rules(_SIGLIP + "encoder.layers.{i}.", _TOWER + "layers.{i}.", ("layer_norm1", "layer_norm2")),
        *norm_rules(_SIGLIP, _TOWER, ("post_layernorm",)),
        Rule("multi_modal_projector.mm_input_projection_weight", "multi_modal_projector.mm_input_projection_weight"),
        *norm_rules("multi_modal_projector.", "multi_modal_projector.", ("mm_soft_emb_norm",)),
    ]
)
# Checkpoints by transformers 5 (`vision_tower.` without `vision_model.`) and SigLIP's unused pooling head.
GEMMA3_ALIASES = ((r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model."),)
GEMMA3_IGNORED = (r"vision_tower\.(vision_model\.)?head\..*",)

_INTERN = "vision_tower.encoder.layer.{i}."
_EMBED = "vision_tower.embeddings."
# InternVL as transformers saves it: the language model under `language_model.` (`.model.*`, `.lm_head`),
# the InternViT under `vision_tower.`, the projector under `multi_modal_projector.`.
INTERNVL_WEIGHTS = WeightMap(
    [
        *decoder_weights(prefix="language_model.").rules,
        Rule(_EMBED + "{p}", _EMBED + "{p}", values={"p": ("cls_token", "position_embeddings")}),
        Rule(_EMBED + "patch_embeddings.projection.{p}", _EMBED + "patch_embeddings.{p}", values={"p": _WEIGHT_BIAS}),
        *linear_rules(_INTERN + "attention.", _INTERN + "attention.", ("q_proj", "k_proj", "v_proj", _PROJ)),
        *norm_rules(_INTERN + "attention.", _INTERN + "attention.", ("q_norm", "k_norm")),
        *norm_rules(_INTERN, _INTERN, ("layernorm_before", "layernorm_after")),
        Rule(_INTERN + "{lam}", _INTERN + "{lam}", values={"lam": ("lambda_1", "lambda_2")}),
        *linear_rules(_INTERN + "mlp.", _INTERN + "mlp.", ("fc1", "fc2")),
        *norm_rules("vision_tower.", "vision_tower.", ("layernorm",)),
        *norm_rules("multi_modal_projector.", "multi_modal_projector.", ("layer_norm",)),
        *linear_rules("multi_modal_projector.", "multi_modal_projector.", ("linear_1", "linear_2")),
    ]
)
_INTERNVL_TEXT_MODELS = ("llama", "qwen2", "qwen3")


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))


def internvl_config(hf_config: Any, *, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
    """`ModelConfig` of an InternVL checkpoint: its `text_config` (llama / qwen2 / qwen3) read as that
    model, the top-level tying flag, and the InternViT + projector (`InternVisionConfig`)."""
    hf = _hf_dict(hf_config)
    text, vis = dict(hf["text_config"]), hf["vision_config"]
    if text.get("model_type") not in _INTERNVL_TEXT_MODELS:
        raise ValueError(
            f"internvl: text_config.model_type={text.get('model_type')!r} is not supported; "
            f"expected one of {_INTERNVL_TEXT_MODELS}"
        )
    unsupported = {
        "vision_feature_layer": (hf.get("vision_feature_layer", -1), -1),
        "vision_feature_select_strategy": (hf.get("vision_feature_select_strategy", "default"), "default"),
        "vision_config.use_absolute_position_embeddings": (vis.get("use_absolute_position_embeddings", True), True),
    }
    for key, (found, supported) in unsupported.items():
        if found != supported:
            raise ValueError(f"internvl: {key}={found!r} is not supported (only {supported!r})")
    text.update(tie_word_embeddings=hf.get("tie_word_embeddings", True))
    text["dtype"] = text.get("dtype") or hf.get("dtype") or hf.get("torch_dtype")
    cfg = llama_family_config(text, dtype=dtype, param_dtype=param_dtype)
    vision = InternVisionConfig(
        hidden_size=vis["hidden_size"],
        intermediate_size=vis["intermediate_size"],
        num_hidden_layers=vis["num_hidden_layers"],
        num_attention_heads=vis["num_attention_heads"],
        image_size=_pair(vis.get("image_size", 448)),
        patch_size=_pair(vis.get("patch_size", 14)),
        image_token_id=hf["image_token_id"],
        num_channels=vis.get("num_channels", 3),
        hidden_act=vis.get("hidden_act", "gelu"),
        norm_type=vis.get("norm_type", "layer_norm"),
        layer_norm_eps=vis.get("layer_norm_eps", 1e-6),
        attention_bias=bool(vis.get("attention_bias", False)),
        use_qk_norm=bool(vis.get("use_qk_norm", False)),
        use_mean_pooling=bool(vis.get("use_mean_pooling", True)),
        downsample_ratio=float(hf.get("downsample_ratio", 0.5)),
        projector_hidden_act=hf.get("projector_hidden_act", "gelu"),
    )
    return cfg.replace(model_type="internvl", vision=vision, hf_config_json=json.dumps(hf, sort_keys=True, default=str))


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one HF model_type maps onto our code."""

    config_from_hf: Callable[..., ModelConfig]
    module: Callable[..., nnx.Module]
    weights: WeightMap
    # Regexes of checkpoint tensors that loading skips (parts of a larger model we do not build).
    ignored_hf: tuple[str, ...] = ()
    # (regex, replacement) renames of other checkpoint spellings into the table's names, applied on loading.
    hf_aliases: tuple[tuple[str, str], ...] = ()


ARCHITECTURES: dict[str, Architecture] = {
    **{
        name: Architecture(llama_family_config, CausalLM, LLAMA_FAMILY_WEIGHTS)
        for name in ("llama", "qwen2", "qwen3", "mistral")
    },
    "gemma2": Architecture(gemma_config, CausalLM, GEMMA_WEIGHTS),
    "gemma3_text": Architecture(gemma_config, CausalLM, GEMMA_WEIGHTS),
    "gemma3": Architecture(
        gemma3_multimodal_config,
        Gemma3ForConditionalGeneration,
        GEMMA3_MULTIMODAL_WEIGHTS,
        GEMMA3_IGNORED,
        GEMMA3_ALIASES,
    ),
    "phi3": Architecture(phi3_config, CausalLM, PHI3_WEIGHTS),
    "qwen3_moe": Architecture(moe_config, CausalLM, QWEN3_MOE_WEIGHTS),
    "mixtral": Architecture(moe_config, CausalLM, MIXTRAL_WEIGHTS),
    "deepseek_v3": Architecture(deepseek_v3_config, CausalLM, DEEPSEEK_V3_WEIGHTS, DEEPSEEK_V3_MTP),
    **{
        name: Architecture(qwen2_vl_config, Qwen2VLForConditionalGeneration, QWEN2_VL_WEIGHTS)
        for name in ("qwen2_vl", "qwen2_5_vl")
    },
    "internvl": Architecture(internvl_config, InternVLForConditionalGeneration, INTERNVL_WEIGHTS),
}


def architecture(model_type: str, *, source: str = "config.json") -> Architecture:
    """Look up an architecture, with an error that lists the supported model_types."""
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{source}: model_type={model_type!r} is not supported; supported model_types: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]
