"""InternVL (transformers' `InternVLForConditionalGeneration`): the InternViT encoder runs on each
448x448-style tile, its patch features are pixel-shuffled (2x2 neighbours -> one wider feature) and
projected by an MLP into the language model's width, then replace the `<IMG_CONTEXT>` tokens of the one
decoder (`models/decoder.py`), which keeps plain 1-D rotary positions.

InternViT (HF `vision_tower.*`): Conv2d patch embedding as a matmul (weight in HF's layout), a CLS
token and absolute position embeddings, pre-norm blocks with layer scales (`lambda_1`, `lambda_2`),
optional RMSNorm over the whole q / k projections, bidirectional attention within each tile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.kernels import attention

from ..config import InternVisionConfig, ModelConfig
from ..decoder import CausalLM, KVCache
from ..layers import Linear, RMSNorm, activation
from .common import LayerNorm, VisionMLP, run_layer, scatter_features


def _norm(cfg: InternVisionConfig, param_dtype) -> nnx.Module:
    if cfg.norm_type == "rms_norm":
        return RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
    return LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)


class PatchEmbeddings(nnx.Module):
    """The Conv2d patch embedding as a matmul; `weight` keeps HF's `[hidden, C, P, P]` layout."""

    def __init__(self, cfg: InternVisionConfig, *, dtype, param_dtype, init_std: float, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        shape = (cfg.hidden_size, cfg.num_channels, *cfg.patch_size)
        init = jax.nn.initializers.normal(init_std)
        self.weight = nnx.Param(init(rngs.params(), shape, param_dtype), logical_axes=("embed", None, None, None))
        self.bias = nnx.Param(jnp.zeros((cfg.hidden_size,), param_dtype), logical_axes=("embed",))

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """`[tiles, C, H, W] -> [tiles, patches, hidden]`, patches in row-major order."""
        tiles, c, _, _ = pixels.shape
        (gh, gw), (ph, pw) = self.cfg.grid, self.cfg.patch_size
        x = pixels.astype(self.dtype).reshape(tiles, c, gh, ph, gw, pw).transpose(0, 2, 4, 1, 3, 5)
        x = x.reshape(tiles, gh * gw, c * ph * pw)  # [tiles, patches, C * P * P]
        w = self.weight[...].astype(self.dtype)
        return x @ w.reshape(w.shape[0], -1).T + self.bias[...].astype(self.dtype)


class Embeddings(nnx.Module):
    """Patch embeddings after a CLS token, plus absolute position embeddings: `[tiles, 1 + patches, hidden]`."""

    def __init__(self, cfg: InternVisionConfig, *, dtype, param_dtype, init_std: float, rngs: nnx.Rngs):
        self.patch_embeddings = PatchEmbeddings(cfg, dtype=dtype, param_dtype=param_dtype, init_std=init_std, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, cfg.hidden_size), param_dtype), logical_axes=(None, None, "embed"))
        patches = cfg.grid[0] * cfg.grid[1]
        self.position_embeddings = nnx.Param(
            jnp.zeros((1, patches + 1, cfg.hidden_size), param_dtype), logical_axes=(None, None, "embed")
        )

    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = self.patch_embeddings(pixels)  # [tiles, patches, hidden]
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        return jnp.concatenate([cls, x], axis=1) + self.position_embeddings[...].astype(x.dtype)


class InternAttention(nnx.Module):
    """Bidirectional multi-head attention over one tile's tokens, optional q/k RMSNorm over all heads."""

    def __init__(self, cfg: InternVisionConfig, param_dtype, **kw):
        self.cfg = cfg
        e = cfg.hidden_size
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(
                self,
                name,
                Linear(e, e, axes=("embed", "heads"), use_bias=cfg.attention_bias, param_dtype=param_dtype, **kw),
            )
        self.projection_layer = Linear(e, e, axes=("heads", "embed"), use_bias=True, param_dtype=param_dtype, **kw)
        norm = dict(eps=1e-6, param_dtype=param_dtype)
        self.q_norm = RMSNorm(e, **norm) if cfg.use_qk_norm else None
        self.k_norm = RMSNorm(e, **norm) if cfg.use_qk_norm else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[tiles, tokens, hidden] -> [tiles, tokens, hidden]`."""
        tiles, n, e = x.shape
        heads = self.cfg.num_attention_heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        split = lambda t: t.reshape(tiles, n, heads, e // heads)  # noqa: E731  [tiles, tokens, heads, head_dim]
        out = attention(split(q), split(k), split(v), segment_ids=jnp.ones((tiles, n), jnp.int32), causal=False)
        return self.projection_layer(out.reshape(tiles, n, e))


class InternLayer(nnx.Module):
    """`x += lambda_1 * attn(norm_before(x)); x += lambda_2 * mlp(norm_after(x))`."""

    def __init__(self, cfg: InternVisionConfig, param_dtype, **kw):
        e = cfg.hidden_size
        self.layernorm_before = _norm(cfg, param_dtype)
        self.attention = InternAttention(cfg, param_dtype, **kw)
        self.layernorm_after = _norm(cfg, param_dtype)
        self.mlp = VisionMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, param_dtype, **kw)
        self.lambda_1 = nnx.Param(jnp.full((e,), 0.1, param_dtype), logical_axes=("embed",))
        self.lambda_2 = nnx.Param(jnp.full((e,), 0.1, param_dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.lambda_1[...].astype(x.dtype) * self.attention(self.layernorm_before(x))
        return x + self.lambda_2[...].astype(x.dtype) * self.mlp(self.layernorm_after(x))


class InternEncoder(nnx.Module):
    """The stack of InternViT layers (HF `encoder.layer.{i}`)."""

    def __init__(self, cfg: InternVisionConfig, param_dtype, **kw):
        self.layer = nnx.List([InternLayer(cfg, param_dtype, **kw) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x: jax.Array, remat: bool = False) -> jax.Array:
        for layer in self.layer:
            x = run_layer(layer, remat, x)
        return x


class InternVisionModel(nnx.Module):
    """HF's `vision_tower`: embeddings, the encoder layers and (without mean pooling) a final LayerNorm."""

    def __init__(self, cfg: InternVisionConfig, *, dtype, param_dtype, init_std: float, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, init_std=init_std, rngs=rngs)
        self.embeddings = Embeddings(cfg, param_dtype=param_dtype, **kw)
        self.encoder = InternEncoder(cfg, param_dtype, **kw)
        self.layernorm = (
            None
            if cfg.use_mean_pooling
            else LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        )
        self.remat = False  # --vit_gradient_checkpointing: recompute each layer in the backward pass

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """`[tiles, C, H, W] -> [tiles, 1 + patches, hidden]` (last hidden state, CLS first)."""
        x = self.encoder(self.embeddings(pixels), self.remat)
        return x if self.layernorm is None else self.layernorm(x)


def pixel_shuffle(x: jax.Array, ratio: float) -> jax.Array:
    """transformers' InternVL `pixel_shuffle` on `[tiles, d1, d2, c]`: `[tiles, d1 * r, d2 * r, c / r^2]`."""
    tiles, d1, d2, c = x.shape
    x = x.reshape(tiles, d1, int(d2 * ratio), int(c / ratio)).transpose(0, 2, 1, 3)
    x = x.reshape(tiles, int(d2 * ratio), int(d1 * ratio), int(c / ratio**2))
    return x.transpose(0, 2, 1, 3)


class Projector(nnx.Module):
    """HF's `multi_modal_projector`: LayerNorm (eps 1e-5) -> linear_1 -> act -> linear_2."""

    def __init__(self, cfg: InternVisionConfig, out_features: int, param_dtype, **kw):
        wide = int(cfg.hidden_size / cfg.downsample_ratio**2)
        self.layer_norm = LayerNorm(wide, eps=1e-5, param_dtype=param_dtype)
        self.linear_1 = Linear(wide, out_features, axes=("mlp", "embed"), use_bias=True, param_dtype=param_dtype, **kw)
        self.linear_2 = Linear(
            out_features, out_features, axes=("embed", "embed"), use_bias=True, param_dtype=param_dtype, **kw
        )
        self.act = activation(cfg.projector_hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))


class InternVLForConditionalGeneration(CausalLM):
    """InternVL: the decoder (HF `language_model.model.*`, `language_model.lm_head`) plus `vision_tower`
    and `multi_modal_projector`. `hidden_states(input_ids, pixel_values=[tiles, C, H, W])` puts each
    tile's `tokens_per_tile` features, tile after tile, on the image tokens in reading order."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        kw = dict(dtype=cfg.compute_dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.vision_tower = InternVisionModel(cfg.vision, param_dtype=cfg.params_dtype, **kw)
        self.multi_modal_projector = Projector(cfg.vision, cfg.hidden_size, cfg.params_dtype, **kw)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """`[tiles, C, H, W] -> [tiles * tokens_per_tile, embed]`."""
        cfg = self.config.vision
        x = self.vision_tower(pixel_values)[:, 1:]  # [tiles, patches, hidden]: CLS dropped ("default" strategy)
        x = pixel_shuffle(x.reshape(x.shape[0], *cfg.grid, -1), cfg.downsample_ratio)
        return self.multi_modal_projector(x.reshape(-1, x.shape[-1]))

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
        """`CausalLM.hidden_states` with the image tiles' features in place of the image tokens."""
        batch, seq = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq), jnp.int32)
        embeds = self.model.embed(input_ids)
        if pixel_values is not None:
            is_image = input_ids == self.config.vision.image_token_id
            embeds = scatter_features(embeds, is_image, self.image_features(pixel_values))
        if cache is not None:
            return self.model(input_ids, positions, segment_ids, cache, embeds=embeds)
        hidden = self.model(input_ids, positions, segment_ids, embeds=embeds)
        return (hidden, jnp.zeros((), jnp.float32)) if return_aux_loss else hidden

    def __call__(self, input_ids, *, positions=None, segment_ids=None, pixel_values=None):
        hidden = self.hidden_states(input_ids, positions=positions, segment_ids=segment_ids, pixel_values=pixel_values)
        return self.logits(hidden)
