"""Next-token cross-entropy computed in sequence chunks, so `[tokens, vocab]` fp32 logits never exist whole."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def scan_sequence_chunks(fn: Callable, hidden: jax.Array, labels: jax.Array, *per_token: jax.Array, chunk_size: int):
    """Run `fn(hidden_chunk [batch, chunk, embed], targets_chunk [batch, chunk], *per_token_chunks)` over
    sequence chunks of the next-token problem (position t predicts labels[t + 1]) under `lax.scan`, each chunk
    recomputed in the backward pass (`jax.checkpoint`), so a `[batch, chunk, vocab]` logits block is the most
    that exists at once. Returns fn's outputs stacked `[chunks, ...]` and the unpadded length `seq - 1`.

    hidden: [batch, seq, embed]; labels: [batch, seq] unshifted (-100 = no target); `per_token`: [batch, seq]
    arrays aligned with labels (shifted the same way, padded with 0)."""
    targets = labels[:, 1:]  # [batch, seq - 1]
    hidden = hidden[:, :-1]
    extras = [x[:, 1:] for x in per_token]
    batch, length, embed = hidden.shape
    chunk = min(chunk_size, length)
    pad = (-length) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
        extras = [jnp.pad(x, ((0, 0), (0, pad))) for x in extras]
    n_chunks = (length + pad) // chunk
    to_chunks = lambda x: x.reshape(batch, n_chunks, chunk, *x.shape[2:]).swapaxes(0, 1)  # [chunks, batch, chunk, ...]
    checkpointed = jax.checkpoint(fn)
    _, out = jax.lax.scan(lambda c, xs: (c, checkpointed(*xs)), None, tuple(map(to_chunks, (hidden, targets, *extras))))
    return out, length


def unchunk(x: jax.Array, length: int) -> jax.Array:
    """`[chunks, batch, chunk]` outputs of `scan_sequence_chunks` -> `[batch, length]`."""
    chunks, batch, chunk = x.shape
    return x.swapaxes(0, 1).reshape(batch, chunks * chunk)[:, :length]


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
    logits are recomputed in the backward pass (`scan_sequence_chunks`), so peak memory holds one chunk.
    `weights` ([batch, seq], aligned with labels: ms-swift's loss_scale) multiply each target token's loss;
    the count stays the number of targets, so the mean is sum(weight x token loss) / targets, as in ms-swift.
    Sums, not means: callers divide by the target count of the whole (accumulated) batch.
    """
    weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)

    def chunk_stats(h, t, w):
        logits = project(h).astype(jnp.float32)  # [batch, chunk, vocab]
        mask = t != IGNORE_INDEX
        safe = jnp.where(mask, t, 0)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
        loss = jnp.where(mask, w * (logz - picked), 0.0).sum()
        correct = jnp.where(mask, jnp.argmax(logits, axis=-1) == safe, False).sum()
        return loss, mask.sum(), correct

    (loss, count, correct), _ = scan_sequence_chunks(chunk_stats, hidden, labels, weights, chunk_size=chunk_size)
    return loss.sum(), count.sum(), correct.sum()
