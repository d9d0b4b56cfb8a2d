"""Pure-JAX (XLA) attention: the reference every other backend is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    causal: bool,
    sliding_window: int | None,
    q_offset: jax.Array | int | None = None,
) -> jax.Array:
    """Boolean `[batch, q_len, kv_len]`: True where query i may attend to key j.

    Query i sits at key index `q_offset + i`; `q_offset` (an int or a `[batch]` array) defaults to
    `kv_len - q_len` (queries aligned with the last keys), so the same mask serves prefill and decoding
    against a preallocated cache (pass each row's write position). Segment 0 is padding and attends
    nowhere; different segments of a packed row never see each other.
    """
    q_len, kv_len = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (q_segment_ids[:, :, None] != 0)
    offset = kv_len - q_len if q_offset is None else q_offset
    q_idx = jnp.arange(q_len)[None, :, None] + jnp.reshape(jnp.asarray(offset), (-1, 1, 1))  # [b|1, s, 1]
    kv_idx = jnp.arange(kv_len)[None, None, :]  # [1, 1, t]
    if causal:
        mask &= kv_idx <= q_idx
    if sliding_window is not None:
        mask &= kv_idx > q_idx - sliding_window
    return mask


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array,
    q_segment_ids: jax.Array | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    scale: float | None = None,
    q_offset: jax.Array | int | None = None,
) -> jax.Array:
    """Softmax attention with GQA, packed segments, causal and sliding-window masks.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
    segment_ids: [batch, kv_len] (0 = padding); q_segment_ids: [batch, q_len], defaults to segment_ids.
    q_offset: key index of the first query (int or [batch]); default kv_len - q_len (see attention_mask).
    Returns [batch, q_len, heads, head_dim]; rows of padding queries are exactly zero.
    Logits and softmax run in float32 whatever the input dtype.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    if q_segment_ids is None:
        q_segment_ids = segment_ids
    scale = head_dim**-0.5 if scale is None else scale
    # Heads go in front before the matmuls: XLA then runs plain batched matmuls (on CPU the einsum over
    # the [b, s, kv, group, d] layout is ~4x slower, as it transposes inside the dot).
    q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)  # [b, kv, g, s, d]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kv, t, d]
    logits = jnp.einsum("bkgsd,bktd->bkgst", q, k, preferred_element_type=jnp.float32) * scale
    if logits_soft_cap is not None:
        logits = logits_soft_cap * jnp.tanh(logits / logits_soft_cap)
    mask = attention_mask(
        q_segment_ids, segment_ids, causal=causal, sliding_window=sliding_window, q_offset=q_offset
    )
    mask = mask[:, None, None]  # [b, 1, 1, s, t]
    logits = jnp.where(mask, logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(mask, probs, 0.0)  # fully masked (padding) rows become exact zeros
    out = jnp.einsum("bkgst,bktd->bkgsd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim).astype(q.dtype)
