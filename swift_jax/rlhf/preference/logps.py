"""Per-sequence answer log-probabilities of rows that hold preference pairs as segments.

Row layout (swift_jax.rlhf.preference.data): pair k of a row is segments `2k + 1` (chosen) and `2k + 2` (rejected).
`token_logps` computes each target token's log-prob in sequence chunks (the `[tokens, vocab]` float32 logits
never exist whole); `pair_stats` sums them per segment and splits the sums into chosen and rejected `[pairs]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from swift_jax.rlhf.preference.losses import PairLogps
from swift_jax.trainer.loss import IGNORE_INDEX, scan_sequence_chunks, unchunk


def token_logps(hidden: jax.Array, labels: jax.Array, project: Callable[[jax.Array], jax.Array], *,
                chunk_size: int = 1024) -> tuple[jax.Array, jax.Array]:
    """`(logps, mean_logits)` `[batch, seq - 1]`: log p(labels[t + 1]) at each position t (0 where the label is
    ignored) and the mean over the vocabulary of that position's logits (TRL's `logits/*` metrics).

    hidden: [batch, seq, embed]; labels: [batch, seq] unshifted, -100 = not trained; computed in sequence chunks
    (`trainer.loss.scan_sequence_chunks`)."""

    def chunk_logps(h, t):
        logits = project(h).astype(jnp.float32)  # [batch, shards, chunk, vocab]
        mask = t != IGNORE_INDEX
        picked = jnp.take_along_axis(logits, jnp.where(mask, t, 0)[..., None], axis=-1)[..., 0]
        return jnp.where(mask, picked - jax.nn.logsumexp(logits, axis=-1), 0.0), logits.mean(-1)

    logps, means = scan_sequence_chunks(chunk_logps, hidden, labels, chunk_size=chunk_size)
    seq = labels.shape[1]
    return unchunk(logps, seq)[:, :-1], unchunk(means, seq)[:, :-1]  # the last position predicts nothing


class PairStats(NamedTuple):
    """Per-pair sums of one forward, `[pairs]` each (pairs = rows x pairs_per_row, padding pairs have 0 tokens)."""

    logps: PairLogps
    chosen_logits: jax.Array  # sum over answer tokens of the vocabulary-mean logit
    rejected_logits: jax.Array
    valid: jax.Array  # bool: a real pair
    chosen_unweighted: jax.Array  # the chosen sums without LD-DPO's weighting
    chosen_sequence_logits: jax.Array  # sum over every position of the chosen sequence (prompt and answer) of
    rejected_sequence_logits: jax.Array  # the vocabulary-mean logit (TRL's CPO/ORPO `logits/*`)
    chosen_length: jax.Array  # tokens of the chosen sequence, prompt included
    rejected_length: jax.Array
    chosen_last_logits: jax.Array  # the vocabulary-mean logit at the sequence's last position (TRL's ORPO
    rejected_last_logits: jax.Array  # leaves it out of `logits/*`)

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


def segment_pair_sums(values: jax.Array, segment_ids: jax.Array, pairs_per_row: int) -> tuple[jax.Array, jax.Array]:
    """Sums of `values` `[batch, seq]` over each pair's chosen and rejected segments -> `[pairs]` each (a value
    on one token of a segment is read back exactly: the other terms are zeros)."""
    onehot = _segment_onehot(segment_ids, jnp.ones(segment_ids.shape, bool), 2 * pairs_per_row)
    return _split_pairs(jnp.einsum("bs,bsk->bk", values.astype(jnp.float32), onehot))


def pair_stats(logps: jax.Array, mean_logits: jax.Array, labels: jax.Array, segment_ids: jax.Array, *,
               pairs_per_row: int, ld_alpha: float | None = None, position_logits: jax.Array | None = None) -> PairStats:
    """Sum token log-probs `[batch, seq - 1]` (from `token_logps`) per answer and pair them up.

    With `ld_alpha` (LD-DPO), tokens past the shorter answer's length count `ld_alpha` times. `position_logits`
    `[batch, seq]`: the vocabulary-mean logit at every position (for the whole-sequence logit sums)."""
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
    positions = jnp.zeros(segment_ids.shape, jnp.float32) if position_logits is None else position_logits
    sc, sr = segment_pair_sums(positions, segment_ids, pairs_per_row)
    length_c, length_r = segment_pair_sums(jnp.ones(segment_ids.shape), segment_ids, pairs_per_row)
    last = segment_ids != jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))  # a segment's last position
    last_c, last_r = segment_pair_sums(jnp.where(last, positions, 0.0), segment_ids, pairs_per_row)
    return PairStats(PairLogps(chosen, rejected, nc, nr), lc, lr, nc > 0, _split_pairs(plain)[0], sc, sr, length_c, length_r,
                     last_c, last_r)


def model_pair_stats(model, batch: dict, *, pairs_per_row: int, chunk_size: int = 1024,
                     ld_alpha: float | None = None) -> PairStats:
    """One forward of `model` over a pair batch -> PairStats."""
    hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logps, means = token_logps(hidden, batch["labels"], model.logits, chunk_size=chunk_size)
    last = model.logits(hidden[:, -1:]).astype(jnp.float32).mean(-1)  # [batch, 1]: the one position not shifted in
    return pair_stats(logps, means, batch["labels"], batch["segment_ids"], pairs_per_row=pairs_per_row, ld_alpha=ld_alpha,
                      position_logits=jnp.concatenate([means, last], axis=1))
