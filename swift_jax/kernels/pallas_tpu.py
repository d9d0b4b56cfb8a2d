"""TPU backend: JAX's splash attention (Pallas/Mosaic TPU) behind our signature.

Splash takes one row at a time with heads first (`[heads, seq, head_dim]`), segment ids, and a
static mask (causal, local window) whose block structure it analyses once to skip dead tiles. We
vmap it over the batch and over kv heads (its MQA kernel serves one kv head and its query group,
so K/V are never repeated). Off TPU it runs in Pallas interpret mode, which is how tests check its
mask and segment logic on CPU.

Padding differs from ours: splash lets equal ids attend, including 0 == 0. Query padding is given
id -1, which matches no key, and its (masked-row) output is zeroed afterwards. A non-padding query
that sees no key at all (possible only with separate `q_segment_ids`) gets splash's masked-row
value rather than the reference's zero.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

_BLOCK = 128  # splash's lane width: sequence blocks are multiples of 128


def unsupported_reason(q: jax.Array, k: jax.Array, *, q_offset=None, **_) -> str | None:
    """Why splash cannot run the call (the dispatcher then uses xla), or None when it can."""
    if q_offset is not None:
        return "q_offset (decoding against a KV cache) is not supported"
    if q.shape[1] != k.shape[1]:
        return f"query length {q.shape[1]} differs from key length {k.shape[1]} (self-attention only)"
    return None


@functools.lru_cache(maxsize=64)
def _kernel(seq: int, group: int, causal: bool, window: int | None, cap: float | None, block: int, interpret: bool):
    """Builds (and caches) the splash MQA kernel for one mask; mask analysis runs once per shape."""
    shape = (seq, seq)
    if window is not None:
        mask = splash.LocalMask(shape, window_size=(window - 1, 0 if causal else None), offset=0)
    elif causal:
        mask = splash.CausalMask(shape)
    else:
        mask = splash.FullMask(shape)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    multi = splash.MultiHeadMask([mask] * group)
    with jax.ensure_compile_time_eval():  # its mask tables must be constants, not tracers of the caller
        return splash.make_splash_mqa(
            multi, block_sizes=sizes, head_shards=1, q_seq_shards=1, attn_logits_soft_cap=cap, interpret=interpret
        )


def pallas_tpu_attention(
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
    block: int = _BLOCK,
    interpret: bool | None = None,
) -> jax.Array:
    """Splash attention with the semantics of `xla_attention` (see the module docstring).

    q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]. The sequence is padded
    to a multiple of `block` with padding segments. `interpret` defaults to True off TPU.
    """
    reason = unsupported_reason(q, k, q_offset=q_offset)
    if reason:
        raise ValueError(f"pallas_tpu attention: {reason}; use impl='xla' or 'auto'")
    batch, seq, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    group = heads // kv_heads
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    padded = -(-seq // block) * block
    pad = ((0, 0), (0, padded - seq))
    q_seg = segment_ids if q_segment_ids is None else q_segment_ids
    q_seg = jnp.pad(q_seg.astype(jnp.int32), pad)
    k_seg = jnp.pad(segment_ids.astype(jnp.int32), pad)
    q_seg_splash = jnp.where(q_seg == 0, -1, q_seg)  # padding queries match no key

    scale = head_dim**-0.5 if scale is None else scale
    kernel = _kernel(padded, group, bool(causal), sliding_window,
                     None if logits_soft_cap is None else float(logits_soft_cap), block, bool(interpret))
    qs = (q.astype(jnp.float32) * scale).astype(q.dtype)  # splash does not scale the logits
    qs = jnp.pad(qs, ((0, 0), (0, padded - seq), (0, 0), (0, 0)))
    kp = jnp.pad(k, ((0, 0), (0, padded - seq), (0, 0), (0, 0)))
    vp = jnp.pad(v, ((0, 0), (0, padded - seq), (0, 0), (0, 0)))
    qs = qs.reshape(batch, padded, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)  # [b, kv, g, s, d]
    kp, vp = kp.transpose(0, 2, 1, 3), vp.transpose(0, 2, 1, 3)  # [b, kv, s, d]

    def one_head(qh, kh, vh, ids):  # [g, s, d], [s, d], [s, d]
        return kernel(qh, kh, vh, segment_ids=ids)

    def one_row(qr, kr, vr, q_ids, k_ids):
        ids = splash.SegmentIds(q=q_ids, kv=k_ids)
        return jax.vmap(one_head, in_axes=(0, 0, 0, None))(qr, kr, vr, ids)

    out = jax.vmap(one_row)(qs, kp, vp, q_seg_splash, k_seg)  # [b, kv, g, s, d]
    out = out.transpose(0, 3, 1, 2, 4).reshape(batch, padded, heads, head_dim)[:, :seq]
    return jnp.where((q_seg[:, :seq] != 0)[:, :, None, None], out, 0).astype(q.dtype)
