"""cuDNN backend: `jax.nn.dot_product_attention(implementation="cudnn")`, only where it is correct.

cuDNN's public entry takes per-row lengths, not segment ids. Feeding it packed rows would let
samples attend to each other and silently corrupt the loss (MaxText shipped exactly that). So this
backend checks at run time that every row is one segment followed by padding, and otherwise runs
the backend `auto` picks after cuDNN (`attention.packed_fallback`: the Pallas kernel on GPU) for that
batch (`lax.cond`, so the check costs one pass over the ids). The fallback branch is compiled too.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def unsupported_reason(q: jax.Array, k: jax.Array, *, q_offset=None, q_segment_ids=None, logits_soft_cap=None, **_) -> str | None:
    """Why cuDNN cannot run the call (the dispatcher then uses xla), or None when it can."""
    if q_offset is not None:
        return "q_offset (decoding against a KV cache) is not supported"
    if q.shape[1] != k.shape[1]:
        return f"query length {q.shape[1]} differs from key length {k.shape[1]}"
    if q_segment_ids is not None:
        return "separate q_segment_ids are not supported"
    if logits_soft_cap is not None:
        return "logits_soft_cap is not supported"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"dtype {q.dtype} is not supported (bfloat16/float16 only)"
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        return f"head_dim {q.shape[-1]} is not supported (a multiple of 8, at most 128)"
    return None


def single_segment_lengths(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row lengths `[batch]` and whether every row is one segment then padding (a bool scalar).

    A row like `[3, 3, 3, 0, 0]` has length 3; `[1, 1, 2, 2, 0]` (packed) or `[0, 1, 1]` (padding
    first) make the flag False. All-padding rows have length 0 and are allowed.
    """
    seq = segment_ids.shape[1]
    lengths = jnp.sum(segment_ids != 0, axis=1).astype(jnp.int32)  # [b]
    prefix = jnp.arange(seq)[None, :] < lengths[:, None]  # [b, s]
    same = segment_ids == segment_ids[:, :1]
    ok = jnp.all(jnp.where(prefix, same & (segment_ids != 0), segment_ids == 0))
    return lengths, ok


def lengths_attention(
    q, k, v, *, segment_ids, causal, sliding_window, scale, implementation: str | None, fallback: Callable
) -> jax.Array:
    """`jax.nn.dot_product_attention` with per-row lengths when rows are unpacked, else `fallback`.

    Shared by the cudnn backend (implementation="cudnn") and by tests, which run the same argument
    translation with implementation="xla" on CPU.
    """
    lengths, ok = single_segment_lengths(segment_ids)
    # Our window bounds only the left side: key j is visible from query i when j > i - window.
    window = None if sliding_window is None else (sliding_window - 1, 0 if causal else segment_ids.shape[1])

    def dense(q, k, v):
        out = jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=causal, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
            local_window_size=window, implementation=implementation,
        )
        return jnp.where((segment_ids != 0)[:, :, None, None], out, 0).astype(q.dtype)

    return jax.lax.cond(ok, dense, fallback, q, k, v)


def cudnn_attention(
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
    """cuDNN fused attention for unpacked rows; packed batches take the next backend of the auto order."""
    reason = unsupported_reason(
        q, k, q_offset=q_offset, q_segment_ids=q_segment_ids, logits_soft_cap=logits_soft_cap
    )
    if reason:
        raise ValueError(f"cudnn attention: {reason}; use impl='xla' or 'auto'")
    kw = dict(causal=causal, sliding_window=sliding_window, scale=scale)

    def fallback(q, k, v):
        from .attention import packed_fallback  # the dispatcher imports this module lazily

        return packed_fallback(q, k, v, segment_ids=segment_ids, logits_soft_cap=None, **kw)

    return lengths_attention(q, k, v, segment_ids=segment_ids, implementation="cudnn", fallback=fallback, **kw)
