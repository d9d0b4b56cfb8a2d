"""Gemma 3 image-text (transformers' `Gemma3ForConditionalGeneration`): a SigLIP encoder turns each
square image into a grid of patch features, the projector average-pools the grid to `mm_tokens_per_image`
features, normalises them (Gemma's `1 + w` RMSNorm) and projects them into the language model's width;
they replace the image tokens of the one decoder (`models/decoder.py`), where the tokens of one image
attend to each other bidirectionally (transformers' `token_type_ids` mask) and everything else stays causal.

SigLIP (HF `vision_tower.vision_model.*`): Conv2d patch embedding as a matmul (weight in HF's layout),
learned position embeddings, pre-norm blocks (LayerNorm, attention with biases, GELU-tanh MLP), a final
LayerNorm. The attention-pooling head of SigLIP is not used by Gemma 3 (nor built).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.kernels import attention

from ..config import Gemma3VisionConfig, ModelConfig
from ..decoder import CausalLM, KVCache
from ..layers import Linear, RMSNorm
from .common import LayerNorm, VisionMLP, run_layer, scatter_features


def gemma3_vision_config(hf: dict[str, Any]) -> Gemma3VisionConfig:
    """The SigLIP tower and projector of a `gemma3` config (`vision_config`, `mm_tokens_per_image`)."""
    vis = hf["vision_config"]
    return Gemma3VisionConfig(
        hidden_size=vis["hidden_size"],
        intermediate_size=vis["intermediate_size"],
        num_hidden_layers=vis["num_hidden_layers"],
        num_attention_heads=vis["num_attention_heads"],
        image_size=vis["image_size"],
        patch_size=vis["patch_size"],
        image_token_id=hf.get("image_token_id", hf.get("image_token_index")),
        mm_tokens_per_image=hf.get("mm_tokens_per_image", 256),
        num_channels=vis.get("num_channels", 3),
        hidden_act=vis.get("hidden_act", "gelu_pytorch_tanh"),
        layer_norm_eps=vis.get("layer_norm_eps", 1e-6),
    )


class Embeddings(nnx.Module):
    """Patch embedding (Conv2d as a matmul; `patch_embedding` keeps HF's `[hidden, C, P, P]`) plus learned
    position embeddings: `[images, C, H, W] -> [images, patches, hidden]`, patches in row-major order."""

    def __init__(self, cfg: Gemma3VisionConfig, *, dtype, param_dtype, init_std: float, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        init = jax.nn.initializers.normal(init_std)
        shape = (cfg.hidden_size, cfg.num_channels, cfg.patch_size, cfg.patch_size)
        self.patch_weight = nnx.Param(init(rngs.params(), shape, param_dtype), logical_axes=("embed", None, None, None))
        self.patch_bias = nnx.Param(jnp.zeros((cfg.hidden_size,), param_dtype), logical_axes=("embed",))
        patches = cfg.patches_per_side**2
        self.position_embedding = nnx.Param(
            init(rngs.params(), (patches, cfg.hidden_size), param_dtype), logical_axes=(None, "embed")
        )

    def __call__(self, pixels: jax.Array) -> jax.Array:
        images, c, _, _ = pixels.shape
        g, p = self.cfg.patches_per_side, self.cfg.patch_size
        x = pixels.astype(self.dtype).reshape(images, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
        x = x.reshape(images, g * g, c * p * p)  # [images, patches, C * P * P]
        w = self.patch_weight[...].astype(self.dtype)
        x = x @ w.reshape(w.shape[0], -1).T + self.patch_bias[...].astype(self.dtype)
        return x + self.position_embedding[...].astype(self.dtype)


class SiglipAttention(nnx.Module):
    """Bidirectional multi-head attention over one image's patches, q/k/v/out projections with biases."""

    def __init__(self, cfg: Gemma3VisionConfig, param_dtype, **kw):
        self.heads, e = cfg.num_attention_heads, cfg.hidden_size
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, Linear(e, e, axes=("embed", "heads"), use_bias=True, param_dtype=param_dtype, **kw))
        self.out_proj = Linear(e, e, axes=("heads", "embed"), use_bias=True, param_dtype=param_dtype, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[images, patches, hidden] -> [images, patches, hidden]`."""
        images, n, e = x.shape
        split = lambda t: t.reshape(images, n, self.heads, e // self.heads)  # noqa: E731  [images, patches, heads, d]
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = attention(q, k, v, segment_ids=jnp.ones((images, n), jnp.int32), causal=False)
        return self.out_proj(out.reshape(images, n, e))


class SiglipLayer(nnx.Module):
    """`x += attn(layer_norm1(x)); x += mlp(layer_norm2(x))`."""

    def __init__(self, cfg: Gemma3VisionConfig, param_dtype, **kw):
        norm = dict(eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, **norm)
        self.self_attn = SiglipAttention(cfg, param_dtype, **kw)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, **norm)
        self.mlp = VisionMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, param_dtype, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipVisionModel(nnx.Module):
    """HF's `vision_tower.vision_model`: embeddings, encoder layers, final LayerNorm."""

    def __init__(self, cfg: Gemma3VisionConfig, *, dtype, param_dtype, init_std: float, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, init_std=init_std, rngs=rngs)
        self.embeddings = Embeddings(cfg, param_dtype=param_dtype, **kw)
        self.layers = nnx.List([SiglipLayer(cfg, param_dtype, **kw) for _ in range(cfg.num_hidden_layers)])
        self.post_layernorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.remat = False  # --vit_gradient_checkpointing: recompute each layer in the backward pass

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """`[images, C, H, W] -> [images, patches, hidden]` (the last hidden state)."""
        x = self.embeddings(pixels)
        for layer in self.layers:
            x = run_layer(layer, self.remat, x)
        return self.post_layernorm(x)


class Projector(nnx.Module):
    """HF's `multi_modal_projector`: average-pool the patch grid, `1 + w` RMSNorm, then a bias-free
    projection `mm_input_projection_weight` `[vision_hidden, text_hidden]` (HF's layout is already ours)."""

    def __init__(self, cfg: Gemma3VisionConfig, out_features: int, *, dtype, param_dtype, init_std: float, rngs):
        self.cfg, self.dtype = cfg, dtype
        self.mm_soft_emb_norm = RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype, offset=1.0)
        init = jax.nn.initializers.normal(init_std)
        self.mm_input_projection_weight = nnx.Param(
            init(rngs.params(), (cfg.hidden_size, out_features), param_dtype), logical_axes=("mlp", "embed")
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[images, patches, hidden] -> [images, mm_tokens_per_image, text_hidden]`."""
        images, _, e = x.shape
        g, k = self.cfg.patches_per_side, self.cfg.pool
        x = x.reshape(images, g // k, k, g // k, k, e).mean(axis=(2, 4))  # [images, g/k, g/k, hidden]
        x = self.mm_soft_emb_norm(x.reshape(images, -1, e))
        return x @ self.mm_input_projection_weight[...].astype(self.dtype)


def image_blocks(is_image: jax.Array) -> jax.Array:
    """`[b, s]` ids of the runs of image tokens (1, 2, ... per row; 0 for text): transformers'
    `token_type_ids` blocks, inside which Gemma 3 attends bidirectionally."""
    starts = is_image & ~jnp.pad(is_image, ((0, 0), (1, 0)))[:, :-1]
    return jnp.where(is_image, jnp.cumsum(starts, axis=1), 0).astype(jnp.int32)


class Gemma3ForConditionalGeneration(CausalLM):
    """Gemma 3 with images: the decoder (HF `language_model.model.*`, tied or `language_model.lm_head`)
    plus `vision_tower` and `multi_modal_projector`. `hidden_states(input_ids, pixel_values=[images, C, H,
    W])` puts each image's `mm_tokens_per_image` features on its image tokens, in reading order."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.vision_tower = SiglipVisionModel(cfg.vision, **kw)
        self.multi_modal_projector = Projector(cfg.vision, cfg.hidden_size, **kw)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """`[images, C, H, W] -> [images * mm_tokens_per_image, embed]`."""
        x = self.multi_modal_projector(self.vision_tower(pixel_values))
        return x.reshape(-1, x.shape[-1])

    def hidden_states(
        self,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        return_aux_loss: bool = False,
        pixel_values: jax.Array | None = None,
    ):
        """`CausalLM.hidden_states` with the images' features in place of the image tokens, which attend
        to their whole image (with a cache too: a prefill that holds whole images)."""
        batch, seq = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq), jnp.int32)
        embeds, blocks = self.model.embed(input_ids), None
        if pixel_values is not None:
            is_image = input_ids == self.config.vision.image_token_id
            embeds = scatter_features(embeds, is_image, self.image_features(pixel_values))
            blocks = image_blocks(is_image)
        if cache is not None:
            return self.model(input_ids, positions, segment_ids, cache, embeds=embeds, bidirectional_ids=blocks)
        hidden = self.model(input_ids, positions, segment_ids, embeds=embeds, bidirectional_ids=blocks)
        return (hidden, jnp.zeros((), jnp.float32)) if return_aux_loss else hidden

    def __call__(self, input_ids, *, positions=None, segment_ids=None, pixel_values=None):
        hidden = self.hidden_states(input_ids, positions=positions, segment_ids=segment_ids, pixel_values=pixel_values)
        return self.logits(hidden)
