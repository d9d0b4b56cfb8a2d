"""Next-token cross-entropy computed in sequence chunks, so `[tokens, vocab]` fp32 logits never exist whole."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from swift_jax.parallel.sequence import sequence_shards

IGNORE_INDEX = -100


def shift_left(x: jax.Array, fill) -> jax.Array:
    """`x[:, 1:]` followed by one column of `fill`: `[batch, seq] -> [batch, seq]`."""
    return jnp.concatenate([x[:, 1:], jnp.full((x.shape[0], 1), fill, x.dtype)], axis=1)


def local_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
    """`[batch, seq, ...] -> [chunks, batch, shards, chunk, ...]`: each sequence shard's positions cut into chunks.

    `shards` is the number of devices sharing the sequence (1 without sequence parallelism), so a chunk
    never spans two devices and the loss's scan runs over chunks that every device holds locally. The
    tail of each shard is padded to a whole chunk (zeros; IGNORE_INDEX for integer labels).
    """
    batch, seq = x.shape[:2]
    shards = sequence_shards()
    local = seq // shards
    chunk = min(chunk_size, local)
    pad = (-local) % chunk
    x = x.reshape(batch, shards, local, *x.shape[2:])  # [batch, shards, local, ...]
    if pad:
        fill = IGNORE_INDEX if jnp.issubdtype(x.dtype, jnp.integer) else 0
        x = jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3), constant_values=fill)
    x = x.reshape(batch, shards, (local + pad) // chunk, chunk, *x.shape[3:])
    return jnp.moveaxis(x, 2, 0)  # [chunks, batch, shards, chunk, ...]


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
    loss); position t predicts labels[t + 1]. `project` maps `[..., embed]` to logits. Each chunk's
    logits are recomputed in the backward pass (`jax.checkpoint`), so peak memory holds one chunk.
    `weights` ([batch, seq], aligned with labels: ms-swift's loss_scale) multiply each target token's loss;
    the count stays the number of targets, so the mean is sum(weight x token loss) / targets, as in ms-swift.
    Sums, not means: callers divide by the target count of the whole (accumulated) batch. The chunks are
    cut from each sequence shard's own positions (`local_chunks`), so with `--sequence_parallel_size` every
    device scores its own part of the row.
    """
    # Shift the labels, not the hidden states: position t is scored against labels[t + 1] and the last
    # position against nothing, so `hidden` keeps its length and, under sequence parallelism, its sharding.
    targets = shift_left(labels, IGNORE_INDEX)  # [batch, seq]
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else shift_left(weights.astype(jnp.float32), 0.0)
    hidden, targets, weights = (local_chunks(x, chunk_size) for x in (hidden, targets, weights))

    @jax.checkpoint
    def chunk_stats(h, t, w):
        logits = project(h).astype(jnp.float32)  # [batch, shards, chunk, vocab]
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
