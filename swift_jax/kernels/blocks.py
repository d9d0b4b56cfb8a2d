"""Block bookkeeping for tiled attention: per-block segment ranges and which tiles can hold work.

A (q-block, kv-block) tile is *live* when some query in it may attend to some key in it. A tile is
dead, and a kernel never computes it, when it lies wholly above the causal diagonal, wholly outside
the sliding window, or when the ranges of (non-padding) segment ids of the two blocks do not
intersect. On a row packed with many short samples most tiles are dead: that is where packing turns
into speed. The ranges are computed once per batch here and handed to the kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Range of a block that holds only padding: empty, so it intersects nothing.
EMPTY_MIN = jnp.iinfo(jnp.int32).max
EMPTY_MAX = -1


def segment_ranges(segment_ids: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Min and max non-padding segment id of each block of `block` positions: two `[batch, n_blocks]`.

    Padding (id 0) is ignored because it attends nowhere and is never attended to; a block of only
    padding gets the empty range (EMPTY_MIN, EMPTY_MAX). `seq` must be a multiple of `block`.
    """
    batch, seq = segment_ids.shape
    if seq % block:
        raise ValueError(f"segment_ids length {seq} must be a multiple of block={block}; pad it first")
    ids = segment_ids.astype(jnp.int32).reshape(batch, seq // block, block)  # [b, n, block]
    real = ids != 0
    lo = jnp.min(jnp.where(real, ids, EMPTY_MIN), axis=-1)
    hi = jnp.max(jnp.where(real, ids, EMPTY_MAX), axis=-1)
    return lo, hi


def position_live(
    q_block: int, kv_block: int, block_q: int, block_kv: int, *, causal: bool, sliding_window: int | None
):
    """Whether tile (q_block, kv_block) holds any (query, key) pair allowed by causal/window masks.

    Works on Python ints and on traced scalars alike (kernels call it with `program_id`s). Queries
    and keys share positions (self-attention, query i at key index i).
    """
    live = True
    q_first, q_last = q_block * block_q, q_block * block_q + block_q - 1
    kv_first, kv_last = kv_block * block_kv, kv_block * block_kv + block_kv - 1
    if causal:
        live = jnp.logical_and(live, kv_first <= q_last)
    if sliding_window is not None:
        live = jnp.logical_and(live, kv_last > q_first - sliding_window)
    return live


def kv_block_bounds(q_block, block_q: int, block_kv: int, n_kv: int, *, causal: bool, sliding_window: int | None):
    """Half-open range `[lo, hi)` of kv blocks that the causal/window masks allow for a q block.

    Outside this range every tile is dead by position alone, so a kernel's loop never visits it.
    """
    lo, hi = 0, n_kv
    if causal:
        hi = jnp.minimum(n_kv, (q_block * block_q + block_q - 1) // block_kv + 1)
    if sliding_window is not None:
        lo = jnp.maximum(0, (q_block * block_q - sliding_window + 1) // block_kv)
    return lo, hi


def q_block_bounds(kv_block, block_q: int, block_kv: int, n_q: int, *, causal: bool, sliding_window: int | None):
    """Half-open range `[lo, hi)` of q blocks that may attend to a kv block (the backward's loop)."""
    lo, hi = 0, n_q
    if causal:
        lo = (kv_block * block_kv) // block_q
    if sliding_window is not None:
        hi = jnp.minimum(n_q, (kv_block * block_kv + block_kv - 1 + sliding_window - 1) // block_q + 1)
    return lo, hi


def tile_liveness(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    block_q: int,
    block_kv: int,
    causal: bool,
    sliding_window: int | None,
) -> jax.Array:
    """Boolean `[batch, n_q_blocks, n_kv_blocks]`: True where a kernel has to compute the tile.

    The same rule the kernels apply tile by tile; benchmarks use it to count the work that remains.
    """
    q_lo, q_hi = segment_ranges(q_segment_ids, block_q)  # [b, nq]
    kv_lo, kv_hi = segment_ranges(kv_segment_ids, block_kv)  # [b, nk]
    live = (q_lo[:, :, None] <= kv_hi[:, None, :]) & (kv_lo[:, None, :] <= q_hi[:, :, None])
    nq, nk = q_lo.shape[1], kv_lo.shape[1]
    qi, kj = jnp.arange(nq)[:, None], jnp.arange(nk)[None, :]
    pos = position_live(qi, kj, block_q, block_kv, causal=causal, sliding_window=sliding_window)
    return live & pos
