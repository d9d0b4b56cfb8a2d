"""Attention backends on one-sample and packed rows: forward and forward+backward time, useful TFLOP/s.

    python scripts/bench_attention.py                       # GPU/TPU: seq 2k..16k, GQA 32:8, head_dim 128, bf16
    python scripts/bench_attention.py --small               # CPU smoke run: tiny sizes, Pallas in interpret mode

Every backend that exists on the platform is timed in the same run and reported as a ratio to
`xla`; TFLOP/s count only unmasked work (causal pairs inside each sample: forward 4*d flops per
pair and head, forward+backward 3x that), so a kernel that skips masked tiles is not credited for
work it did not need to do. "tiles" is the share of (q, kv) tiles our kernel computes. On CPU the
Pallas timings are interpret mode and say nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from swift_jax.kernels.blocks import tile_liveness
from swift_jax.kernels.cudnn import cudnn_attention
from swift_jax.kernels.pallas_gpu import pallas_gpu_attention
from swift_jax.kernels.pallas_tpu import pallas_tpu_attention
from swift_jax.kernels.xla import xla_attention, xla_blocked_attention


def one_sample_rows(batch: int, seq: int, rng) -> np.ndarray:
    return np.ones((batch, seq), np.int32)


def packed_rows(batch: int, seq: int, rng, mean: float = 600.0, sigma: float = 0.8) -> np.ndarray:
    """Rows filled with log-normal sample lengths (mean `mean`), first-fit in order, padding after."""
    mu = np.log(mean) - sigma**2 / 2
    rows = np.zeros((batch, seq), np.int32)
    for r in range(batch):
        pos, sid = 0, 1
        while True:
            n = max(1, int(rng.lognormal(mu, sigma)))
            if pos + n > seq:
                break
            rows[r, pos : pos + n] = sid
            pos, sid = pos + n, sid + 1
        if pos == 0:  # a sample longer than the row: truncate it
            rows[r, :] = 1
    return rows


def useful_pairs(segment_ids: np.ndarray) -> int:
    """Causal (query, key) pairs inside samples: sum of n(n+1)/2 over segments."""
    total = 0
    for row in segment_ids:
        _, counts = np.unique(row[row != 0], return_counts=True)
        total += int(np.sum(counts * (counts + 1) // 2))
    return total


def shipped_pallas_mha(q, k, v, *, segment_ids):
    """jax's shipped Pallas-Triton `mha`: no GQA (K/V repeated), no block skipping."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    return gpu_attention.mha(q, k, v, segment_ids, sm_scale=q.shape[-1] ** -0.5, causal=True)


def tokamax_attention(q, k, v, *, segment_ids):
    """The tokamax package's attention (needs jax >= 0.11) with the segment mask given densely."""
    import tokamax

    mask = (segment_ids[:, None, :, None] == segment_ids[:, None, None, :]) & (segment_ids[:, None, :, None] != 0)
    return tokamax.dot_product_attention(q, k, v, mask=mask, is_causal=True)


def backends(platform: str, interpret_pallas: bool) -> dict[str, Callable]:
    """Name -> fn(q, k, v, *, segment_ids) for what can run on this platform."""
    found = {"xla": xla_attention, "xla_blocked": xla_blocked_attention, "pallas_gpu (ours)": pallas_gpu_attention}
    if platform == "gpu":
        found["cudnn"] = cudnn_attention
        found["jax pallas mha"] = shipped_pallas_mha
        try:
            import tokamax  # noqa: F401

            found["tokamax"] = tokamax_attention
        except ImportError:
            pass
    if platform == "tpu" or interpret_pallas:
        found["pallas_tpu (splash)"] = pallas_tpu_attention
    return found


def timed(fn: Callable, args, iters: int) -> float:
    """Median seconds per call of a jitted fn after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(fn: Callable, q, k, v, seg, iters: int) -> tuple[float, float]:
    fwd = jax.jit(lambda q, k, v: fn(q, k, v, segment_ids=seg))
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, segment_ids=seg).astype(jnp.float32))  # noqa: E731
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    return timed(fwd, (q, k, v), iters), timed(fwd_bwd, (q, k, v), iters)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", default="2048,4096,8192,16384")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=8)
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--mean_len", type=float, default=600.0, help="mean sample length of packed rows")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--small", action="store_true", help="CPU smoke sizes: seq 256, 4:2 heads, head_dim 64, mean 40")
    a = p.parse_args()
    if a.small:
        a.seqs, a.heads, a.kv_heads, a.head_dim, a.mean_len, a.iters, a.dtype = "256", 4, 2, 64, 40.0, 2, "float32"
    platform = jax.default_backend()
    interpret = platform not in ("gpu", "tpu")
    dtype = jnp.dtype(a.dtype)
    print(f"device: {jax.devices()[0].device_kind} ({platform}), jax {jax.__version__}, dtype {a.dtype}, "
          f"batch {a.batch}, heads {a.heads}:{a.kv_heads}, head_dim {a.head_dim}")
    if interpret:
        print("NOTE: no GPU/TPU: Pallas backends run in interpret mode; times show only that they run.")
    print("TFLOP/s count only unmasked work (causal pairs within samples); x = time / xla time (lower is faster)")
    header = f"{'seq':>6} {'layout':>8} {'backend':>20} {'tiles':>6} {'fwd ms':>9} {'x':>6} {'TF/s':>7} {'f+b ms':>9} {'x':>6} {'TF/s':>7}"
    print(header)
    print("-" * len(header))
    rng = np.random.RandomState(0)
    for seq in (int(s) for s in a.seqs.split(",")):
        ks = jax.random.split(jax.random.key(0), 3)
        q = jax.random.normal(ks[0], (a.batch, seq, a.heads, a.head_dim), dtype)
        k = jax.random.normal(ks[1], (a.batch, seq, a.kv_heads, a.head_dim), dtype)
        v = jax.random.normal(ks[2], (a.batch, seq, a.kv_heads, a.head_dim), dtype)
        for layout, make in (("1/row", one_sample_rows), ("packed", lambda b, s, r: packed_rows(b, s, r, a.mean_len))):
            seg_np = make(a.batch, seq, rng)
            seg = jnp.asarray(seg_np)
            flops = 4.0 * a.head_dim * a.heads * useful_pairs(seg_np)
            block = min(128, seq)
            live = tile_liveness(seg, seg, block_q=block, block_kv=block, causal=True, sliding_window=None)
            tiles = f"{float(jnp.mean(live.astype(jnp.float32))) * 100:.0f}%"
            base = None
            for name, fn in backends(platform, interpret).items():
                if name == "cudnn" and layout == "packed":
                    print(f"{seq:>6} {layout:>8} {name:>20}   n/a: takes no segment ids (falls back to xla)")
                    continue
                try:
                    fwd, both = measure(fn, q, k, v, seg, a.iters)
                except Exception as e:  # a backend that fails here must not hide the others
                    print(f"{seq:>6} {layout:>8} {name:>20}   error: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                    continue
                base = base or (fwd, both)
                shown = tiles if name.startswith("pallas_gpu") else ""
                print(f"{seq:>6} {layout:>8} {name:>20} {shown:>6} {fwd * 1e3:9.2f} {fwd / base[0]:6.2f} "
                      f"{flops / fwd / 1e12:7.2f} {both * 1e3:9.2f} {both / base[1]:6.2f} {3 * flops / both / 1e12:7.2f}")


if __name__ == "__main__":
    main()
