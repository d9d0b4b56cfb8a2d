"""Attention backends against the XLA reference on CPU (Pallas in interpret mode), forward and backward.

Each case is jitted once (forward and grads of q, k, v together) on small shapes; blocks of 16
make a 64-token row span several tiles so block skipping and block-boundary segments are exercised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swift_jax.kernels import attention
from swift_jax.kernels.pallas_gpu import pallas_gpu_attention
from swift_jax.kernels.pallas_tpu import pallas_tpu_attention
from swift_jax.kernels.xla import xla_attention, xla_blocked_attention

SEQ, BLOCK = 64, 16


def packed_layout(seq: int, lengths: list[int]) -> np.ndarray:
    """One row of segment ids: segments of the given lengths from 1 upwards, then padding (0)."""
    row = np.zeros(seq, np.int32)
    start = 0
    for i, n in enumerate(lengths):
        row[start : start + n] = i + 1
        start += n
    assert start <= seq
    return row


# Row 0: one-token segments, segments crossing block boundaries (16, 32, 48), padding at the end.
# Row 1: all padding. Row 2: one sample filling the row.
LAYOUT = np.stack(
    [
        packed_layout(SEQ, [1, 1, 13, 20, 1, 18, 3]),
        packed_layout(SEQ, []),
        packed_layout(SEQ, [SEQ]),
    ]
)


def qkv(batch, seq, heads, kv_heads, head_dim, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (batch, seq, heads, head_dim), dtype)
    k = jax.random.normal(ks[1], (batch, seq, kv_heads, head_dim), dtype)
    v = jax.random.normal(ks[2], (batch, seq, kv_heads, head_dim), dtype)
    w = jax.random.normal(ks[3], (batch, seq, heads, head_dim), jnp.float32)  # cotangent weights
    return q, k, v, w


def value_and_grads(fn, segment_ids, w):
    """Jitted `(out, (dq, dk, dv))` of `sum(fn(q, k, v) * w)`, through `jax.checkpoint` (remat)."""
    body = jax.checkpoint(lambda q, k, v: fn(q, k, v, segment_ids=segment_ids))

    def loss(q, k, v):
        out = body(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w), out

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def assert_close(got, want, dtype, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    rtol = 1e-5 if dtype == jnp.float32 else 1e-2
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err <= 4 * rtol, f"{what}: relative error {err:.2e} > {4 * rtol:.0e}"


# (id, heads, kv_heads, head_dim, dtype, options): GQA ratios 1/2/4/8, head_dim 64/128, masks.
GPU_CASES = [
    ("mha-d64-causal", 2, 2, 64, jnp.float32, dict()),
    ("gqa2-d128-window", 4, 2, 128, jnp.float32, dict(sliding_window=9)),
    ("gqa4-softcap-bidirectional", 4, 1, 64, jnp.float32, dict(causal=False, logits_soft_cap=3.0)),
    ("mqa8-bf16-window-softcap", 8, 1, 64, jnp.bfloat16, dict(sliding_window=20, logits_soft_cap=5.0)),
]


@pytest.mark.parametrize("heads,kv_heads,head_dim,dtype,opts", [c[1:] for c in GPU_CASES], ids=[c[0] for c in GPU_CASES])
def test_pallas_gpu_matches_reference(heads, kv_heads, head_dim, dtype, opts):
    q, k, v, w = qkv(3, SEQ, heads, kv_heads, head_dim, dtype)
    seg = jnp.asarray(LAYOUT)
    ours = lambda q, k, v, segment_ids: pallas_gpu_attention(  # noqa: E731
        q, k, v, segment_ids=segment_ids, block_q=BLOCK, block_kv=BLOCK, **opts
    )
    assert_matches_reference(ours, q, k, v, w, seg, dtype, opts)


def assert_matches_reference(ours, q, k, v, w, seg, dtype, opts):
    """`ours` gives the reference's output and q/k/v gradients on LAYOUT (row 1 all padding: exact zeros)."""
    ref = lambda q, k, v, segment_ids: xla_attention(q, k, v, segment_ids=segment_ids, **opts)  # noqa: E731
    (gq, gk, gv), out = value_and_grads(ours, seg, w)(q, k, v)
    (rq, rk, rv), want = value_and_grads(ref, seg, w)(q, k, v)
    assert_close(out, want, dtype, "output")
    assert not np.asarray(out[1], np.float32).any(), "an all-padding row must give exact zeros"
    for name, got, exp in (("dq", gq, rq), ("dk", gk, rk), ("dv", gv, rv)):
        assert_close(got, exp, dtype, name)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 24), min_size=0, max_size=12), window=st.sampled_from([None, 5]))
def test_pallas_gpu_random_layouts(lengths, window):
    """Property: any packing of samples into a row (with trailing padding) matches the reference."""
    kept, total = [], 0
    for n in lengths:
        if total + n > SEQ:
            break
        kept.append(n)
        total += n
    seg = jnp.asarray(packed_layout(SEQ, kept)[None])
    q, k, v, _ = qkv(1, SEQ, 4, 2, 64, jnp.float32, seed=len(kept))
    got = _jitted_gpu(window)(q, k, v, seg)
    want = xla_attention(q, k, v, segment_ids=seg, sliding_window=window)
    assert_close(got, want, jnp.float32, f"layout {kept}")


_GPU_FNS = {}


def _jitted_gpu(window):
    """One compilation per window for all hypothesis examples (segment ids are traced)."""
    if window not in _GPU_FNS:
        _GPU_FNS[window] = jax.jit(
            lambda q, k, v, seg: pallas_gpu_attention(
                q, k, v, segment_ids=seg, sliding_window=window, block_q=BLOCK, block_kv=BLOCK
            )
        )
    return _GPU_FNS[window]


@pytest.mark.parametrize("block", [BLOCK, 24], ids=["block16", "ragged-block24"])
@pytest.mark.parametrize("heads,kv_heads,head_dim,dtype,opts", [c[1:] for c in GPU_CASES], ids=[c[0] for c in GPU_CASES])
def test_xla_blocked_matches_reference(heads, kv_heads, head_dim, dtype, opts, block):
    """Query blocks against their live keys only; 24 does not divide 64, so the last block is short."""
    q, k, v, w = qkv(3, SEQ, heads, kv_heads, head_dim, dtype)
    seg = jnp.asarray(LAYOUT)
    ours = lambda q, k, v, segment_ids: xla_blocked_attention(  # noqa: E731
        q, k, v, segment_ids=segment_ids, block=block, **opts
    )
    assert_matches_reference(ours, q, k, v, w, seg, dtype, opts)


TPU_CASES = [
    ("gqa2-causal-softcap", 4, 2, dict(logits_soft_cap=5.0)),
    ("mqa4-window", 4, 1, dict(sliding_window=40)),
]


@pytest.mark.parametrize("heads,kv_heads,opts", [c[1:] for c in TPU_CASES], ids=[c[0] for c in TPU_CASES])
def test_pallas_tpu_splash_matches_reference(heads, kv_heads, opts):
    """Splash (interpret mode) with our padding/segment/window translation; 200 tokens pad to 256."""
    seq = 200
    seg = jnp.asarray(np.stack([packed_layout(seq, [1, 60, 90, 1, 30]), packed_layout(seq, [])]))
    q, k, v, w = qkv(2, seq, heads, kv_heads, 64, jnp.float32)
    ours = lambda q, k, v, segment_ids: pallas_tpu_attention(q, k, v, segment_ids=segment_ids, **opts)  # noqa: E731
    ref = lambda q, k, v, segment_ids: xla_attention(q, k, v, segment_ids=segment_ids, **opts)  # noqa: E731
    (gq, gk, gv), out = value_and_grads(ours, seg, w)(q, k, v)
    (rq, rk, rv), want = value_and_grads(ref, seg, w)(q, k, v)
    assert_close(out, want, jnp.float32, "output")
    assert not np.asarray(out[1]).any(), "an all-padding row must give exact zeros"
    for name, got, exp in (("dq", gq, rq), ("dk", gk, rk), ("dv", gv, rv)):
        assert_close(got, exp, jnp.float32, name)


def test_pallas_gpu_lowers_to_triton_for_cuda():
    """Forward and backward lower for a CUDA device (Triton IR) without a GPU: no CPU-only ops slip in.

    Uses a real model's shape (GQA 28:4 = group 7, not a power of two; head_dim 128; bf16).
    """
    q = jnp.zeros((1, 256, 28, 128), jnp.bfloat16)
    k = jnp.zeros((1, 256, 4, 128), jnp.bfloat16)
    seg = jnp.ones((1, 256), jnp.int32)

    def loss(q, k, v):
        out = pallas_gpu_attention(q, k, v, segment_ids=seg, sliding_window=64, logits_soft_cap=30.0, interpret=False)
        return out.astype(jnp.float32).sum()

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, k).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("xla.gpu.triton") == 3  # forward, dq and dk/dv kernels


def test_attention_dispatch_through_every_backend_name():
    """The public function reaches each backend by name; `auto` on CPU is the reference."""
    seg = jnp.asarray(LAYOUT)
    q, k, v, _ = qkv(3, SEQ, 4, 2, 64, jnp.float32)
    want = xla_attention(q, k, v, segment_ids=seg)
    for impl in ("auto", "xla", "xla_blocked", "pallas_gpu"):
        assert_close(attention(q, k, v, segment_ids=seg, impl=impl), want, jnp.float32, impl)
