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


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters in transformers' `rope_parameters` vocabulary."""

    rope_type: str = "default"  # default | linear | dynamic | yarn | llama3
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
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # storage dtype of parameters
    moe: MoeConfig | None = None  # Mixture-of-Experts feed-forward (None: dense MLPs everywhere)
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
        return dataclasses.replace(self, **changes)
