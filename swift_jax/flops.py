"""Model FLOPs accounting and MFU (model FLOPs utilisation) for training steps.

Formula (per real, non-padding token; recomputation from remat is never counted):

* Dense matmuls: every `Linear` kernel and the LM head (the tied embedding counts when it is the head);
  embedding lookups cost nothing. With N = their parameter count:
  - full fine-tuning: 6N (forward 2N, backward 4N: gradients of activations and of weights);
  - LoRA: 4N for the frozen weights (forward 2N + activation gradients 2N, no weight gradients), plus 6 x the
    adapter parameters r * (in + out) of every adapted layer.
* Attention scores and values: per layer and per segment of real length L, the causal pairs
  P = sum_i min(i + 1, window) cost 2 matmuls x 2 FLOPs x heads x head_dim per pair forward, x 3 for
  forward + backward: 12 * heads * head_dim * P. Packed rows count each segment alone, so padding and
  cross-segment pairs are never counted. Latent attention (deepseek_v3) has key width qk_head_dim and
  value width v_head_dim: 6 * heads * (qk_head_dim + v_head_dim) * P (the kernels' zero padding of the
  shorter one is not counted).
* MoE layers count active parameters: the router, top_k routed experts and the shared experts.

MFU = achieved model FLOP/s / the device's peak dense bf16 FLOP/s (table below; unknown device: None).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from swift_jax.models.config import ModelConfig

# Peak dense bf16 FLOP/s per chip, matched by substring of `jax.Device.device_kind` (first hit wins).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("TPU v6", 918e12),  # v6e ("TPU v6 lite")
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
)


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one chip, or None for an unknown device (then MFU is omitted)."""
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in matmuls: attention and MLP projections of every layer, and the LM head.

    MoE layers count what one token uses: the router, its top-k experts and any shared experts (active
    parameters). Biases and norms are not counted.
    """
    h, kv, d, e, m = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
    attention = e * h * d + 2 * e * kv * d + h * d * e
    if cfg.mla is not None:
        attention = _mla_params(cfg)
    mlp = 3 * e * m
    total = cfg.num_hidden_layers * (attention + mlp) + e * cfg.vocab_size
    if cfg.moe is not None:
        moe, sparse = cfg.moe, len(cfg.moe.sparse_layers)
        active = e * moe.num_experts + (moe.top_k * moe.intermediate_size + moe.shared_intermediate_size) * 3 * e
        total += sparse * (active - mlp)
    return total


def _mla_params(cfg: ModelConfig) -> int:
    """Matmul parameters of one latent-attention layer (q path, kv down/up projections, o_proj)."""
    mla, e, h = cfg.mla, cfg.hidden_size, cfg.num_attention_heads
    if mla.q_lora_rank is None:
        q = e * h * mla.qk_head_dim
    else:
        q = e * mla.q_lora_rank + mla.q_lora_rank * h * mla.qk_head_dim
    kv = e * (mla.kv_lora_rank + mla.qk_rope_head_dim) + mla.kv_lora_rank * h * (mla.qk_nope_head_dim + mla.v_head_dim)
    return q + kv + h * mla.v_head_dim * e


def causal_pairs(length: int, window: int | None) -> int:
    """Number of (query, key) pairs a causal (optionally sliding-window) segment of `length` attends."""
    i = np.arange(length)
    return int(np.minimum(i + 1, window if window else length).sum())


def attention_flops(cfg: ModelConfig, segment_lengths: Iterable[int]) -> float:
    """Training FLOPs (forward + backward) of attention scores and values over real segments."""
    windows = cfg.layer_windows or (None,) * cfg.num_hidden_layers
    per_pair = 12 * cfg.num_attention_heads * cfg.head_dim
    if cfg.mla is not None:
        per_pair = 6 * cfg.num_attention_heads * (cfg.mla.qk_head_dim + cfg.mla.v_head_dim)
    lengths = [int(n) for n in segment_lengths if n > 0]
    return float(sum(per_pair * causal_pairs(n, w) for w in windows for n in lengths))


def training_flops(
    cfg: ModelConfig,
    segment_lengths: Sequence[int],
    *,
    lora_params: int = 0,
    full: bool = True,
) -> float:
    """Model FLOPs of one training step over real segments (see the module docstring).

    `full=False` with `lora_params` = the adapters' parameter count gives the LoRA accounting.
    """
    tokens = int(sum(segment_lengths))
    n = matmul_params(cfg)
    dense = 6 * n * tokens if full else 4 * n * tokens + 6 * lora_params * tokens
    return dense + attention_flops(cfg, segment_lengths)


def segment_lengths(segment_ids: np.ndarray) -> list[int]:
    """Real segment lengths of a packed batch `[batch, seq]` (segment 0 = padding)."""
    lengths = []
    for row in np.asarray(segment_ids):
        _, counts = np.unique(row[row > 0], return_counts=True)
        lengths.extend(int(c) for c in counts)
    return lengths


def mfu(flops: float, seconds: float, device_kind: str, num_devices: int) -> float | None:
    """Model FLOPs utilisation of a step, or None when the device's peak is unknown."""
    peak = peak_flops(device_kind)
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * num_devices)


_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # a compilation served by the persistent cache
_compiles = [0]
_listening = [False]


def _count_compile(event: str, *_, **__) -> None:
    if event in (_BACKEND_COMPILE_EVENT, _CACHE_HIT_EVENT):
        _compiles[0] += 1


def compile_count() -> int:
    """XLA compilations in this process since the first call, persistent-cache hits included (a
    `jax.monitoring` listener counts them).

    The trainer logs the difference per logging window (`compiles`): after the first step it must stay 0,
    since a recompiling step (a changed shape, dtype or sharding) costs seconds to minutes each time.
    """
    if not _listening[0]:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        jax.monitoring.register_event_listener(_count_compile)
        _listening[0] = True
    return _compiles[0]
