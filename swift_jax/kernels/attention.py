"""The one attention entry point, dispatching to a backend by name.

Every backend takes `[batch, seq, heads, head_dim]` queries and `[batch, seq, kv_heads, head_dim]`
keys/values, `segment_ids` (0 = padding, equal ids attend to each other) and the same mask options.
The XLA reference is always available and is the oracle for the others.
"""

from __future__ import annotations

from typing import Callable

import jax

from .xla import xla_attention

BACKENDS: dict[str, Callable[..., jax.Array]] = {"xla": xla_attention}


def attention(
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
    impl: str = "auto",
) -> jax.Array:
    """Multi-head attention over packed rows; see `xla_attention` for the exact semantics.

    `q_offset` places the queries inside a longer key sequence (decoding against a KV cache).
    `impl="auto"` picks the fastest backend that supports the call on the current platform.
    """
    name = "xla" if impl == "auto" else impl
    if name not in BACKENDS:
        raise ValueError(f"attention impl={impl!r} is not available; expected 'auto' or one of {sorted(BACKENDS)}")
    return BACKENDS[name](
        q,
        k,
        v,
        segment_ids=segment_ids,
        q_segment_ids=q_segment_ids,
        causal=causal,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
        scale=scale,
        q_offset=q_offset,
    )
