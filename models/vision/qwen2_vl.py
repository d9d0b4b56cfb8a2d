"""Qwen2-VL and Qwen2.5-VL: a vision transformer whose merged patch features replace the image/video
pad tokens of the one decoder (`models/decoder.py`), which rotates with M-RoPE (`layers.mrope_angles`).

Vision tower (HF `visual.*`): the Conv3d patch embedding, whose stride equals its kernel, is a matmul
over flattened `[channels, temporal_patch, patch, patch]` patches (its weight keeps HF's 5-D layout);
2-D rotary over (row, column); bidirectional attention inside each frame. Qwen2.5-VL uses RMSNorm, a
SwiGLU MLP and window attention outside `fullatt_block_indexes`. As transformers does, the patches
are put in window order (whole merge units move, so nothing but the order changes) and the merged
features are put back: every window and every frame is then one contiguous run of segment ids, which
block-sparse attention kernels skip across. The patch merger concatenates each
`spatial_merge_size`^2 unit of patches and projects it to the language model's width.

The host supplies the layout from `image_grid_thw` (`grid.patch_layout`, `grid.mrope_positions`), so
the model itself is shape-static and jit-friendly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.kernels import attention

from ..config import ModelConfig, Qwen2VLVisionConfig
from ..decoder import CausalLM, KVCache
from ..layers import Linear, RMSNorm, activation, apply_rotary
from . import grid
from .common import LayerNorm, run_layer, scatter_features


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionInputs:
    """The patches of every image and video of a batch, with their host-computed layout.

    Images come first, then videos, each in the order their pad tokens appear in the batch; inside,
    patches are in window order (`grid.window_order`); rows beyond the real patches are padding.
    """

    pixel_values: jax.Array  # [patches, channels * temporal_patch * patch * patch]
    positions: jax.Array  # [patches, 2] int32: row, column of each patch in its frame
    frame_ids: jax.Array  # [patches] int32: attention segment of the whole-frame blocks (0 = padding)
    window_ids: jax.Array  # [patches] int32: attention segment of the windowed blocks (Qwen2.5-VL)
    unit_restore: jax.Array  # [patches / merge_unit] int32: merged feature rows back in processor order
    image_tokens: jax.Array  # [] int32: leading feature rows that belong to images (the rest: videos)

    @classmethod
    def build(
        cls,
        cfg: Qwen2VLVisionConfig,
        pixel_values=None,
        image_grid_thw=None,
        *,
        pixel_values_videos=None,
        video_grid_thw=None,
        num_patches: int | None = None,
    ) -> "VisionInputs":
        """Inputs for the image processor's `pixel_values` `[N, patch_dim]` and `image_grid_thw` `[n, 3]`
        (t, h, w), and the video processor's equivalents, zero-padded to `num_patches` rows (a fixed
        budget keeps one compiled shape)."""
        empty = np.zeros((0, cfg.patch_dim), np.float32)
        pixels = [np.asarray(empty if p is None else p, np.float32) for p in (pixel_values, pixel_values_videos)]
        for name, p in zip(("pixel_values", "pixel_values_videos"), pixels):
            if p.ndim != 2 or p.shape[1] != cfg.patch_dim:
                raise ValueError(f"{name} must be [patches, {cfg.patch_dim}], got {list(p.shape)}")
        grids = [
            np.zeros((0, 3), np.int64) if g is None else np.asarray(g).reshape(-1, 3)
            for g in (image_grid_thw, video_grid_thw)
        ]
        layout = grid.patch_layout(np.concatenate(grids), cfg, num_patches)
        real = pixels[0].shape[0] + pixels[1].shape[0]
        described = int((layout["frame_ids"] > 0).sum())
        if described != real:
            raise ValueError(f"pixel_values have {real} patches, the grids describe {described}")
        padded = np.zeros((layout["frame_ids"].shape[0], cfg.patch_dim), np.float32)
        padded[:real] = np.concatenate(pixels)
        units = grid.window_order(layout["window_ids"], cfg.merge_unit)  # [units]
        order = (units[:, None] * cfg.merge_unit + np.arange(cfg.merge_unit)).reshape(-1)  # [patches]
        arrays = [padded] + [layout[k] for k in ("positions", "frame_ids", "window_ids")]
        restore = np.argsort(units).astype(np.int32)
        image_tokens = np.int32(np.prod(grids[0], axis=-1).sum() // cfg.merge_unit)
        return cls(*(jnp.asarray(a[order]) for a in arrays), jnp.asarray(restore), jnp.asarray(image_tokens))


def _norm(cfg: Qwen2VLVisionConfig, features: int, param_dtype) -> nnx.Module:
    if cfg.kind == "qwen2_5_vl":
        return RMSNorm(features, eps=1e-6, param_dtype=param_dtype)
    return LayerNorm(features, param_dtype=param_dtype)


def vision_rotary(positions: jax.Array, cfg: Qwen2VLVisionConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin `[1, patches, head_dim]` of the 2-D rotary: a quarter of the head's frequencies turn
    with the row, a quarter with the column, and the pattern repeats over the second half."""
    spatial = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))  # [head_dim // 4]
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [patches, 2, head_dim // 4]
    half = freqs.reshape(freqs.shape[0], -1)  # [patches, head_dim // 2]: rows' then columns' angles
    emb = jnp.concatenate([half, half], axis=-1)[None]  # [1, patches, head_dim]
    return jnp.cos(emb), jnp.sin(emb)


class VisionAttention(nnx.Module):
    """Bidirectional attention of patches within their segment, with a fused `qkv` projection."""

    def __init__(self, cfg: Qwen2VLVisionConfig, **kw):
        self.cfg = cfg
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, axes=("embed", "heads"), use_bias=True, **kw)
        self.proj = Linear(cfg.hidden_size, cfg.hidden_size, axes=("heads", "embed"), use_bias=True, **kw)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """`[rows, patches, hidden] -> [rows, patches, hidden]`; `segment_ids` `[rows, patches]` (one row: the
        whole batch's patches; several: training rows, `rows.row_features`)."""
        b, n, _ = x.shape
        h, d = self.cfg.num_heads, self.cfg.head_dim
        q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3 * h, d), 3, axis=2)  # [rows, patches, heads, head_dim]
        # transformers rotates in float32 whatever the compute dtype
        q = apply_rotary(q.astype(jnp.float32), cos, sin).astype(v.dtype)
        k = apply_rotary(k.astype(jnp.float32), cos, sin).astype(v.dtype)
        out = attention(q, k, v, segment_ids=segment_ids, causal=False)
        return self.proj(out.reshape(b, n, h * d))


class VisionMLP(nnx.Module):
    """Qwen2-VL: `fc2(act(fc1(x)))`; Qwen2.5-VL: `down(act(gate(x)) * up(x))`, all with biases."""

    def __init__(self, cfg: Qwen2VLVisionConfig, **kw):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gated = cfg.kind == "qwen2_5_vl"
        if self.gated:
            self.gate_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=True, **kw)
            self.up_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=True, **kw)
            self.down_proj = Linear(m, e, axes=("mlp", "embed"), use_bias=True, **kw)
        else:
            self.fc1 = Linear(e, m, axes=("embed", "mlp"), use_bias=True, **kw)
            self.fc2 = Linear(m, e, axes=("mlp", "embed"), use_bias=True, **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nnx.Module):
    """Pre-norm residual block: `x += attn(norm1(x)); x += mlp(norm2(x))`."""

    def __init__(self, cfg: Qwen2VLVisionConfig, param_dtype, **kw):
        self.norm1 = _norm(cfg, cfg.hidden_size, param_dtype)
        self.norm2 = _norm(cfg, cfg.hidden_size, param_dtype)
        self.attn = VisionAttention(cfg, param_dtype=param_dtype, **kw)
        self.mlp = VisionMLP(cfg, param_dtype=param_dtype, **kw)

    def __call__(self, x, cos, sin, segment_ids):
        x = x + self.attn(self.norm1(x), cos, sin, segment_ids)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nnx.Module):
    """The Conv3d patch embedding as a matmul; `proj.weight` keeps HF's `[hidden, C, T, P, P]` layout."""

    def __init__(self, cfg: Qwen2VLVisionConfig, *, dtype, param_dtype, init_std: float, rngs: nnx.Rngs):
        self.dtype = dtype
        shape = (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        init = jax.nn.initializers.normal(init_std)
        self.weight = nnx.Param(init(rngs.params(), shape, param_dtype), logical_axes=("embed", None, None, None, None))

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """`[patches, patch_dim] -> [patches, hidden]`."""
        w = self.weight[...].astype(self.dtype)
        return pixels.astype(self.dtype) @ w.reshape(w.shape[0], -1).T


class PatchMerger(nnx.Module):
    """Norm, then each merge unit's patches concatenated `[units, hidden * unit]` -> MLP -> `[units, out]`."""

    def __init__(self, cfg: Qwen2VLVisionConfig, param_dtype, **kw):
        self.unit = cfg.merge_unit
        wide = cfg.hidden_size * cfg.merge_unit
        self.ln_q = _norm(cfg, cfg.hidden_size, param_dtype)
        self.mlp_0 = Linear(wide, wide, axes=("embed", "mlp"), use_bias=True, param_dtype=param_dtype, **kw)
        self.mlp_2 = Linear(
            wide, cfg.out_hidden_size, axes=("mlp", "embed"), use_bias=True, param_dtype=param_dtype, **kw
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x)
        x = x.reshape(-1, x.shape[-1] * self.unit)
        return self.mlp_2(jax.nn.gelu(self.mlp_0(x), approximate=False))


class VisionTransformer(nnx.Module):
    """HF's `visual`: patch embedding, vision blocks and the patch merger."""

    def __init__(self, cfg: Qwen2VLVisionConfig, *, dtype, param_dtype, init_std: float, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=dtype, init_std=init_std, rngs=rngs)
        self.patch_embed = PatchEmbed(cfg, param_dtype=param_dtype, **kw)
        self.blocks = nnx.List([VisionBlock(cfg, param_dtype, **kw) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, param_dtype, **kw)
        self.remat = False  # --vit_gradient_checkpointing: recompute each block in the backward pass

    def __call__(self, inputs: VisionInputs) -> jax.Array:
        """Merged features `[patches / merge_unit, out_hidden]`, one row per image/video pad token."""
        cos, sin = vision_rotary(inputs.positions, self.cfg)
        frames, windows = inputs.frame_ids[None], inputs.window_ids[None]  # [1, patches]
        x = self.patch_embed(inputs.pixel_values)[None]  # [1, patches, hidden]
        for i, block in enumerate(self.blocks):
            windowed = self.cfg.window_size and i not in self.cfg.fullatt_block_indexes
            x = run_layer(block, self.remat, x, cos, sin, windows if windowed else frames)
        return self.merger(x[0])[inputs.unit_restore]


class Qwen2VLForConditionalGeneration(CausalLM):
    """Qwen2-VL / Qwen2.5-VL: the decoder (`model.*`, `lm_head`) plus the vision tower (`visual.*`).

    `hidden_states(input_ids, positions=..., vision=VisionInputs.build(...))`: `positions` `[3, batch, seq]`
    from `grid.mrope_positions`; without `vision` it is the text-only language model.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.visual = VisionTransformer(
            cfg.vision,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            init_std=cfg.initializer_range,
            rngs=rngs,
        )

    def embed(self, input_ids: jax.Array, vision: VisionInputs | None) -> jax.Array:
        """Token embeddings `[b, s, e]` with the vision features of `vision` in place of the pad tokens."""
        embeds = self.model.embed(input_ids)
        if vision is None:
            return embeds
        cfg, features = self.config.vision, self.visual(vision)  # [feature rows, embed]
        embeds = scatter_features(embeds, input_ids == cfg.image_token_id, features)
        return scatter_features(embeds, input_ids == cfg.video_token_id, features, vision.image_tokens)

    def hidden_states(
        self,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        return_aux_loss: bool = False,
        vision: VisionInputs | None = None,
    ):
        """`CausalLM.hidden_states` with image/video features scattered into the embeddings."""
        batch, seq = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq), jnp.int32)
        embeds = self.embed(input_ids, vision)
        if cache is not None:
            return self.model(input_ids, positions, segment_ids, cache, embeds=embeds)
        hidden = self.model(input_ids, positions, segment_ids, embeds=embeds)
        return (hidden, jnp.zeros((), jnp.float32)) if return_aux_loss else hidden

    def __call__(self, input_ids, *, positions=None, segment_ids=None, vision=None):
        return self.logits(self.hidden_states(input_ids, positions=positions, segment_ids=segment_ids, vision=vision))
