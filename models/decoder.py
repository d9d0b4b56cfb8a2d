"""One decoder for the Llama family (llama, qwen2, qwen3, mistral; mixtral, qwen3_moe with the MoE block
of `moe.py`), parameterised by `ModelConfig`.

Module and parameter names mirror Hugging Face's (`model.layers.3.self_attn.q_proj.kernel`), so the
weight-map table is short and LoRA `target_modules` names are PEFT's names.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.kernels import attention
from swift_jax.parallel.rules import constrain

from .config import ModelConfig
from .layers import Embed, Linear, RMSNorm, activation, apply_rotary, rotary_cos_sin
from .moe import SparseMoE, is_sparse_layer, load_balancing_loss

# Residual-stream activations are sharded over the batch (data, fsdp) at every layer boundary.
ACTIVATION_AXES = ("batch", "seq", "embed_act")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Preallocated keys and values of every layer, for decoding (see `swift_jax.generation`).

    A call with a cache writes its `seq` input tokens at slots `[index, index + seq)` of every row and
    attends to all slots up to each query's own; slots whose `segment_ids` are 0 (left padding, not yet
    written) are never attended to. Every row writes at the same `index` (prompts are left-padded).
    """

    keys: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
    values: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = padding or not yet written
    index: jax.Array  # [] int32: slot of the next input token

    @classmethod
    def create(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
        """An empty cache for `batch` rows of up to `max_len` tokens, in the model's compute dtype."""
        shape = (batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
        empty = tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_hidden_layers))
        return cls(empty, empty, jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
    """Grouped-query self-attention with optional q/k RMSNorm, biases and a sliding window."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.sliding_window = cfg.layer_windows[layer_idx] if cfg.layer_windows else None
        d, h, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.q_proj = Linear(cfg.hidden_size, h * d, axes=("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Linear(cfg.hidden_size, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Linear(cfg.hidden_size, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Linear(h * d, cfg.hidden_size, axes=("heads", "embed"), use_bias=cfg.o_bias, **kw)
        if cfg.qk_norm:
            norm_kw = dict(eps=cfg.rms_norm_eps, axis_name="head_dim", param_dtype=cfg.params_dtype)
            self.q_norm = RMSNorm(d, **norm_kw)
            self.k_norm = RMSNorm(d, **norm_kw)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, cache=None):
        """`[batch, seq, embed] -> [batch, seq, embed]`; with `cache=(keys, values, kv_segment_ids, index)`
        (one layer's slice of a `KVCache`) it returns `(out, (keys, values))` with this call's keys written."""
        cfg = self.cfg
        batch, seq, _ = x.shape
        q = self.q_proj(x).reshape(batch, seq, cfg.num_attention_heads, cfg.head_dim)  # [b, s, h, d]
        k = self.k_proj(x).reshape(batch, seq, cfg.num_key_value_heads, cfg.head_dim)  # [b, s, kv, d]
        v = self.v_proj(x).reshape(batch, seq, cfg.num_key_value_heads, cfg.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            return self._cached(q, k, v, segment_ids, cache)
        out = attention(q, k, v, segment_ids=segment_ids, causal=True, sliding_window=self.sliding_window)
        return self.o_proj(out.reshape(batch, seq, cfg.num_attention_heads * cfg.head_dim))

    def _cached(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, cache):
        """Attention of `q` `[b, s, h, d]` against the cache after writing `k`, `v` at its index."""
        keys, values, kv_segment_ids, index = cache
        keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), index, axis=1)  # [b, max_len, kv, d]
        values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), index, axis=1)
        out = attention(
            q,
            keys,
            values,
            segment_ids=kv_segment_ids,
            q_segment_ids=segment_ids,
            causal=True,
            sliding_window=self.sliding_window,
            q_offset=index,
        )
        batch, seq = q.shape[:2]
        return self.o_proj(out.reshape(batch, seq, -1)), (keys, values)


class MLP(nnx.Module):
    """Gated MLP: `down(act(gate(x)) * up(x))`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, init_std=cfg.initializer_range, rngs=rngs)
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=cfg.mlp_bias, **kw)
        self.up_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=cfg.mlp_bias, **kw)
        self.down_proj = Linear(m, e, axes=("mlp", "embed"), use_bias=cfg.mlp_bias, **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: attention then MLP (or the MoE block, returning `(x, RouterStats)`)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, rngs: nnx.Rngs):
        norm_kw = dict(eps=cfg.rms_norm_eps, param_dtype=cfg.params_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm_kw)
        self.self_attn = Attention(cfg, layer_idx, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm_kw)
        self.mlp = SparseMoE(cfg, rngs=rngs) if is_sparse_layer(cfg, layer_idx) else MLP(cfg, rngs=rngs)

    def _feed_forward(self, x: jax.Array, segment_ids: jax.Array):
        if isinstance(self.mlp, SparseMoE):
            return self.mlp(x, segment_ids > 0)
        return self.mlp(x), None

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, cache=None):
        if cache is not None:  # decoding: also return this layer's updated (keys, values)
            h, kv = self.self_attn(self.input_layernorm(x), cos, sin, segment_ids, cache)
            x = x + h
            return x + self._feed_forward(self.post_attention_layernorm(x), segment_ids)[0], kv
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, segment_ids)
        h, stats = self._feed_forward(self.post_attention_layernorm(x), segment_ids)
        return x + h if stats is None else (x + h, stats)


def _remat_layer(layer: DecoderLayer, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Run a layer under `jax.checkpoint`: its activations are recomputed in the backward pass.

    The layer is split into a pure function of its state, so the weights pass through the checkpoint
    as arguments (never copied), and RNG streams (LoRA dropout) advance as in the plain call.
    """
    graphdef, state = nnx.split(layer)

    def run(state, x, cos, sin, segment_ids):
        module = nnx.merge(graphdef, state)
        return module(x, cos, sin, segment_ids), nnx.state(module, nnx.RngState)

    out, rng_state = jax.checkpoint(run)(state, x, cos, sin, segment_ids)
    nnx.update(layer, rng_state)
    return out


class DecoderModel(nnx.Module):
    """Embedding, the stack of decoder layers and the final norm (HF's `model.*`)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            init_std=cfg.initializer_range,
            rngs=rngs,
        )
        self.layers = nnx.List([DecoderLayer(cfg, i, rngs=rngs) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.params_dtype)
        self.remat = False  # recompute each layer in the backward pass (set by the trainer)

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        cache: KVCache | None = None,
        *,
        with_router_stats: bool = False,
    ):
        """Final-norm hidden states; `with_router_stats` also returns the MoE layers' `RouterStats` list."""
        cfg = self.cfg
        cos, sin = rotary_cos_sin(positions, cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        x = constrain(self.embed_tokens(input_ids), ACTIVATION_AXES)  # [batch, seq, embed]
        if cache is not None:
            return self._cached(x, cos, sin, segment_ids, cache)
        stats = []
        for layer in self.layers:
            if self.remat:
                x = _remat_layer(layer, x, cos, sin, segment_ids)
            else:
                x = layer(x, cos, sin, segment_ids)
            if isinstance(x, tuple):  # an MoE layer: (x, RouterStats)
                x, layer_stats = x
                stats.append(layer_stats)
            x = constrain(x, ACTIVATION_AXES)
        return (self.norm(x), stats) if with_router_stats else self.norm(x)

    def _cached(self, x, cos, sin, segment_ids, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """The layer stack against a KV cache: `(hidden [b, s, embed], cache advanced by s tokens)`."""
        kv_segment_ids = jax.lax.dynamic_update_slice_in_dim(
            cache.segment_ids, segment_ids.astype(jnp.int32), cache.index, axis=1
        )
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, cos, sin, segment_ids, (cache.keys[i], cache.values[i], kv_segment_ids, cache.index))
            x = constrain(x, ACTIVATION_AXES)
            keys.append(k)
            values.append(v)
        new_cache = KVCache(tuple(keys), tuple(values), kv_segment_ids, cache.index + x.shape[1])
        return self.norm(x), new_cache


class CausalLM(nnx.Module):
    """Decoder plus LM head: `model(input_ids, positions=..., segment_ids=...) -> logits [b, s, vocab]`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.model = DecoderModel(cfg, rngs=rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                axes=("embed", "vocab"),
                dtype=cfg.compute_dtype,
                param_dtype=cfg.params_dtype,
                init_std=cfg.initializer_range,
                rngs=rngs,
            )
        )

    def hidden_states(
        self,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        return_aux_loss: bool = False,
    ) -> jax.Array:
        """Final-norm hidden states `[batch, seq, embed]`; the loss projects them to the vocab in chunks.

        With a `KVCache` it returns `(hidden, cache)`: the inputs are written at `cache.index` and attend
        to everything cached before them (pass `positions` then; the default counts from 0).
        With `return_aux_loss` it returns `(hidden, aux_loss)`: the MoE router load-balancing loss over
        the non-padding tokens (transformers' `aux_loss`, unscaled; 0 for dense models).
        """
        batch, seq = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq), jnp.int32)
        if not return_aux_loss or cache is not None:
            return self.model(input_ids, positions, segment_ids, cache)
        hidden, stats = self.model(input_ids, positions, segment_ids, with_router_stats=True)
        if not stats:
            return hidden, jnp.zeros((), jnp.float32)
        return hidden, load_balancing_loss(stats, self.config.moe.num_experts)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Project hidden states `[..., embed]` to vocabulary logits `[..., vocab]`."""
        if self.lm_head is None:
            return self.model.embed_tokens.attend(hidden)
        return self.lm_head(hidden)

    def __call__(
        self,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        return self.logits(self.hidden_states(input_ids, positions=positions, segment_ids=segment_ids))
