"""Multi-head latent attention (DeepSeek V2/V3, HF `deepseek_v3`), used by `DecoderLayer` when
`ModelConfig.mla` is set.

Queries come from one `q_proj`, or (with `q_lora_rank`) from a low-rank path
`q_a_proj -> q_a_layernorm -> q_b_proj`. Keys and values come from a compressed latent:
`kv_a_proj_with_mqa` gives `kv_lora_rank` latent dims plus `qk_rope_head_dim` rotary key dims shared by
every head; the latent is normed (`kv_a_layernorm`) and expanded by `kv_b_proj` into per-head
`k_nope` (`qk_nope_head_dim`) and `v` (`v_head_dim`). Per head, `q = [q_nope, rope(q_rot)]` and
`k = [k_nope, rope(k_rot)]`; the logit scale is `qk_head_dim ** -0.5` times yarn's `mscale_all_dim`
correction squared (set by the config adapter as `query_scale`, as transformers computes it).

Module names are HF's, so LoRA `target_modules` (q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj,
o_proj) line up with PEFT adapters. The attention kernels take one head_dim for q, k and v, so the
shorter of `qk_head_dim` / `v_head_dim` is zero-padded to the longer (zero query/key dims add nothing
to the logits, zero value dims are sliced off the output). The KV cache holds these full per-head
keys and values `[batch, max_len, heads, cache_head_dim]`: simple and exact, though a cache of the
latent (`kv_lora_rank + qk_rope_head_dim` per token) would be far smaller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.kernels import attention

from .config import ModelConfig
from .layers import Linear, RMSNorm, apply_rotary, cached_attention

# transformers builds q_a_layernorm and kv_a_layernorm with DeepseekV3RMSNorm's default eps, not rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def _pad_last(x: jax.Array, width: int) -> jax.Array:
    """Zero-pad the last axis of `x` to `width`."""
    extra = width - x.shape[-1]
    return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


class MLAttention(nnx.Module):
    """`[batch, seq, embed] -> [batch, seq, embed]`; the same call signature as `decoder.Attention`."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, rngs: nnx.Rngs):
        del layer_idx  # every deepseek_v3 layer attends alike (no sliding windows)
        self.cfg = cfg
        mla = cfg.mla
        e, h = cfg.hidden_size, cfg.num_attention_heads
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, init_std=cfg.initializer_range, rngs=rngs)
        norm_kw = dict(eps=LATENT_NORM_EPS, axis_name=None, param_dtype=cfg.params_dtype)
        # The latent (rank) dims stay replicated: they are small and feed every head.
        if mla.q_lora_rank is None:
            self.q_proj = Linear(e, h * mla.qk_head_dim, axes=("embed", "heads"), **kw)
        else:
            self.q_a_proj = Linear(e, mla.q_lora_rank, axes=("embed", None), use_bias=cfg.qkv_bias, **kw)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, **norm_kw)
            self.q_b_proj = Linear(mla.q_lora_rank, h * mla.qk_head_dim, axes=(None, "heads"), **kw)
        self.kv_a_proj_with_mqa = Linear(
            e, mla.kv_lora_rank + mla.qk_rope_head_dim, axes=("embed", None), use_bias=cfg.qkv_bias, **kw
        )
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, **norm_kw)
        self.kv_b_proj = Linear(
            mla.kv_lora_rank, h * (mla.qk_nope_head_dim + mla.v_head_dim), axes=(None, "heads"), **kw
        )
        self.o_proj = Linear(h * mla.v_head_dim, e, axes=("heads", "embed"), use_bias=cfg.o_bias, **kw)

    def _rope(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """RoPE on the rotary part `[b, s, heads, rope]`. Interleaved pairs (HF's rope_interleave) are
        gathered to `[evens, odds]` first, which is what transformers' interleaved rotation returns."""
        if self.cfg.mla.rope_interleave:
            x = jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
        return apply_rotary(x, cos, sin)

    def _qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        """Per-head q, k, v, each `[b, s, heads, cache_head_dim]` (zero-padded)."""
        mla, h = self.cfg.mla, self.cfg.num_attention_heads
        batch, seq, _ = x.shape
        if mla.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.reshape(batch, seq, h, mla.qk_head_dim)  # [b, s, h, nope + rope]
        q_nope, q_rot = jnp.split(q, [mla.qk_nope_head_dim], axis=-1)
        latent, k_rot = jnp.split(self.kv_a_proj_with_mqa(x), [mla.kv_lora_rank], axis=-1)  # [b, s, r], [b, s, rope]
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).reshape(batch, seq, h, -1)  # [b, s, h, nope + v]
        k_nope, v = jnp.split(kv, [mla.qk_nope_head_dim], axis=-1)
        k_rot = self._rope(k_rot[:, :, None, :], cos, sin)  # [b, s, 1, rope], shared by all heads
        q = jnp.concatenate([q_nope, self._rope(q_rot, cos, sin)], axis=-1)
        k = jnp.concatenate([k_nope, jnp.broadcast_to(k_rot, (batch, seq, h, mla.qk_rope_head_dim))], axis=-1)
        d = mla.cache_head_dim
        return _pad_last(q, d), _pad_last(k, d), _pad_last(v, d)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, cache=None):
        """`[batch, seq, embed] -> [batch, seq, embed]`; with `cache=(keys, values, kv_segment_ids, index)`
        it returns `(out, (keys, values))`, keys/values `[b, max_len, heads, cache_head_dim]`."""
        cfg = self.cfg
        batch, seq, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        options = dict(scale=cfg.query_scale)
        if cache is not None:
            out, kv = cached_attention(q, k, v, segment_ids, cache, **options)
        else:
            out = attention(q, k, v, segment_ids=segment_ids, causal=True, **options)
        out = out[..., : cfg.mla.v_head_dim].reshape(batch, seq, -1)  # [b, s, h * v]
        out = self.o_proj(out)
        return out if cache is None else (out, kv)
