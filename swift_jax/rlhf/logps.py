"""Per-sequence answer log-probabilities of rows that hold preference pairs as segments.

Row layout (swift_jax.rlhf.data): pair k of a row is segments `2k + 1` (chosen) and `2k + 2` (rejected).
`token_logps` computes each target token's log-prob in sequence chunks (the `[tokens, vocab]` float32 logits
never exist whole); `pair_stats` sums them per segment and splits the sums into chosen and rejected `[pairs]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from swift_jax.rlhf.losses import PairLogps
from swift_jax.trainer.loss import IGNORE_INDEX


def token_logps(hidden: jax.Array, labels: jax.Array, project: Callable[[jax.Array], jax.Array], *,
                chunk_size: int = 1024) -> tuple[jax.Array, jax.Array]:
    """`(logps, mean_logits)` `[batch, seq - 1]`: log p(labels[t + 1]) at each position t (0 where the label is
    ignored) and the mean over the vocabulary of that position's logits (TRL's `logits/*` metrics).

    hidden: [batch, seq, embed]; labels: [batch, seq] unshifted, -100 = not trained. Each chunk's logits are
    recomputed in the backward pass (`jax.checkpoint`)."""
    targets = labels[:, 1:]
    hidden = hidden[:, :-1]
    batch, length, embed = hidden.shape
    chunk = min(chunk_size, length)
    pad = (-length) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    n_chunks = (length + pad) // chunk
    hidden = hidden.reshape(batch, n_chunks, chunk, embed).swapaxes(0, 1)  # [chunks, batch, chunk, embed]
    targets = targets.reshape(batch, n_chunks, chunk).swapaxes(0, 1)  # [chunks, batch, chunk]

    @jax.checkpoint
    def chunk_logps(h, t):
        logits = project(h).astype(jnp.float32)  # [batch, chunk, vocab]
        mask = t != IGNORE_INDEX
        picked = jnp.take_along_axis(logits, jnp.where(mask, t, 0)[..., None], axis=-1)[..., 0]
        logp = jnp.where(mask, picked - jax.nn.logsumexp(logits, axis=-1), 0.0)
        return logp, jnp.where(mask, logits.mean(-1), 0.0)

    _, (logps, means) = jax.lax.scan(lambda c, xs: (c, chunk_logps(*xs)), None, (hidden, targets))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length]
    return unchunk(logps), unchunk(means)


class PairStats(NamedTuple):
    """Per-pair sums of one forward, `[pairs]` each (pairs = rows x pairs_per_row, padding pairs have 0 tokens)."""

    logps: PairLogps
    chosen_logits: jax.Array  # sum over answer tokens of the vocabulary-mean logit
    rejected_logits: jax.Array
    valid: jax.Array  # bool: a real pair
    chosen_unweighted: jax.Array  # the chosen sums without LD-DPO's weighting

    @property
    def nll(self) -> jax.Array:
        """The chosen answers' mean token NLL over the batch (TRL's `nll_loss`)."""
        return -self.chosen_unweighted.sum() / jnp.maximum(self.logps.chosen_tokens.sum(), 1)


def _segment_onehot(segment_ids: jax.Array, mask: jax.Array, num_segments: int) -> jax.Array:
    """[batch, seq, num_segments] float: token t belongs to segment k + 1 and is trained."""
    ids = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
    return ((segment_ids[..., None] == ids) & mask[..., None]).astype(jnp.float32)


def _split_pairs(per_segment: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[batch, 2 * pairs_per_row] -> chosen, rejected `[batch * pairs_per_row]`."""
    batch, segments = per_segment.shape
    pairs = per_segment.reshape(batch, segments // 2, 2)
    return pairs[..., 0].reshape(-1), pairs[..., 1].reshape(-1)


def pair_stats(logps: jax.Array, mean_logits: jax.Array, labels: jax.Array, segment_ids: jax.Array, *,
               pairs_per_row: int, ld_alpha: float | None = None) -> PairStats:
    """Sum token log-probs `[batch, seq - 1]` (from `token_logps`) per answer and pair them up.

    With `ld_alpha` (LD-DPO), tokens past the shorter answer's length count `ld_alpha` times."""
    mask = labels[:, 1:] != IGNORE_INDEX
    onehot = _segment_onehot(segment_ids[:, 1:], mask, 2 * pairs_per_row)  # [batch, seq - 1, segments]
    tokens = onehot.sum(1)  # [batch, segments]
    sums = plain = jnp.einsum("bs,bsk->bk", logps, onehot)
    if ld_alpha is not None:
        pairs = tokens.reshape(tokens.shape[0], -1, 2)
        public = jnp.repeat(pairs.min(-1), 2, axis=-1)  # [batch, segments]: the shorter answer's length
        seen = jnp.cumsum(onehot, axis=1) - onehot  # answer tokens of the same segment before this one
        front = ((seen < public[:, None, :]) * onehot)  # [batch, seq - 1, segments]
        front_sums = jnp.einsum("bs,bsk->bk", logps, front)
        sums = front_sums + ld_alpha * (sums - front_sums)
    logit_sums = jnp.einsum("bs,bsk->bk", mean_logits, onehot)
    (chosen, rejected), (nc, nr) = _split_pairs(sums), _split_pairs(tokens)
    lc, lr = _split_pairs(logit_sums)
    return PairStats(PairLogps(chosen, rejected, nc, nr), lc, lr, nc > 0, _split_pairs(plain)[0])


def model_pair_stats(model, batch: dict, *, pairs_per_row: int, chunk_size: int = 1024,
                     ld_alpha: float | None = None) -> PairStats:
    """One forward of `model` over a pair batch -> PairStats."""
    hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logps, means = token_logps(hidden, batch["labels"], model.logits, chunk_size=chunk_size)
    return pair_stats(logps, means, batch["labels"], batch["segment_ids"], pairs_per_row=pairs_per_row, ld_alpha=ld_alpha)
