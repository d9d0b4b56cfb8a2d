"""Round-to-nearest symmetric group-wise weight quantization (int4 / int8), in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def quantize_rtn(kernel: jax.Array, *, bits: int, group_size: int) -> tuple[jax.Array, jax.Array]:
    """Quantize an HF-layout weight `[out, in]` per group of `group_size` input columns.

    Returns `(q [out, in] int8 in [-2^(b-1), 2^(b-1) - 1], scale [out, in // group_size] float32)` with
    `weight ~= q * scale` (scale = absmax / (2^(b-1) - 1), so the largest value is exact).
    """
    out_features, in_features = kernel.shape
    if in_features % group_size:
        raise ValueError(f"group_size {group_size} does not divide the input dimension {in_features}")
    qmax = 2 ** (bits - 1) - 1
    groups = kernel.astype(jnp.float32).reshape(out_features, in_features // group_size, group_size)
    scale = jnp.max(jnp.abs(groups), axis=-1) / qmax  # [out, groups]
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(groups / scale[..., None]), -qmax - 1, qmax).astype(jnp.int8)
    return q.reshape(out_features, in_features), scale


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
    """`[out, in]` float32 weights from int codes and per-group scales."""
    out_features, in_features = q.shape
    groups = scale.shape[1]
    return (q.reshape(out_features, groups, -1).astype(jnp.float32) * scale[..., None]).reshape(out_features, in_features)
