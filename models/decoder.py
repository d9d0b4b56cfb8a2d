"""One decoder for the Llama family (llama, qwen2, qwen3, mistral, gemma2, gemma3_text, phi3; mixtral and
qwen3_moe with the MoE block of `moe.py`; deepseek_v3 with latent attention from `mla.py` and the MoE
block), parameterised by `ModelConfig`.

Module and parameter names mirror Hugging Face's (`model.layers.3.self_attn.q_proj.kernel`), so the
weight-map table is short and LoRA `target_modules` names are PEFT's names. That includes Phi-3's fused
`qkv_proj` / `gate_up_proj`: they stay one Linear each (PEFT targets them by those names) and are split
after the matmul. Gemma's differences are config switches: (1 + w) norms, scaled embeddings, norms
around both sublayers, logit soft-capping, a query scale, and per-layer windows and rotary bases.

With `ModelConfig.scan_layers` (the default) the layers live stacked in `model.stacks` and run under
`jax.lax.scan` (see `scan.py`, which also names the per-layer paths above for every stacked array);
without it, one module per layer in `model.layers`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.kernels import attention
from swift_jax.parallel.rules import constrain

from .config import ModelConfig
from .layers import MLP, Embed, Linear, RMSNorm, apply_rotary, cached_attention, rotary_cos_sin, soft_cap, write_at
from .mla import MLAttention
from .moe import SparseMoE, is_sparse_layer, load_balancing_loss
from .remat import check_remat, checkpointed
from .scan import ACTIVATION_AXES, LayerStack, layer_layout, unstack_module


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Preallocated keys and values of every layer, for decoding (see `swift_jax.generation`).

    A call with a cache writes its `seq` input tokens at slots `[index, index + seq)` of every row and
    attends to all slots up to each query's own; slots whose `segment_ids` are 0 (left padding, not yet
    written) are never attended to. Every row writes at the same `index` `[]` (left-padded prompts), or each
    row at its own `index` `[batch]` (the engine's slots: `swift_jax.engine`).
    """

    # per layer [batch, max_len, kv_heads, head_dim] (MLA: heads, cache_head_dim); with scanned layers
    # per stack and pattern position (`layer_layout` order), stacked: [repeats, batch, max_len, ...]
    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]  # per layer, the same shape as keys
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = padding or not yet written
    index: jax.Array  # [] or [batch] int32: slot of the next input token

    @classmethod
    def create(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
        """An empty cache for `batch` rows of up to `max_len` tokens, in the model's compute dtype."""
        shape = (batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
        if cfg.mla is not None:  # full per-head keys and values, v zero-padded to the key width (mla.py)
            shape = (batch, max_len, cfg.num_attention_heads, cfg.mla.cache_head_dim)
        if cfg.scan_layers:
            shapes = [(seg.repeats, *shape) for seg in layer_layout(cfg) for _ in range(seg.period)]
        else:
            shapes = [shape] * cfg.num_hidden_layers
        empty = tuple(jnp.zeros(s, cfg.compute_dtype) for s in shapes)
        return cls(empty, empty, jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
    """Grouped-query self-attention with optional q/k RMSNorm, biases, a sliding window, a query scale,
    logit soft-capping and a fused `qkv_proj` (Phi-3)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.sliding_window = cfg.layer_windows[layer_idx] if cfg.layer_windows else None
        d, h, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, init_std=cfg.initializer_range, rngs=rngs)
        if cfg.fused_qkv:  # HF order along the output: q heads, then k heads, then v heads
            self.qkv_proj = Linear(
                cfg.hidden_size, (h + 2 * kv) * d, axes=("embed", "heads"), use_bias=cfg.qkv_bias, **kw
            )
        else:
            self.q_proj = Linear(cfg.hidden_size, h * d, axes=("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
            self.k_proj = Linear(cfg.hidden_size, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
            self.v_proj = Linear(cfg.hidden_size, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Linear(h * d, cfg.hidden_size, axes=("heads", "embed"), use_bias=cfg.o_bias, **kw)
        if cfg.qk_norm:
            norm_kw = dict(
                eps=cfg.rms_norm_eps, axis_name="head_dim", param_dtype=cfg.params_dtype, offset=cfg.norm_offset
            )
            self.q_norm = RMSNorm(d, **norm_kw)
            self.k_norm = RMSNorm(d, **norm_kw)
        else:
            self.q_norm = self.k_norm = None

    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, cache=None, bidirectional_ids=None
    ):
        """`[batch, seq, embed] -> [batch, seq, embed]`; with `cache=(keys, values, kv_segment_ids, index)`
        (one layer's slice of a `KVCache`) it returns `(out, (keys, values))` with this call's keys written.
        `bidirectional_ids` `[batch, seq]`: blocks of tokens that see each other whole (see `attention`)."""
        cfg = self.cfg
        batch, seq, _ = x.shape
        h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if cfg.fused_qkv:
            qkv = self.qkv_proj(x)  # [b, s, (h + 2 kv) * d]
            q, k, v = jnp.split(qkv, [h * d, (h + kv) * d], axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(batch, seq, h, d)  # [b, s, h, d]
        k = k.reshape(batch, seq, kv, d)  # [b, s, kv, d]
        v = v.reshape(batch, seq, kv, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            return self._cached(q, k, v, segment_ids, cache)
        blocks = {} if bidirectional_ids is None else {"bidirectional_ids": bidirectional_ids}
        out = attention(q, k, v, segment_ids=segment_ids, causal=True, **self._mask_options(), **blocks)
        return self.o_proj(out.reshape(batch, seq, cfg.num_attention_heads * cfg.head_dim))

    def _mask_options(self) -> dict:
        """This layer's window, logit scale and soft cap, as `attention` keyword arguments."""
        cfg = self.cfg
        return dict(sliding_window=self.sliding_window, logits_soft_cap=cfg.attn_soft_cap, scale=cfg.query_scale)

    def _cached(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, cache):
        """Attention of `q` `[b, s, h, d]` against the cache after writing `k`, `v` at its index."""
        out, kv = cached_attention(q, k, v, segment_ids, cache, **self._mask_options())
        batch, seq = q.shape[:2]
        return self.o_proj(out.reshape(batch, seq, -1)), kv


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: attention then MLP.

    Llama style: `x += attn(input_norm(x)); x += mlp(post_attention_norm(x))`. With `post_norms`
    (Gemma 2/3): `x += post_attention_norm(attn(input_norm(x))); x += post_ff_norm(mlp(pre_ff_norm(x)))`.
    On MoE layers the MLP is the sparse block and the layer returns `(x, RouterStats)`.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, rngs: nnx.Rngs):
        norm_kw = dict(eps=cfg.rms_norm_eps, param_dtype=cfg.params_dtype, offset=cfg.norm_offset)
        self.post_norms = cfg.post_norms
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm_kw)
        attn = Attention if cfg.mla is None else MLAttention
        self.self_attn = attn(cfg, layer_idx, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm_kw)
        if self.post_norms:
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, **norm_kw)
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, **norm_kw)
        self.mlp = SparseMoE(cfg, rngs=rngs) if is_sparse_layer(cfg, layer_idx) else MLP(cfg, rngs=rngs)

    def _mlp(self, x: jax.Array, segment_ids: jax.Array):
        """The MLP (or MoE) output and the router statistics (None for a dense MLP)."""
        if isinstance(self.mlp, SparseMoE):
            return self.mlp(x, segment_ids > 0)
        return self.mlp(x), None

    def _feed_forward(self, x: jax.Array, segment_ids: jax.Array):
        """`x` plus the feed-forward branch, and the router statistics."""
        if self.post_norms:
            h, stats = self._mlp(self.pre_feedforward_layernorm(x), segment_ids)
            return x + self.post_feedforward_layernorm(h), stats
        h, stats = self._mlp(self.post_attention_layernorm(x), segment_ids)
        return x + h, stats

    def _attn_residual(self, h: jax.Array) -> jax.Array:
        return self.post_attention_layernorm(h) if self.post_norms else h

    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, cache=None, bidirectional_ids=None
    ):
        """`[batch, seq, embed] -> [batch, seq, embed]` (and this layer's `(keys, values)` with a cache)."""
        if cache is not None:  # decoding: also return this layer's updated (keys, values)
            h, kv = self.self_attn(self.input_layernorm(x), cos, sin, segment_ids, cache)
            return self._feed_forward(x + self._attn_residual(h), segment_ids)[0], kv
        blocks = {} if bidirectional_ids is None else {"bidirectional_ids": bidirectional_ids}
        x = x + self._attn_residual(self.self_attn(self.input_layernorm(x), cos, sin, segment_ids, **blocks))
        x, stats = self._feed_forward(x, segment_ids)
        return x if stats is None else (x, stats)


def _remat_layer(
    layer: DecoderLayer, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, remat, blocks=None
):
    """Run a layer under `jax.checkpoint` with the policy of `remat` (see `remat.py`).

    The layer is split into a pure function of its state, so the weights pass through the checkpoint
    as arguments (never copied), and RNG streams (LoRA dropout) advance as in the plain call.
    """
    graphdef, state = nnx.split(layer)

    def run(state, x, cos, sin, segment_ids, blocks):
        module = nnx.merge(graphdef, state)
        return module(x, cos, sin, segment_ids, bidirectional_ids=blocks), nnx.state(module, nnx.RngState)

    out, rng_state = checkpointed(run, remat)(state, x, cos, sin, segment_ids, blocks)
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
        if cfg.scan_layers:
            make = lambda i: DecoderLayer(cfg, i, rngs=rngs)
            self.stacks = nnx.List([LayerStack(segment, make) for segment in layer_layout(cfg)])
        else:
            self.layers = nnx.List([DecoderLayer(cfg, i, rngs=rngs) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.params_dtype, offset=cfg.norm_offset)
        self.remat = False  # set by the trainer: True/False or a policy name (models/remat.py)

    @property
    def remat(self) -> bool | str:
        """Recompute layer activations in the backward pass: False, True or a `jax.checkpoint_policies` name."""
        return self._remat

    @remat.setter
    def remat(self, value: bool | str) -> None:
        self._remat = check_remat(value)

    def layer(self, i: int) -> DecoderLayer:
        """Layer `i` as a module: itself when unrolled; with scanned layers a copy of its slice of the
        stacked arrays (for inspection: writes to the copy do not reach the model)."""
        if not self.cfg.scan_layers:
            return self.layers[i]
        for segment, stack in zip(layer_layout(self.cfg), self.stacks):
            offset = i - segment.start
            if 0 <= offset < segment.period * segment.repeats:
                slot, k = divmod(offset, segment.period)
                return unstack_module(stack.layers[k], segment.repeats)[slot]
        raise IndexError(f"layer {i} out of range: the model has {self.cfg.num_hidden_layers} layers")

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings `[batch, seq, embed]`, times `embed_scale` (Gemma) in the compute dtype."""
        x = self.embed_tokens(input_ids)
        if self.cfg.embed_scale is not None:
            x = x * jnp.asarray(self.cfg.embed_scale, x.dtype)
        return x

    def rotary(self, positions: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Each layer's `(cos, sin)` `[batch, seq, rot_dim]`; layers with equal rope settings share one table."""
        cfg = self.cfg
        tables = {}
        for i in range(cfg.num_hidden_layers):
            rope = cfg.layer_rope(i)
            if rope not in tables:
                tables[rope] = rotary_cos_sin(positions, rope, cfg.head_dim, cfg.max_position_embeddings)
        return [tables[cfg.layer_rope(i)] for i in range(cfg.num_hidden_layers)]

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        cache: KVCache | None = None,
        *,
        with_router_stats: bool = False,
        embeds: jax.Array | None = None,
        bidirectional_ids: jax.Array | None = None,
    ):
        """Final-norm hidden states `[batch, seq, embed]` (and the advanced cache when given one);
        `with_router_stats` also returns the MoE layers' `RouterStats` list. `embeds` `[batch, seq, embed]`
        replaces the token embeddings (a vision-language model's, with image features scattered in);
        `positions` are `[batch, seq]`, or `[3, batch, seq]` for M-RoPE. `bidirectional_ids` `[batch, seq]`
        (0 = causal token) lift the causal mask within each block of equal id (Gemma 3's images)."""
        rotary = self.rotary(positions)
        x = self.embed(input_ids) if embeds is None else embeds
        x = constrain(x, ACTIVATION_AXES)  # [batch, seq, embed]
        if cache is not None:
            return self._cached(x, rotary, segment_ids, cache, bidirectional_ids)
        stats = []
        if self.cfg.scan_layers:
            for stack in self.stacks:
                x, stack_stats = stack(x, rotary, segment_ids, self.remat, bidirectional_ids)
                stats.extend(stack_stats)
            return (self.norm(x), stats) if with_router_stats else self.norm(x)
        for layer, (cos, sin) in zip(self.layers, rotary):
            if self.remat:
                x = _remat_layer(layer, x, cos, sin, segment_ids, self.remat, bidirectional_ids)
            else:
                x = layer(x, cos, sin, segment_ids, bidirectional_ids=bidirectional_ids)
            if isinstance(x, tuple):  # an MoE layer: (x, RouterStats)
                x, layer_stats = x
                stats.append(layer_stats)
            x = constrain(x, ACTIVATION_AXES)
        return (self.norm(x), stats) if with_router_stats else self.norm(x)

    def _cached(self, x, rotary, segment_ids, cache: KVCache, blocks=None) -> tuple[jax.Array, KVCache]:
        """The layer stack against a KV cache: `(hidden [b, s, embed], cache advanced by s tokens)`. `blocks`
        (`bidirectional_ids` of this call's tokens) reach the attention as ids of the cache slots, 0 elsewhere:
        a prefill holding whole images gives their tokens transformers' bidirectional mask."""
        kv_segment_ids = write_at(cache.segment_ids, segment_ids.astype(jnp.int32), cache.index)
        extra = ()
        if blocks is not None:  # [b, max_len]
            slots = write_at(jnp.zeros_like(cache.segment_ids), blocks, cache.index)
            extra = (slots,)
        if self.cfg.scan_layers:
            keys, values, at = [], [], 0
            for stack in self.stacks:
                span = slice(at, at + stack.period)
                x, k, v = stack.cached(
                    x, rotary, segment_ids, cache.keys[span], cache.values[span], kv_segment_ids, cache.index, *extra
                )
                keys.extend(k)
                values.extend(v)
                at += stack.period
            new_cache = KVCache(tuple(keys), tuple(values), kv_segment_ids, cache.index + x.shape[1])
            return self.norm(x), new_cache
        keys, values = [], []
        for i, (layer, (cos, sin)) in enumerate(zip(self.layers, rotary)):
            layer_cache = (cache.keys[i], cache.values[i], kv_segment_ids, cache.index, *extra)
            x, (k, v) = layer(x, cos, sin, segment_ids, layer_cache)
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
        """Project hidden states `[..., embed]` to vocabulary logits `[..., vocab]` (soft-capped for Gemma).

        The loss, evaluation and generation all project through here, so they all see the cap.
        """
        if self.lm_head is None:
            logits = self.model.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return soft_cap(logits, self.config.final_soft_cap)

    def __call__(
        self,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        return self.logits(self.hidden_states(input_ids, positions=positions, segment_ids=segment_ids))


def set_scan_layers(model: CausalLM, scan_layers: bool) -> CausalLM:
    """Switch `model` between the scanned and the unrolled layer layout, in place; returns it.

    The values are unchanged (stacked into, or sliced out of, `[layers, ...]` arrays), adapters and
    quantized kernels included; only the parameter tree's paths and shapes change. The trainer calls
    this for `--scan_layers false`; `load_model(..., scan_layers=...)` builds the wanted layout directly.
    """
    cfg = model.config
    if cfg.scan_layers == scan_layers:
        return model
    decoder, new_cfg = model.model, cfg.replace(scan_layers=scan_layers)
    if scan_layers:
        layers = list(decoder.layers)
        decoder.stacks = nnx.List([LayerStack(segment, layers.__getitem__) for segment in layer_layout(new_cfg)])
        del decoder.layers
    else:
        layers = [None] * cfg.num_hidden_layers
        for segment, stack in zip(layer_layout(cfg), decoder.stacks):
            for k, stacked in enumerate(stack.layers):
                for slot, layer in enumerate(unstack_module(stacked, segment.repeats)):
                    layers[segment.layer_index(k, slot)] = layer
        decoder.layers = nnx.List(layers)
        del decoder.stacks
    decoder.cfg = model.config = new_cfg
    return model
