"""GPTQ (Frantar et al., 2022) in JAX: quantize a kernel column by column, compensating each column's
rounding error on the columns not yet quantized, weighted by the inverse Hessian of the layer inputs.

For a layer `y = x @ W` (HF layout `W` `[out, in]`, "columns" = input features), the Hessian of the
reconstruction error `||X W^T - X Q^T||^2` is `H = 2 X^T X / n` `[in, in]`. With `U` the upper Cholesky
factor of `H^-1`, quantizing column `i` to `q_i` moves the remaining columns by
`-(w_i - q_i) / U[i, i] * U[i, i+1:]`. Columns are processed in blocks (one block per scale group), the
error of a block is applied to later columns with one matmul ("lazy batch" updates), and the whole
kernel is one `jit` (two nested `fori_loop`s), so it runs on TPU/GPU; it compiles once per kernel shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .base import QuantizedWeight, QuantSpec
from .rtn import int_bound

HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_BLOCK = 128


def accumulate_hessian(h: jax.Array, x: jax.Array) -> jax.Array:
    """`h + x^T x` over all rows of `x` `[..., in]`, in float32 (`h` `[in, in]`)."""
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return h + jnp.matmul(x.T, x, precision=HIGHEST)


def _scale(absmax: jax.Array, bits: int) -> jax.Array:
    """Symmetric scale for an absmax, the same formula qwix uses for RTN (so an identity Hessian gives RTN)."""
    scale = absmax / int_bound(bits)
    return jnp.where(scale < jnp.sqrt(jnp.finfo(jnp.float32).tiny), 1.0, scale)


def _round(w: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
    qmax = 2 ** (bits - 1) - 1
    return jnp.clip(jnp.round(w / scale), -qmax - 1, qmax)


@functools.partial(jax.jit, static_argnames=("bits", "block", "grouped", "damp"))
def _gptq(w: jax.Array, h: jax.Array, *, bits: int, block: int, grouped: bool, damp: float):
    """`w` `[out, cols]`, `h` `[cols, cols]` (cols a multiple of `block`) -> (q `[out, cols]`, scale `[out, n_scales]`)."""
    out, cols = w.shape
    w = w.astype(jnp.float32)
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
    w = jnp.where(dead[None, :], 0.0, w)
    h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(cols, dtype=jnp.float32)
    lower = jnp.linalg.cholesky(h)
    h_inv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(cols, dtype=jnp.float32))
    u = jnp.linalg.cholesky(h_inv).T  # upper factor of H^-1: [cols, cols]
    n_blocks = cols // block
    channel_scale = _scale(jnp.max(jnp.abs(w), axis=1), bits)  # [out], used when not grouped
    col_ids = jnp.arange(cols)
    in_block = jnp.arange(block)

    def block_step(b, carry):
        w, q, scales = carry
        start = b * block
        w1 = jax.lax.dynamic_slice_in_dim(w, start, block, axis=1)  # [out, block]
        u1 = jax.lax.dynamic_slice(u, (start, start), (block, block))  # [block, block]
        scale = _scale(jnp.max(jnp.abs(w1), axis=1), bits) if grouped else channel_scale  # [out]

        def column_step(i, c):
            w1, q1, err1 = c
            col = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)  # [out]
            qc = _round(col, scale, bits)
            err = (col - qc * scale) / u1[i, i]  # [out]
            row = jnp.where(in_block > i, u1[i], 0.0)  # [block]
            w1 = w1 - err[:, None] * row[None, :]
            q1 = jax.lax.dynamic_update_index_in_dim(q1, qc, i, axis=1)
            err1 = jax.lax.dynamic_update_index_in_dim(err1, err, i, axis=1)
            return w1, q1, err1

        zeros = jnp.zeros((out, block), jnp.float32)
        _, q1, err1 = jax.lax.fori_loop(0, block, column_step, (w1, zeros, zeros))
        later = jnp.where(col_ids[None, :] >= start + block, jax.lax.dynamic_slice_in_dim(u, start, block, axis=0), 0.0)
        w = w - jnp.matmul(err1, later, precision=HIGHEST)  # lazy update of the columns after this block
        q = jax.lax.dynamic_update_slice_in_dim(q, q1, start, axis=1)
        scales = jax.lax.dynamic_update_index_in_dim(scales, scale, b, axis=1) if grouped else scales
        return w, q, scales

    n_scales = n_blocks if grouped else 1
    init = (w, jnp.zeros((out, cols), jnp.float32), jnp.broadcast_to(channel_scale[:, None], (out, n_scales)))
    _, q, scales = jax.lax.fori_loop(0, n_blocks, block_step, init)
    return q.astype(jnp.int8), scales


def gptq_quantize_kernel(kernel: jax.Array, hessian: jax.Array, spec: QuantSpec, *, damp: float = 0.01) -> QuantizedWeight:
    """GPTQ of a kernel `[in, out]` given the Hessian `[in, in]` of its inputs; same layout as RTN's result.

    `damp` adds `damp * mean(diag(H))` to the diagonal, as the reference implementation does.
    """
    in_features, out_features = kernel.shape
    grouped = spec.group_size != -1
    block = spec.group_size if grouped else DEFAULT_BLOCK
    spec.groups(in_features, "gptq")  # validates divisibility for grouped quantization
    w = jnp.asarray(kernel, jnp.float32).T  # [out, in]
    h = jnp.asarray(hessian, jnp.float32)
    pad = (-in_features) % block  # only per-channel pads: zero columns with unit Hessian change nothing
    if pad:
        w = jnp.pad(w, ((0, 0), (0, pad)))
        h = jnp.pad(h, ((0, pad), (0, pad))) + jnp.diag(jnp.r_[jnp.zeros(in_features), jnp.ones(pad)])
    q, scales = _gptq(w, h, bits=spec.bits, block=block, grouped=grouped, damp=damp)
    q = np.asarray(jax.device_get(q))[:, :in_features]
    return QuantizedWeight(qvalue=np.ascontiguousarray(q.T), scale=np.asarray(jax.device_get(scales)).T.copy())
