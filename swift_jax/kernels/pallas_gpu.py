"""Our Pallas flash-attention kernel for packed rows (GPU; interpret mode on CPU for tests).

Forward and backward are tiled (block_q x block_kv) with an online softmax in float32; the forward
saves the log-sum-exp for the backward (`custom_vjp`). GQA reads each kv head from its own slice of
K/V (index maps send query head h to kv head h // group), so K/V are never repeated in memory.

Block skipping: each q block loops only over the kv blocks the causal/sliding-window masks allow,
and inside that range skips every tile whose segment-id ranges (min/max non-padding id per block,
computed once per batch in `blocks.segment_ranges`) do not intersect. A row packed with many short
samples therefore costs about the sum of its samples' squares, not the square of the row.

The lowering is Pallas' Triton backend today (its compiler params are set when present); it is
kept behind the backend interface because JAX is moving GPU Pallas to Mosaic GPU. Which lowering is
fastest has not been measured yet: see scripts/bench_attention.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .blocks import kv_block_bounds, q_block_bounds, segment_ranges

try:  # present in jax 0.10/0.11; JAX is moving GPU Pallas to Mosaic GPU
    from jax.experimental.pallas import triton as _pl_triton
except ImportError:  # pragma: no cover - depends on the installed jax
    _pl_triton = None

_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)
_SQ = pl.squeezed  # a block dimension of size 1 that the kernel does not see


def _out(shape, dtype, like: jax.Array) -> jax.ShapeDtypeStruct:
    """Output type that varies over the same `shard_map` axes as `like` (needed under check_vma).

    The field was `vma` and is `manual_axis_type` since jax 0.10; outside shard_map it is empty.
    """
    aval = jax.typeof(like)
    for field in ("manual_axis_type", "vma"):
        if hasattr(aval, field):
            return jax.ShapeDtypeStruct(shape, dtype, **{field: getattr(aval, field)})
    return jax.ShapeDtypeStruct(shape, dtype)  # pragma: no cover - jax without either field


def _compiler_params(interpret: bool, num_warps: int):
    if interpret or _pl_triton is None:
        return None
    return _pl_triton.CompilerParams(num_warps=num_warps, num_stages=2)


def _logits(q, k, scale: float, cap: float | None):
    """`[bq, d] x [bk, d] -> [bq, bk]` float32 logits, soft-capped; also returns the cap's tanh."""
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
    if cap is None:
        return s, None
    t = jnp.tanh(s / cap)
    return cap * t, t


def _tile_mask(q_seg, k_seg, q_start, k_start, block_q: int, block_kv: int, causal: bool, window: int | None):
    """`[bq, bk]` bool: same non-padding segment, and inside the causal/window masks."""
    mask = (q_seg[:, None] == k_seg[None, :]) & (q_seg[:, None] != 0)
    q_pos = q_start + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 0)
    k_pos = k_start + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    if causal:
        mask &= k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask


def _fwd_kernel(q_lo, q_hi, k_lo, k_hi, q_seg_ref, k_seg_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *count_ref, cfg):
    """One (batch, q block, head): loop over live kv blocks with an online softmax."""
    block_q, block_kv, n_kv, scale, cap, causal, window = cfg
    i = pl.program_id(1)
    q_start = i * block_q
    q = q_ref[...]  # [bq, d]
    q_seg = q_seg_ref[...]  # [bq]
    my_lo, my_hi = q_lo[i], q_hi[i]
    lo, hi = kv_block_bounds(i, block_q, block_kv, n_kv, causal=causal, sliding_window=window)

    def tile(j, carry):
        acc, m, l, n = carry
        k_start = pl.multiple_of(j * block_kv, block_kv)
        kv_slice = pl.ds(k_start, block_kv)
        k, v = k_ref[kv_slice, :], v_ref[kv_slice, :]  # [bk, d]
        s, _ = _logits(q, k, scale, cap)
        mask = _tile_mask(q_seg, k_seg_ref[kv_slice], q_start, k_start, block_q, block_kv, causal, window)
        s = jnp.where(mask, s, _MASKED)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        l = l * alpha + jnp.sum(p, axis=1)
        pv = jax.lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return acc * alpha[:, None] + pv, m_new, l, n + 1

    def body(j, carry):
        live = (my_lo <= k_hi[j]) & (k_lo[j] <= my_hi)
        return jax.lax.cond(live, tile, lambda _, c: c, j, carry)

    d = q.shape[-1]
    init = (
        jnp.zeros((block_q, d), jnp.float32),
        jnp.full((block_q,), _MASKED, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
        jnp.int32(0),
    )
    acc, m, l, n = jax.lax.fori_loop(lo, hi, body, init)
    empty = l == 0.0  # padding queries and queries that see nothing: output exactly zero
    o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
    if count_ref:
        count_ref[0][...] = jnp.full((block_q,), n, jnp.int32)


def _dq_kernel(q_lo, q_hi, k_lo, k_hi, q_seg_ref, k_seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg):
    """dq for one (batch, q block, head), visiting the same live tiles as the forward."""
    block_q, block_kv, n_kv, scale, cap, causal, window = cfg
    i = pl.program_id(1)
    q_start = i * block_q
    q, do = q_ref[...], do_ref[...]  # [bq, d]
    q_seg, lse, delta = q_seg_ref[...], lse_ref[...], delta_ref[...]  # [bq]
    my_lo, my_hi = q_lo[i], q_hi[i]
    lo, hi = kv_block_bounds(i, block_q, block_kv, n_kv, causal=causal, sliding_window=window)

    def tile(j, dq):
        k_start = pl.multiple_of(j * block_kv, block_kv)
        kv_slice = pl.ds(k_start, block_kv)
        k, v = k_ref[kv_slice, :], v_ref[kv_slice, :]
        s, t = _logits(q, k, scale, cap)
        mask = _tile_mask(q_seg, k_seg_ref[kv_slice], q_start, k_start, block_q, block_kv, causal, window)
        p = jnp.where(mask, jnp.exp(jnp.where(mask, s, _MASKED) - lse[:, None]), 0.0)  # [bq, bk]
        dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        ds = p * (dp - delta[:, None])
        if t is not None:
            ds = ds * (1.0 - t * t)
        ds = (ds * scale).astype(k.dtype)
        return dq + jax.lax.dot_general(ds, k, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    def body(j, dq):
        live = (my_lo <= k_hi[j]) & (k_lo[j] <= my_hi)
        return jax.lax.cond(live, tile, lambda _, c: c, j, dq)

    dq = jax.lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_lo, q_hi, k_lo, k_hi, q_seg_ref, k_seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, cfg, group, n_q):
    """dk, dv for one (batch, kv block, kv head): sums over the group's query heads and live q blocks."""
    block_q, block_kv, _, scale, cap, causal, window = cfg
    j = pl.program_id(1)
    k_start = j * block_kv
    k, v = k_ref[...], v_ref[...]  # [bk, d]
    k_seg = k_seg_ref[...]  # [bk]
    my_lo, my_hi = k_lo[j], k_hi[j]
    lo, hi = q_block_bounds(j, block_q, block_kv, n_q, causal=causal, sliding_window=window)

    def tile(g, i, carry):
        dk, dv = carry
        q_start = pl.multiple_of(i * block_q, block_q)
        q_slice = pl.ds(q_start, block_q)
        q, do = q_ref[q_slice, g, :], do_ref[q_slice, g, :]  # [bq, d]
        lse, delta = lse_ref[g, q_slice], delta_ref[g, q_slice]  # [bq]
        s, t = _logits(q, k, scale, cap)
        mask = _tile_mask(q_seg_ref[q_slice], k_seg, q_start, k_start, block_q, block_kv, causal, window)
        p = jnp.where(mask, jnp.exp(jnp.where(mask, s, _MASKED) - lse[:, None]), 0.0)  # [bq, bk]
        dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        ds = p * (dp - delta[:, None])
        if t is not None:
            ds = ds * (1.0 - t * t)
        ds = (ds * scale).astype(q.dtype)
        dk = dk + jax.lax.dot_general(ds, q, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return dk, dv

    def q_blocks(g, carry):
        def body(i, c):
            live = (q_lo[i] <= my_hi) & (my_lo <= q_hi[i])
            return jax.lax.cond(live, functools.partial(tile, g), lambda _, c: c, i, c)

        return jax.lax.fori_loop(lo, hi, body, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, group, q_blocks, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs_common(batch_axis_fn, n_q, n_kv):
    """BlockSpecs of the four per-block segment-range vectors (whole rows of `[batch, n_blocks]`)."""
    return [
        pl.BlockSpec((_SQ, n_q), batch_axis_fn),
        pl.BlockSpec((_SQ, n_q), batch_axis_fn),
        pl.BlockSpec((_SQ, n_kv), batch_axis_fn),
        pl.BlockSpec((_SQ, n_kv), batch_axis_fn),
    ]


def _forward(st, ranges, q_seg, k_seg, q, k, v, count_tiles: bool = False):
    block_q, block_kv, scale, cap, causal, window, interpret, num_warps = st
    batch, seq, heads, d = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    n_q, n_kv = seq // block_q, seq // block_kv
    cfg = (block_q, block_kv, n_kv, scale, cap, causal, window)
    row = lambda b, i, h: (b, 0)  # noqa: E731
    in_specs = _specs_common(row, n_q, n_kv) + [
        pl.BlockSpec((_SQ, block_q), lambda b, i, h: (b, i)),
        pl.BlockSpec((_SQ, seq), row),
        pl.BlockSpec((_SQ, block_q, _SQ, d), lambda b, i, h: (b, i, h, 0)),
        pl.BlockSpec((_SQ, seq, _SQ, d), lambda b, i, h: (b, 0, h // group, 0)),
        pl.BlockSpec((_SQ, seq, _SQ, d), lambda b, i, h: (b, 0, h // group, 0)),
    ]
    per_row = pl.BlockSpec((_SQ, _SQ, block_q), lambda b, i, h: (b, h, i))
    out_shape = [_out(q.shape, q.dtype, q), _out((batch, heads, seq), jnp.float32, q)]
    out_specs = [pl.BlockSpec((_SQ, block_q, _SQ, d), lambda b, i, h: (b, i, h, 0)), per_row]
    if count_tiles:
        out_shape.append(_out((batch, heads, seq), jnp.int32, q))
        out_specs.append(per_row)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=(batch, n_q, heads),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=_compiler_params(interpret, num_warps),
        name="packed_flash_fwd",
    )(*ranges, q_seg, k_seg, q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, ranges, q_seg, k_seg, q, k, v):
    return _forward(st, ranges, q_seg, k_seg, q, k, v)[0]


def _flash_fwd(st, ranges, q_seg, k_seg, q, k, v):
    o, lse = _forward(st, ranges, q_seg, k_seg, q, k, v)
    return o, (ranges, q_seg, k_seg, q, k, v, o, lse)


def _flash_bwd(st, res, do):
    ranges, q_seg, k_seg, q, k, v, o, lse = res
    block_q, block_kv, scale, cap, causal, window, interpret, num_warps = st
    batch, seq, heads, d = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    n_q, n_kv = seq // block_q, seq // block_kv
    cfg = (block_q, block_kv, n_kv, scale, cap, causal, window)
    delta = jnp.einsum("bshd,bshd->bhs", o.astype(jnp.float32), do.astype(jnp.float32))  # [b, h, s]
    params = _compiler_params(interpret, num_warps)

    row = lambda b, i, h: (b, 0)  # noqa: E731
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(batch, n_q, heads),
        in_specs=_specs_common(row, n_q, n_kv)
        + [
            pl.BlockSpec((_SQ, block_q), lambda b, i, h: (b, i)),
            pl.BlockSpec((_SQ, seq), row),
            pl.BlockSpec((_SQ, block_q, _SQ, d), lambda b, i, h: (b, i, h, 0)),
            pl.BlockSpec((_SQ, seq, _SQ, d), lambda b, i, h: (b, 0, h // group, 0)),
            pl.BlockSpec((_SQ, seq, _SQ, d), lambda b, i, h: (b, 0, h // group, 0)),
            pl.BlockSpec((_SQ, block_q, _SQ, d), lambda b, i, h: (b, i, h, 0)),
            pl.BlockSpec((_SQ, _SQ, block_q), lambda b, i, h: (b, h, i)),
            pl.BlockSpec((_SQ, _SQ, block_q), lambda b, i, h: (b, h, i)),
        ],
        out_specs=pl.BlockSpec((_SQ, block_q, _SQ, d), lambda b, i, h: (b, i, h, 0)),
        out_shape=_out(q.shape, q.dtype, q),
        interpret=interpret,
        compiler_params=params,
        name="packed_flash_dq",
    )(*ranges, q_seg, k_seg, q, k, v, do, lse, delta)

    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, group=group, n_q=n_q),
        grid=(batch, n_kv, kv_heads),
        in_specs=_specs_common(row, n_q, n_kv)
        + [
            pl.BlockSpec((_SQ, seq), row),
            pl.BlockSpec((_SQ, block_kv), lambda b, j, h: (b, j)),
            pl.BlockSpec((_SQ, seq, group, d), lambda b, j, h: (b, 0, h, 0)),
            pl.BlockSpec((_SQ, block_kv, _SQ, d), lambda b, j, h: (b, j, h, 0)),
            pl.BlockSpec((_SQ, block_kv, _SQ, d), lambda b, j, h: (b, j, h, 0)),
            pl.BlockSpec((_SQ, seq, group, d), lambda b, j, h: (b, 0, h, 0)),
            pl.BlockSpec((_SQ, group, seq), lambda b, j, h: (b, h, 0)),
            pl.BlockSpec((_SQ, group, seq), lambda b, j, h: (b, h, 0)),
        ],
        out_specs=[
            pl.BlockSpec((_SQ, block_kv, _SQ, d), lambda b, j, h: (b, j, h, 0)),
            pl.BlockSpec((_SQ, block_kv, _SQ, d), lambda b, j, h: (b, j, h, 0)),
        ],
        out_shape=[_out(k.shape, k.dtype, q), _out(v.shape, v.dtype, q)],
        interpret=interpret,
        compiler_params=params,
        name="packed_flash_dkv",
    )(*ranges, q_seg, k_seg, q, k, v, do, lse, delta)
    zero_ints = jax.tree.map(lambda x: None, (ranges, q_seg, k_seg))
    return (*zero_ints, dq, dk, dv)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Zero-pad `axis` of `x` up to `size` (padding segments are 0, padding features are 0)."""
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def unsupported_reason(q: jax.Array, k: jax.Array, *, q_offset=None, **_) -> str | None:
    """Why this backend cannot run the call (the dispatcher then uses xla), or None when it can."""
    if q_offset is not None:
        return "q_offset (decoding against a KV cache) is not supported"
    if q.shape[1] != k.shape[1]:
        return f"query length {q.shape[1]} differs from key length {k.shape[1]} (self-attention only)"
    return None


def _prepare(q, k, v, segment_ids, q_segment_ids, *, logits_soft_cap, scale, causal, sliding_window, block_q, block_kv, interpret, num_warps):
    """Pads to whole blocks and a power-of-two head_dim, computes per-block segment ranges once."""
    batch, seq, heads, head_dim = q.shape
    if heads % k.shape[2]:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({k.shape[2]})")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    default_block = min(128, max(16, _next_pow2(seq)))
    block_q, block_kv = block_q or default_block, block_kv or default_block
    padded = -(-seq // max(block_q, block_kv)) * max(block_q, block_kv)
    if padded % block_q or padded % block_kv:
        raise ValueError(f"block_q={block_q} and block_kv={block_kv} must divide each other (powers of two)")
    d = _next_pow2(head_dim)
    q, k, v = (_pad_axis(_pad_axis(x, 1, padded), 3, d) for x in (q, k, v))
    q_seg = _pad_axis((segment_ids if q_segment_ids is None else q_segment_ids).astype(jnp.int32), 1, padded)
    k_seg = _pad_axis(segment_ids.astype(jnp.int32), 1, padded)
    ranges = (*segment_ranges(q_seg, block_q), *segment_ranges(k_seg, block_kv))
    scale = head_dim**-0.5 if scale is None else float(scale)
    cap = None if logits_soft_cap is None else float(logits_soft_cap)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    st = (block_q, block_kv, scale, cap, bool(causal), sliding_window, bool(interpret), num_warps)
    return st, ranges, q_seg, k_seg, q, k, v


def pallas_gpu_attention(
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
    block_q: int | None = None,
    block_kv: int | None = None,
    interpret: bool | None = None,
    num_warps: int = 4,
) -> jax.Array:
    """Packed-row flash attention with block skipping; same semantics as `xla_attention`.

    q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]; segment_ids [batch, seq].
    Differentiable (custom VJP). `interpret` defaults to True off GPU, so tests run it on CPU.
    Block sizes (powers of two) default to 128, or less for short rows.
    """
    reason = unsupported_reason(q, k, q_offset=q_offset)
    if reason:
        raise ValueError(f"pallas_gpu attention: {reason}; use impl='xla' or 'auto'")
    seq, head_dim = q.shape[1], q.shape[3]
    st, ranges, q_seg, k_seg, qp, kp, vp = _prepare(
        q, k, v, segment_ids, q_segment_ids, logits_soft_cap=logits_soft_cap, scale=scale, causal=causal,
        sliding_window=sliding_window, block_q=block_q, block_kv=block_kv, interpret=interpret, num_warps=num_warps,
    )
    out = _flash(st, ranges, q_seg, k_seg, qp, kp, vp)
    return out[:, :seq, :, :head_dim]


def computed_tiles(q, k, v, *, segment_ids, q_segment_ids=None, causal=True, sliding_window=None, block_q=None, block_kv=None, interpret=None) -> jax.Array:
    """Number of kv tiles the forward kernel actually computed, per `[batch, heads, q_block]`.

    Counted inside the kernel (an extra output), so tests and benchmarks observe block skipping
    itself rather than a model of it.
    """
    st, ranges, q_seg, k_seg, qp, kp, vp = _prepare(
        q, k, v, segment_ids, q_segment_ids, logits_soft_cap=None, scale=None, causal=causal,
        sliding_window=sliding_window, block_q=block_q, block_kv=block_kv, interpret=interpret, num_warps=4,
    )
    counts = _forward(st, ranges, q_seg, k_seg, qp, kp, vp, count_tiles=True)[2]  # [b, h, padded_seq]
    return counts[:, :, :: st[0]]
