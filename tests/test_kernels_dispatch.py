"""Block skipping (counted inside the kernel), backend choice, cuDNN's packed-row guard, the model
with a Pallas backend, and the kernel inside `shard_map` over the fake 8-device mesh."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import swift_jax
from swift_jax.kernels import attention, use_impl
from swift_jax.kernels.attention import resolve_impl
from swift_jax.kernels.blocks import kv_block_bounds, position_live, q_block_bounds, tile_liveness
from swift_jax.kernels.cudnn import lengths_attention, single_segment_lengths
from swift_jax.kernels.pallas_gpu import computed_tiles, pallas_gpu_attention
from swift_jax.kernels.xla import attention_mask, xla_attention
from test_kernels import packed_layout, qkv


def needed_tiles(segment_ids: np.ndarray, block: int, **mask_opts) -> np.ndarray:
    """Brute force from the reference mask: per [batch, q_block], tiles holding >= 1 allowed pair."""
    seg = jnp.asarray(segment_ids)
    mask = np.asarray(attention_mask(seg, seg, **mask_opts))  # [b, s, s]
    b, s, _ = mask.shape
    tiles = mask.reshape(b, s // block, block, s // block, block).any(axis=(2, 4))
    return tiles.sum(-1)


@pytest.mark.parametrize("window", [None, 24], ids=["causal", "window24"])
def test_kernel_computes_only_needed_tiles_on_packed_rows(window):
    """On rows packed with short samples the kernel computes exactly the tiles that hold work."""
    seq, block = 128, 16
    rng = np.random.RandomState(0)
    lengths = list(rng.randint(1, 20, 12))  # ~120 tokens of short samples, then padding
    seg = np.stack([packed_layout(seq, lengths[: np.searchsorted(np.cumsum(lengths), seq, "right")]), packed_layout(seq, [seq])])
    q, k, v, _ = qkv(2, seq, 2, 1, 16, jnp.float32)
    counts = np.asarray(computed_tiles(q, k, v, segment_ids=jnp.asarray(seg), sliding_window=window, block_q=block, block_kv=block))
    want = needed_tiles(seg, block, causal=True, sliding_window=window)  # [b, nq]
    np.testing.assert_array_equal(counts[:, 0], want)
    np.testing.assert_array_equal(counts[:, 0], counts[:, 1])  # same for every head
    n = seq // block
    causal_only = n * (n + 1) // 2
    assert counts[1, 0].sum() == (causal_only if window is None else want[1].sum())  # one sample: no segment skip
    assert counts[0, 0].sum() < 0.5 * causal_only, "a row of short samples should skip most causal tiles"


def test_block_bounds_cover_exactly_the_position_live_tiles():
    """The loop ranges used by forward and backward equal the tiles the causal/window masks allow."""
    for bq, bk, window, causal in itertools.product((8, 16), (8, 16), (None, 1, 5, 23), (True, False)):
        nq, nk = 64 // bq, 64 // bk
        for i in range(nq):
            lo, hi = (int(x) for x in kv_block_bounds(i, bq, bk, nk, causal=causal, sliding_window=window))
            live = [j for j in range(nk) if bool(position_live(i, j, bq, bk, causal=causal, sliding_window=window))]
            assert list(range(lo, hi)) == live, (bq, bk, window, causal, i)
        for j in range(nk):
            lo, hi = (int(x) for x in q_block_bounds(j, bq, bk, nq, causal=causal, sliding_window=window))
            live = [i for i in range(nq) if bool(position_live(i, j, bq, bk, causal=causal, sliding_window=window))]
            assert list(range(lo, hi)) == live, (bq, bk, window, causal, j)


def test_tile_liveness_is_conservative_and_tight_for_packed_rows():
    seq, block = 64, 8
    seg = np.stack([packed_layout(seq, [3, 9, 1, 20, 7]), packed_layout(seq, [])])
    live = np.asarray(tile_liveness(jnp.asarray(seg), jnp.asarray(seg), block_q=block, block_kv=block, causal=True, sliding_window=None))
    np.testing.assert_array_equal(live.sum(-1), needed_tiles(seg, block, causal=True, sliding_window=None))


def test_auto_and_explicit_backend_choice():
    q, k = jnp.zeros((1, 8, 4, 16)), jnp.zeros((1, 8, 2, 16))
    seg = jnp.ones((1, 8), jnp.int32)
    opts = dict(segment_ids=seg)
    assert resolve_impl("auto", q, k, **opts) == "xla"  # CPU, shorter than two query blocks
    long_q, long_k = jnp.zeros((1, 256, 4, 16)), jnp.zeros((1, 256, 2, 16))
    assert resolve_impl("auto", long_q, long_k, segment_ids=jnp.ones((1, 256), jnp.int32)) == "xla_blocked"
    assert resolve_impl("auto", long_q, long_k, segment_ids=jnp.ones((1, 256), jnp.int32), causal=False) == "xla"
    assert resolve_impl("pallas_gpu", q, k, **opts) == "pallas_gpu"
    assert resolve_impl("cudnn", q, k, **opts) == "xla"  # float32: cuDNN does not cover it
    assert resolve_impl("pallas_gpu", q[:, :1], k, q_offset=3, **opts) == "xla"  # decoding
    with use_impl("pallas_tpu"):
        assert resolve_impl("auto", q, k, **opts) == "pallas_tpu"
        assert resolve_impl("xla", q, k, **opts) == "xla"
    with pytest.raises(ValueError, match="flash.*expected 'auto' or one of"):
        attention(q, k, k, segment_ids=seg, impl="flash")


def test_auto_order_per_platform():
    """`auto` by platform (passed explicitly, so CPU tests the GPU/TPU choices): cuDNN for bf16 without a soft
    cap, else the Pallas kernel on GPU; splash on TPU; the blocked reference on CPU; decoding the reference."""
    seg = jnp.ones((1, 256), jnp.int32)
    q32, k32 = jnp.zeros((1, 256, 4, 64)), jnp.zeros((1, 256, 2, 64))
    q16, k16 = q32.astype(jnp.bfloat16), k32.astype(jnp.bfloat16)
    pick = lambda q, k, platform, **o: resolve_impl("auto", q, k, platform=platform, segment_ids=seg, **o)  # noqa: E731
    assert pick(q16, k16, "gpu") == "cudnn"
    assert pick(q32, k32, "gpu") == "pallas_gpu"  # cuDNN: bf16/fp16 only
    assert pick(q16, k16, "gpu", logits_soft_cap=30.0) == "pallas_gpu"  # cuDNN: no soft cap
    assert pick(q16[:, :1], k16, "gpu", q_offset=5) == "xla"  # decoding against a cache
    assert resolve_impl("auto", q16, k16, platform="gpu", exclude=("cudnn",), segment_ids=seg) == "pallas_gpu"  # packed rows
    assert pick(q16, k16, "tpu") == "pallas_tpu"
    assert pick(q16, k16, "cpu") == "xla_blocked"
    assert pick(q16, k16, "cpu", causal=False) == "xla"


def test_cudnn_lengths_path_is_taken_only_for_unpacked_rows():
    """The cuDNN backend's translation (segment ids -> lengths), run with jax's XLA implementation.

    Unpacked rows go through `dot_product_attention` with lengths and match the reference; packed
    rows would be wrong there (samples would see each other), so they must take the fallback.
    """
    q, k, v, _ = qkv(2, 32, 4, 2, 16, jnp.float32)
    unpacked = jnp.asarray([[3] * 20 + [0] * 12, [0] * 32], jnp.int32)
    packed = jnp.asarray([[1] * 10 + [2] * 10 + [0] * 12, [1] * 32], jnp.int32)
    assert bool(single_segment_lengths(unpacked)[1]) and not bool(single_segment_lengths(packed)[1])
    assert not bool(single_segment_lengths(jnp.asarray([[0, 1, 1, 1]]))[1])  # padding first
    for seg, window in itertools.product((unpacked, packed), (None, 5)):
        ref = lambda q, k, v: xla_attention(q, k, v, segment_ids=seg, sliding_window=window)  # noqa: E731
        got = lengths_attention(
            q, k, v, segment_ids=seg, causal=True, sliding_window=window, scale=None, implementation="xla", fallback=ref
        )
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref(q, k, v)), atol=1e-5)
    dense_on_packed = lengths_attention(
        q, k, v, segment_ids=packed, causal=True, sliding_window=None, scale=None, implementation="xla",
        fallback=lambda q, k, v: jnp.full_like(q, jnp.nan),
    )
    assert np.isnan(np.asarray(dense_on_packed)).all(), "packed rows must never reach the lengths-only kernel"


def test_model_logits_with_pallas_gpu_match_xla():
    """A tiny Qwen2 (GQA, one sliding-window layer) on a packed row: same logits with each backend."""
    hf_config = dict(
        model_type="qwen2", vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
        use_sliding_window=True, sliding_window=8, max_window_layers=1,
    )
    model = swift_jax.init_model(hf_config, seed=0)
    seq = 48
    seg = jnp.asarray(packed_layout(seq, [5, 1, 30, 7])[None])
    pos = jnp.asarray(np.concatenate([np.arange(n) for n in (5, 1, 30, 7, 5)])[None].astype(np.int32))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (1, seq)).astype(np.int32))
    want = np.asarray(model(ids, positions=pos, segment_ids=seg))
    with use_impl("pallas_gpu"):
        got = np.asarray(model(ids, positions=pos, segment_ids=seg))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_pallas_gpu_inside_shard_map_over_data_and_tensor():
    """Batch over `data`, heads over `tensor` (8 fake devices): forward and grads match the reference.

    Pallas' CPU interpreter trips over shard_map's varying-axes check (a jax limitation), so the
    numerical run uses check_vma=False; the GPU lowering is checked with check_vma=True.
    """
    mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    q, k, v, w = qkv(2, 32, 8, 4, 16, jnp.float32)
    seg = jnp.asarray(np.stack([packed_layout(32, [7, 1, 20]), packed_layout(32, [32])]))
    heads, rows = P("data", None, "tensor", None), P("data", None)

    def sharded(check_vma, **kw):
        fn = lambda q, k, v, s: pallas_gpu_attention(q, k, v, segment_ids=s, **kw)  # noqa: E731
        specs = dict(in_specs=(heads, heads, heads, rows), out_specs=heads, check_vma=check_vma)
        return lambda q, k, v: jax.shard_map(fn, mesh=mesh, **specs)(q, k, v, seg)

    def loss(fn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))

    got, ggot = loss(sharded(False))(q, k, v)
    want, gwant = loss(lambda q, k, v: xla_attention(q, k, v, segment_ids=seg))(q, k, v)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for a, b in zip(ggot, gwant):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
    lowered = loss(sharded(True, interpret=False)).trace(q, k, v).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("xla.gpu.triton") == 3
