"""`ModelConfig`: the typed, hashable description of a decoder, built from a Hugging Face config.

The Hugging Face `config.json` stays the source of truth (it is what we write back on export); this
dataclass holds only what the Flax modules read, already normalised across transformers versions
(`rope_scaling` vs `rope_parameters`, `layer_types` vs `use_sliding_window`, ...).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

_DTYPES = {
    "float32": jnp.float32,
    "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp16": jnp.float16,
}


def to_jnp_dtype(name: Any) -> jnp.dtype:
    """Map a dtype name (`"bfloat16"`, `"bf16"`, `"float32"`, a torch dtype string, a jnp dtype) to jnp."""
    if name is None:
        return jnp.float32
    if not isinstance(name, str):
        return jnp.dtype(name)
    key = name.removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return jnp.dtype(_DTYPES[key])


def dtype_name(dtype: Any) -> str | None:
    """A dtype as the public API accepts it (`"bfloat16"`, `"bf16"`, `jnp.bfloat16`, `np.dtype("float32")`,
    `"torch.float32"`) as its canonical name, e.g. `"bfloat16"`; None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        return jnp.dtype(to_jnp_dtype(dtype)).name
    try:
        name = jnp.dtype(dtype).name
    except TypeError as err:
        raise ValueError(f"unknown dtype {dtype!r}; expected a name such as 'bfloat16' or a dtype such as jnp.float32") from err
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters in transformers' `rope_parameters` vocabulary."""

    rope_type: str = "default"  # default | linear | dynamic | yarn | llama3 | longrope
    theta: float = 10000.0
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    attention_factor: float | None = None  # yarn
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn
    partial_rotary_factor: float = 1.0
    short_factor: tuple[float, ...] | None = None  # longrope: per-frequency divisors up to the original length
    long_factor: tuple[float, ...] | None = None  # longrope: beyond original_max_position_embeddings
    # M-RoPE (Qwen2-VL): rotary frequencies split into (temporal, height, width) sections, each rotated by
    # its own row of `[3, batch, seq]` positions; None = one position per token.
    mrope_section: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """Sparse Mixture-of-Experts feed-forward settings (mixtral, qwen3_moe); see `models/moe.py`."""

    num_experts: int
    top_k: int  # experts per token (HF num_experts_per_tok)
    intermediate_size: int  # per expert (qwen3_moe: moe_intermediate_size)
    norm_topk_prob: bool = True  # renormalise the top-k probabilities to sum to 1 (mixtral: always)
    sparse_layers: tuple[int, ...] = ()  # layers whose MLP is the MoE block; the rest are dense MLPs
    router_aux_loss_coef: float = 0.0
    output_router_logits: bool = False  # HF: add the load-balancing loss to the training loss
    impl: str = "ragged"  # ragged (grouped matmuls on tokens sorted by expert) | dense (reference)
    # Router variant. softmax: top-k of softmax probabilities (mixtral, qwen3_moe). sigmoid (deepseek_v3):
    # sigmoid scores; experts chosen by scores + `e_score_correction_bias` within the best `topk_group` of
    # `n_group` expert groups, weighted by the uncorrected scores times `routed_scaling_factor`.
    scoring: str = "softmax"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    score_correction_bias: bool = False  # a non-trained `Buffer` per router (deepseek_v3)
    shared_intermediate_size: int = 0  # > 0: a dense "shared experts" MLP of this width added on every token


@dataclasses.dataclass(frozen=True)
class MlaConfig:
    """Multi-head latent attention (deepseek_v3); see `models/mla.py`."""

    q_lora_rank: int | None  # None: one q_proj; else q_a_proj -> q_a_layernorm -> q_b_proj
    kv_lora_rank: int  # width of the compressed key/value latent
    qk_nope_head_dim: int  # per-head query/key dims without rotary
    qk_rope_head_dim: int  # rotary dims: per head for queries, one key part shared by all heads
    v_head_dim: int
    rope_interleave: bool = True  # rotary pairs are (x0, x1), (x2, x3), ... (transformers' rope_interleave)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cache_head_dim(self) -> int:
        """Per-head width of cached keys and values: the attention kernels take one head_dim, so the
        shorter of k (qk_head_dim) and v (v_head_dim) is zero-padded to the longer."""
        return max(self.qk_head_dim, self.v_head_dim)


@dataclasses.dataclass(frozen=True)
class Qwen2VLVisionConfig:
    """A Qwen2-VL / Qwen2.5-VL vision tower and how its features enter the language model
    (see `models/vision/qwen2_vl.py`); field names follow transformers' vision configs."""

    kind: str  # qwen2_vl (LayerNorm, fc1/fc2 MLP) | qwen2_5_vl (RMSNorm, SwiGLU, window attention)
    depth: int
    hidden_size: int  # width of the vision blocks (Qwen2-VL's embed_dim)
    out_hidden_size: int  # the language model's hidden size: the patch merger's output
    num_heads: int
    intermediate_size: int
    hidden_act: str
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    image_token_id: int
    video_token_id: int
    in_channels: int = 3
    rope_theta: float = 10000.0
    window_size: int = 0  # qwen2_5_vl: window side in pixels; 0 = every block attends to the whole frame
    fullatt_block_indexes: tuple[int, ...] = ()  # qwen2_5_vl: blocks with whole-frame attention
    tokens_per_second: float = 1.0  # qwen2_5_vl: temporal M-RoPE positions per second of video

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch: channels x temporal_patch_size x patch_size^2."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Patches merged into one language-model token."""
        return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class InternVisionConfig:
    """InternVL's InternViT encoder, pixel shuffle and projector (see `models/vision/internvl.py`);
    field names follow transformers' `InternVLVisionConfig` / `InternVLConfig`."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: tuple[int, int]  # one tile, (height, width)
    patch_size: tuple[int, int]
    image_token_id: int
    num_channels: int = 3
    hidden_act: str = "gelu"
    norm_type: str = "layer_norm"  # layer_norm | rms_norm
    layer_norm_eps: float = 1e-6
    attention_bias: bool = False
    use_qk_norm: bool = False  # RMSNorm over the whole q / k projection (InternViT-6B)
    use_mean_pooling: bool = True  # False: a final LayerNorm on the encoder output
    downsample_ratio: float = 0.5  # pixel shuffle: (h, w, c) -> (h * r, w * r, c / r^2)
    projector_hidden_act: str = "gelu"

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per tile along (height, width)."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def tokens_per_tile(self) -> int:
        """Language-model tokens one tile becomes after the pixel shuffle."""
        return int(self.grid[0] * self.grid[1] * self.downsample_ratio**2)


@dataclasses.dataclass(frozen=True)
class Gemma3VisionConfig:
    """Gemma 3's SigLIP encoder and multimodal projector (see `models/vision/gemma3.py`); field names follow
    transformers' `SiglipVisionConfig` / `Gemma3Config`."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int  # square images, resized by the processor
    patch_size: int
    image_token_id: int
    mm_tokens_per_image: int  # the patch grid is average-pooled to sqrt(this) per side
    num_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def pool(self) -> int:
        """Side of the average-pooling window over the patch grid."""
        return self.patches_per_side // int(self.mm_tokens_per_image**0.5)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs to know; hashable so it can live as static module state."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope: RopeConfig = RopeConfig()
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    # Sliding window per layer (None = full attention); length num_hidden_layers.
    layer_windows: tuple[int | None, ...] = ()
    # Rotary settings per layer (Gemma 3: local layers use another base); empty = `rope` everywhere.
    layer_ropes: tuple[RopeConfig, ...] = ()
    # Gemma: RMSNorm scales by (norm_offset + weight), computed in float32 before the cast back.
    norm_offset: float = 0.0
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(hidden_size), in the compute dtype
    # Gemma 2/3 "sandwich" block: norms after attention and MLP outputs too (post_attention_layernorm is
    # then the attention-output norm and pre_feedforward_layernorm the MLP-input norm).
    post_norms: bool = False
    query_scale: float | None = None  # attention logit scale; None = head_dim ** -0.5
    attn_soft_cap: float | None = None  # cap * tanh(logits / cap) on attention logits (Gemma 2)
    final_soft_cap: float | None = None  # the same on the output logits (Gemma 2/3)
    # Phi-3: one `qkv_proj` and one `gate_up_proj` Linear (HF's and PEFT's names), split after the matmul.
    fused_qkv: bool = False
    fused_gate_up: bool = False
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # storage dtype of parameters
    moe: MoeConfig | None = None  # Mixture-of-Experts feed-forward (None: dense MLPs everywhere)
    # Multi-head latent attention (deepseek_v3) instead of grouped-query attention; `head_dim` is then
    # the rotary dim (qk_rope_head_dim, as in HF's config) and num_key_value_heads = num_attention_heads.
    mla: MlaConfig | None = None
    # Image (and video) tower of a vision-language model: Qwen2-VL family, InternVL or Gemma 3.
    vision: Qwen2VLVisionConfig | InternVisionConfig | Gemma3VisionConfig | None = None
    # Runs of identical layers stored stacked (`[layers, ...]`) and run under one `jax.lax.scan`
    # (models/scan.py): one compiled layer body instead of one per layer. False: one module per layer.
    scan_layers: bool = True
    # The original HF config as JSON, written back by `save_pretrained`.
    hf_config_json: str = dataclasses.field(default="{}", compare=False, repr=False)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return to_jnp_dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return to_jnp_dtype(self.param_dtype)

    @property
    def hf_config(self) -> dict[str, Any]:
        return json.loads(self.hf_config_json)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def layer_rope(self, layer_idx: int) -> RopeConfig:
        """The rotary settings of one layer (`layer_ropes` when set, else the model-wide `rope`)."""
        return self.layer_ropes[layer_idx] if self.layer_ropes else self.rope
