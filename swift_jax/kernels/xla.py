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
    bidirectional_ids: jax.Array | None = None,
) -> jax.Array:
    """Boolean `[batch, q_len, kv_len]`: True where query i may attend to key j.

    Query i sits at key index `q_offset + i`; `q_offset` (an int or a `[batch]` array) defaults to
    `kv_len - q_len` (queries aligned with the last keys), so the same mask serves prefill and decoding
    against a preallocated cache (pass each row's write position). Segment 0 is padding and attends
    nowhere; different segments of a packed row never see each other. `bidirectional_ids` `[batch, kv_len]`
    (0 = none) lets a query see every key of its own block past the causal limit, but not past the window
    (transformers' `blockwise_overlay`: AND(window, OR(causal, same block))).
    """
    q_len, kv_len = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (q_segment_ids[:, :, None] != 0)
    offset = kv_len - q_len if q_offset is None else q_offset
    q_idx = jnp.arange(q_len)[None, :, None] + jnp.reshape(jnp.asarray(offset), (-1, 1, 1))  # [b|1, s, 1]
    kv_idx = jnp.arange(kv_len)[None, None, :]  # [1, 1, t]
    if causal:
        visible = kv_idx <= q_idx
        if bidirectional_ids is not None:  # a query's ids are the keys' at its own index
            at = jnp.broadcast_to(q_idx[..., 0], (mask.shape[0], q_len))  # [b, s]: each query's key index
            q_ids = jnp.take_along_axis(bidirectional_ids, at, axis=1)
            visible |= (q_ids[:, :, None] == bidirectional_ids[:, None, :]) & (q_ids[:, :, None] > 0)
        mask &= visible
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
    bidirectional_ids: jax.Array | None = None,
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
        q_segment_ids,
        segment_ids,
        causal=causal,
        sliding_window=sliding_window,
        q_offset=q_offset,
        bidirectional_ids=bidirectional_ids,
    )
    mask = mask[:, None, None]  # [b, 1, 1, s, t]
    logits = jnp.where(mask, logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(mask, probs, 0.0)  # fully masked (padding) rows become exact zeros
    out = jnp.einsum("bkgst,bktd->bkgsd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim).astype(q.dtype)


def blocked_unsupported_reason(q: jax.Array, k: jax.Array, *, causal: bool = True, q_offset=None, block: int = 128, **_) -> str | None:
    """Why `xla_blocked_attention` would not help this call (None when it runs it)."""
    if not causal:
        return "bidirectional attention has no dead blocks to skip"
    if q_offset is not None or q.shape[1] != k.shape[1]:
        return "decoding (q_offset / q_len != kv_len) runs the reference"
    if q.shape[1] < 2 * block:
        return f"sequence {q.shape[1]} is shorter than two blocks of {block}"
    return None


def xla_blocked_attention(
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
    block: int = 128,
) -> jax.Array:
    """`xla_attention` for causal self-attention, one query block at a time against only its live keys.

    Query block i (`block` positions) attends to keys `[lo, hi)`: `hi` ends at the block's last query
    (causal), `lo` starts at its first query's window (sliding_window), so the score tensors above the
    diagonal or outside the window are never built. That is about half of the attention work and
    memory of a causal row (less with windows), forward and backward, with static shapes throughout.
    Same arguments and results as `xla_attention`; calls it cannot help go to it unchanged.
    """
    options = dict(causal=causal, sliding_window=sliding_window, logits_soft_cap=logits_soft_cap, scale=scale)
    if blocked_unsupported_reason(q, k, causal=causal, q_offset=q_offset, block=block) is not None:
        return xla_attention(q, k, v, segment_ids=segment_ids, q_segment_ids=q_segment_ids, q_offset=q_offset, **options)
    if q_segment_ids is None:
        q_segment_ids = segment_ids
    seq = q.shape[1]
    outputs = []
    for first in range(0, seq, block):
        last = min(first + block, seq)  # queries [first, last)
        lo = 0 if sliding_window is None else max(0, first - sliding_window + 1)
        outputs.append(
            xla_attention(
                q[:, first:last],  # [batch, block, heads, head_dim]
                k[:, lo:last],  # [batch, last - lo, kv_heads, head_dim]
                v[:, lo:last],
                segment_ids=segment_ids[:, lo:last],
                q_segment_ids=q_segment_ids[:, first:last],
                q_offset=first - lo,
                **options,
            )
        )
    return jnp.concatenate(outputs, axis=1)  # [batch, seq, heads, head_dim]
