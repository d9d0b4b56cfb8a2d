"""Per-device memory accounting, printed at start-up so an OOM shows before compilation does."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from swift_jax.models.config import ModelConfig


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds for the arrays in `tree` (the largest shard of each sharded array)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            continue
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def activation_bytes_estimate(
    cfg: ModelConfig,
    *,
    batch_per_device: int,
    seq_len: int,
    remat: bool,
    loss_chunk: int = 1024,
    sequence_parallel: int = 1,
) -> int:
    """Rough peak activation bytes on one device for a training step.

    Without remat every layer keeps its intermediates for the backward pass (projections, MLP
    activations, fp32 attention probabilities of the XLA path); with full remat each layer keeps only
    its input, plus one layer's intermediates while it is recomputed. The loss adds one fp32 logits
    chunk `[batch, loss_chunk, vocab]`. With `sequence_parallel` N devices sharing each row, a device holds
    `seq_len / N` positions of every activation, its queries' probabilities against the whole row
    `[batch, heads, seq_len / N, seq_len]`, and the row's gathered keys and values.
    """
    local = seq_len // sequence_parallel
    tokens = batch_per_device * local
    item = np.dtype(cfg.compute_dtype).itemsize
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    if cfg.mla is not None:  # latent attention: full per-head q, k, v of the kernels' width
        qkv = 3 * cfg.num_attention_heads * cfg.mla.cache_head_dim
    per_layer = tokens * item * (4 * cfg.hidden_size + 2 * qkv + 3 * cfg.intermediate_size)
    attention_probs = batch_per_device * cfg.num_attention_heads * local * seq_len * 4
    gathered_kv = 0 if sequence_parallel == 1 else batch_per_device * seq_len * 2 * cfg.num_key_value_heads * cfg.head_dim * item
    layer_peak = per_layer + attention_probs + gathered_kv
    if remat:
        kept = cfg.num_hidden_layers * tokens * cfg.hidden_size * item + layer_peak
    else:
        kept = cfg.num_hidden_layers * layer_peak
    logits = batch_per_device * min(loss_chunk, local) * cfg.vocab_size * 4  # one chunk of this shard
    return int(kept + logits)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def memory_report(
    params: Any,
    opt_state: Any,
    cfg: ModelConfig,
    *,
    batch_per_device: int,
    seq_len: int,
    remat: bool,
    sequence_parallel: int = 1,
) -> str:
    """A one-line-per-item report of per-device memory: params, optimizer state, activations, total."""
    p, o = per_device_bytes(params), per_device_bytes(opt_state)
    a = activation_bytes_estimate(
        cfg, batch_per_device=batch_per_device, seq_len=seq_len, remat=remat, sequence_parallel=sequence_parallel
    )
    shards = f", sequence over {sequence_parallel} devices" if sequence_parallel > 1 else ""
    try:
        capacity = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # CPU backends may not report memory
        capacity = None
    lines = [
        f"per-device memory: params {_gib(p)}, optimizer state {_gib(o)}, "
        f"activations ~{_gib(a)} (batch {batch_per_device} x {seq_len}{shards}, remat={remat}), total ~{_gib(p + o + a)}"
    ]
    if capacity:
        lines.append(f"device capacity {_gib(capacity)}" + (" -- likely OUT OF MEMORY" if p + o + a > capacity else ""))
    return "\n".join(lines)
