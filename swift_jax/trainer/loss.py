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


def scan_sequence_chunks(fn: Callable, hidden: jax.Array, labels: jax.Array, *per_token: jax.Array, chunk_size: int):
    """Run `fn(hidden_chunk [batch, shards, chunk, embed], targets_chunk [batch, shards, chunk], *per_token_chunks)`
    over sequence chunks of the next-token problem (position t predicts labels[t + 1]; the last position
    predicts nothing) under `lax.scan`, each chunk recomputed in the backward pass (`jax.checkpoint`), so a
    `[batch, chunk, vocab]` logits block is the most that exists at once. Returns fn's outputs stacked
    `[chunks, ...]` (`unchunk` maps per-token outputs back to `[batch, seq]`).

    The labels are shifted, not the hidden states, so `hidden` keeps its length and, under sequence
    parallelism, its sharding: chunks are cut from each sequence shard's own positions (`local_chunks`) and
    every device scores its own part of the row. hidden: [batch, seq, embed]; labels: [batch, seq] unshifted
    (-100 = no target); `per_token`: [batch, seq] arrays aligned with labels (shifted the same way, 0-filled).
    """
    targets = shift_left(labels, IGNORE_INDEX)  # [batch, seq]
    extras = [shift_left(x, 0) for x in per_token]
    chunks = tuple(local_chunks(x, chunk_size) for x in (hidden, targets, *extras))
    checkpointed = jax.checkpoint(fn)
    _, out = jax.lax.scan(lambda carry, xs: (carry, checkpointed(*xs)), None, chunks)
    return out


def unchunk(x: jax.Array, seq: int) -> jax.Array:
    """`[chunks, batch, shards, chunk]` per-token outputs of `scan_sequence_chunks` -> `[batch, seq]`."""
    chunks, batch, shards, chunk = x.shape
    x = jnp.moveaxis(x, 0, 2).reshape(batch, shards, chunks * chunk)[:, :, : seq // shards]
    return x.reshape(batch, seq)


def chunked_cross_entropy(
    hidden: jax.Array,
    labels: jax.Array,
    project: Callable[[jax.Array], jax.Array],
    *,
    chunk_size: int = 512,
    weights: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
    """Summed next-token loss over target tokens: `(loss_sum, num_targets, num_correct)`, and with `segment_ids`
    ([batch, seq]) also `(num_correct_sequences, num_sequences)` (`sequence_accuracy`).

    hidden: [batch, seq, embed] final hidden states; labels: [batch, seq] HF-style (unshifted, -100 = no
    loss); position t predicts labels[t + 1]. `project` maps `[..., embed]` to logits. Each chunk's
    logits are recomputed in the backward pass (`scan_sequence_chunks`), so peak memory holds one chunk.
    `weights` ([batch, seq], aligned with labels: ms-swift's loss_scale) multiply each target token's loss;
    the count stays the number of targets, so the mean is sum(weight x token loss) / targets, as in ms-swift.
    Sums, not means: callers divide by the target count of the whole (accumulated) batch. The chunks are
    cut from each sequence shard's own positions (`local_chunks`), so with `--sequence_parallel_size` every
    device scores its own part of the row.
    """
    weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)

    def chunk_stats(h, t, w):
        logits = project(h).astype(jnp.float32)  # [batch, shards, chunk, vocab]
        mask = t != IGNORE_INDEX
        safe = jnp.where(mask, t, 0)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
        loss = jnp.where(mask, w * (logz - picked), 0.0).sum()
        right = jnp.argmax(logits, axis=-1) == safe
        return loss, mask.sum(), jnp.where(mask, right, False).sum(), mask & ~right

    loss, count, correct, wrong = scan_sequence_chunks(chunk_stats, hidden, labels, weights, chunk_size=chunk_size)
    totals = (loss.sum(), count.sum(), correct.sum())
    if segment_ids is None:
        return totals
    return totals + sequence_accuracy(unchunk(wrong, labels.shape[1]), labels, segment_ids)


def sequence_accuracy(wrong: jax.Array, labels: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ms-swift's `--acc_strategy seq`: `(sequences whose every target token is predicted, sequences with a
    target)`, a packed row's segments counted apart. wrong: [batch, seq] (position t mispredicts labels[t + 1]);
    labels, segment_ids: [batch, seq] unshifted."""
    has_target = shift_left(labels, IGNORE_INDEX) != IGNORE_INDEX  # [batch, seq], aligned with `wrong`
    segment = shift_left(segment_ids, 0)  # the segment of each target token
    rows = jnp.arange(labels.shape[0])[:, None]
    per_segment = jnp.zeros((labels.shape[0], labels.shape[1] + 1), jnp.int32)  # [batch, segment id]
    targets = per_segment.at[rows, segment].max(has_target.astype(jnp.int32))[:, 1:]
    misses = per_segment.at[rows, segment].max(wrong.astype(jnp.int32))[:, 1:]
    return (targets * (1 - misses)).sum(), targets.sum()
