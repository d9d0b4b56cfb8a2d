"""Per-token log-probs of sampled completions under a model (the policy in the loss, the reference before it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def sequence_inputs(prompt_ids: jax.Array, prompt_mask: jax.Array, completion_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(input_ids, segment_ids, positions)` `[rows, P + C]` of left-padded prompts followed by completions,
    positioned as during the rollout (the completion continues right after the prompt's last token)."""
    ids = jnp.concatenate([prompt_ids, completion_ids], axis=1)
    segments = jnp.concatenate([prompt_mask, jnp.ones_like(completion_ids)], axis=1).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0).astype(jnp.int32)
    return ids, segments, positions


def completion_logps(
    model: nnx.Module,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    completion_ids: jax.Array,
    temperature: float,
    *,
    chunk_size: int = 256,
) -> jax.Array:
    """`[rows, C]` log-probs of `completion_ids` under `softmax(logits / temperature)` (ms-swift's policy
    log-probs). The vocabulary projection runs over chunks of `chunk_size` completion positions and is
    recomputed in the backward pass, so `[rows, C, vocab]` float32 logits never exist whole."""
    ids, segments, positions = sequence_inputs(prompt_ids, prompt_mask, completion_ids)
    hidden = model.hidden_states(ids, positions=positions, segment_ids=segments)
    width, length = prompt_ids.shape[1], completion_ids.shape[1]
    hidden = hidden[:, width - 1 : width + length - 1]  # [rows, C, embed]: position t predicts completion token t
    chunk = min(chunk_size, length)
    pad = (-length) % chunk
    targets = completion_ids
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    rows, n = hidden.shape[0], (length + pad) // chunk
    hidden = hidden.reshape(rows, n, chunk, -1).swapaxes(0, 1)  # [chunks, rows, chunk, embed]
    targets = targets.reshape(rows, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_logps(h, t):
        logits = model.logits(h).astype(jnp.float32) / temperature  # [rows, chunk, vocab]
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    out = jax.lax.map(lambda xs: chunk_logps(*xs), (hidden, targets))  # [chunks, rows, chunk]
    return out.swapaxes(0, 1).reshape(rows, n * chunk)[:, :length]
