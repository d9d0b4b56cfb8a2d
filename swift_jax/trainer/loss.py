"""Next-token cross-entropy computed in sequence chunks, so `[tokens, vocab]` fp32 logits never exist whole."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def chunked_cross_entropy(
    hidden: jax.Array,
    labels: jax.Array,
    project: Callable[[jax.Array], jax.Array],
    *,
    chunk_size: int = 512,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed next-token loss over target tokens: `(loss_sum, num_targets, num_correct)`.

    hidden: [batch, seq, embed] final hidden states; labels: [batch, seq] HF-style (unshifted, -100 = no
    loss); position t predicts labels[t + 1]. `project` maps `[batch, chunk, embed]` to logits. Each chunk's
    logits are recomputed in the backward pass (`jax.checkpoint`), so peak memory holds one chunk.
    `weights` ([batch, seq], aligned with labels: ms-swift's loss_scale) multiply each target token's loss;
    the count stays the number of targets, so the mean is sum(weight x token loss) / targets, as in ms-swift.
    Sums, not means: callers divide by the target count of the whole (accumulated) batch.
    """
    targets = labels[:, 1:]  # [batch, seq - 1]
    hidden = hidden[:, :-1]
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights[:, 1:].astype(jnp.float32)
    batch, length, embed = hidden.shape
    chunk = min(chunk_size, length)
    pad = (-length) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    n_chunks = (length + pad) // chunk
    hidden = hidden.reshape(batch, n_chunks, chunk, embed).swapaxes(0, 1)  # [chunks, batch, chunk, embed]
    targets = targets.reshape(batch, n_chunks, chunk).swapaxes(0, 1)  # [chunks, batch, chunk]
    weights = weights.reshape(batch, n_chunks, chunk).swapaxes(0, 1)  # [chunks, batch, chunk]

    @jax.checkpoint
    def chunk_stats(h, t, w):
        logits = project(h).astype(jnp.float32)  # [batch, chunk, vocab]
        mask = t != IGNORE_INDEX
        safe = jnp.where(mask, t, 0)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
        loss = jnp.where(mask, w * (logz - picked), 0.0).sum()
        correct = jnp.where(mask, jnp.argmax(logits, axis=-1) == safe, False).sum()
        return loss, mask.sum(), correct

    def body(carry, xs):
        loss, n, c = chunk_stats(*xs)
        return (carry[0] + loss, carry[1] + n, carry[2] + c), None

    zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    (loss, count, correct), _ = jax.lax.scan(body, zero, (hidden, targets, weights))
    return loss, count, correct
