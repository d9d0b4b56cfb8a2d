"""Tiny random Hugging Face checkpoints built offline, the reference for parity tests."""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers

BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)

TINY_SIGLIP = dict(
    model_type="siglip_vision_model",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=16,
    patch_size=4,
)

CONFIG_CLASSES = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "mistral": transformers.MistralConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
    "phi3": transformers.Phi3Config,
    "qwen3_moe": transformers.Qwen3MoeConfig,
    "mixtral": transformers.MixtralConfig,
    "deepseek_v3": transformers.DeepseekV3Config,
}


def build_hf_model(model_type: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A float32 random HF causal LM with non-trivial norm weights (so a wrong norm formula shows)."""
    torch.manual_seed(seed)
    if model_type == "gemma3":  # image-text Gemma 3: the overrides go to its text model
        config = transformers.Gemma3Config(
            text_config=transformers.Gemma3TextConfig(**{**BASE, **overrides}).to_dict(),
            vision_config=TINY_SIGLIP,
            mm_tokens_per_image=4,
            image_token_index=125,
            boi_token_index=126,
            eoi_token_index=127,
            tie_word_embeddings=overrides.get("tie_word_embeddings", True),  # the top-level flag is the one used
        )
    else:
        config = CONFIG_CLASSES[model_type](**{**BASE, **overrides})
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):  # MoE router: decisive routing, no near-ties
                p.copy_(0.5 * torch.randn_like(p))
                bias = getattr(model.get_submodule(name.removesuffix(".weight")), "e_score_correction_bias", None)
                if bias is not None:  # deepseek_v3's selection bias: non-zero so that using it shows
                    bias.copy_(0.5 * torch.randn_like(bias))
            elif ".experts." in name:  # MoE experts: big enough that a wrong routing shows in the logits
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def save_hf_model(model: transformers.PreTrainedModel, path: str, dtype: torch.dtype | None = None) -> str:
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def hf_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """transformers' float32 logits for `input_ids` [batch, seq]."""
    with torch.no_grad():
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
        mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
        return model(input_ids=ids, attention_mask=mask).logits.float().numpy()


def packed_row(lengths: list[int], seq: int) -> tuple[np.ndarray, np.ndarray]:
    """`(segment_ids, positions)` `[1, seq]` of one packed row: segments of `lengths` numbered from 1,
    positions restarting at 0 in each, padding (segment 0) after them."""
    segment_ids = np.zeros((1, seq), np.int32)
    positions = np.zeros((1, seq), np.int32)
    start = 0
    for k, n in enumerate(lengths):
        segment_ids[0, start : start + n] = k + 1
        positions[0, start : start + n] = np.arange(n)
        start += n
    return segment_ids, positions
