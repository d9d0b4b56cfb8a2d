"""Next-token choice for every engine slot at once, each row with its own settings (traced: never recompiles).

Order, as vLLM and transformers apply them: repetition penalty (prompt and response tokens), presence and
frequency penalties (response tokens), greedy argmax for rows at temperature 0; otherwise temperature, min-p,
top-k, top-p, then a draw with the row's key folded with its step, so a row's samples depend only on its
seed and its own history, never on what else is in the batch. Log-probs are the model's raw distribution
(vLLM's default `raw_logprobs`, what OpenAI reports).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from swift_jax.engine.params import TOP_LOGPROBS

_NEG = -1e30  # logit of a filtered-out token (finite: keeps softmax free of NaN)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RowSampling:
    """Per-row settings, every field `[rows]` (`key`: `[rows, 2]` uint32 raw threefry key data)."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    min_p: jax.Array
    repetition_penalty: jax.Array
    presence_penalty: jax.Array
    frequency_penalty: jax.Array
    key: jax.Array


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-k then top-p (nucleus) filtering of `[batch, vocab]` logits, as transformers' warpers do.

    `top_k` and `top_p` are scalars or per row `[batch]`; `top_k <= 0` and `top_p >= 1` switch a filter off.
    Filtered tokens get a very negative logit. One sort serves both filters.
    """
    batch, vocab = logits.shape
    top_k = jnp.broadcast_to(jnp.asarray(top_k), (batch,))
    top_p = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), (batch,))[:, None]
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [b, vocab], descending
    k = jnp.clip(jnp.where(top_k > 0, top_k, vocab), 1, vocab)  # [b]
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)  # [b, 1]
    logits = jnp.where(logits < kth, _NEG, logits)
    ordered = jnp.where(jnp.arange(vocab) < k[:, None], ordered, _NEG)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly larger tokens
    keep = (before < top_p) | (jnp.arange(vocab) == 0)  # the top token always survives
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where((logits < threshold) & (top_p < 1.0), _NEG, logits)


def penalize_repetition(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
    """transformers' repetition penalty: divide positive / multiply negative logits of seen tokens;
    `penalty` a scalar or `[batch, 1]`."""
    penalized = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalized, logits)


def filter_min_p(logits: jax.Array, min_p: jax.Array) -> jax.Array:
    """Drop tokens whose probability is below `min_p` `[batch]` times the top token's (0: off)."""
    probs = jax.nn.softmax(logits, axis=-1)
    floor = min_p[:, None] * probs.max(-1, keepdims=True)
    return jnp.where(probs < floor, _NEG, logits)


def select(logits: jax.Array, s: RowSampling, prompt_seen: jax.Array, counts: jax.Array, step: jax.Array, *, top_n: bool):
    """The next token of every row from float32 logits `[rows, vocab]`.

    prompt_seen `[rows, vocab]` bool, counts `[rows, vocab]` int32 (response tokens so far), step `[rows]` (tokens
    the row generated before). Returns `(token [rows], logprob [rows], top_ids [rows, K], top_logprobs [rows, K])`,
    K = TOP_LOGPROBS when `top_n`, else 0.
    """
    raw = jax.nn.log_softmax(logits, axis=-1)
    x = penalize_repetition(logits, prompt_seen | (counts > 0), s.repetition_penalty[:, None])
    x = x - s.frequency_penalty[:, None] * counts - s.presence_penalty[:, None] * (counts > 0)
    greedy = jnp.argmax(x, axis=-1).astype(jnp.int32)
    hot = s.temperature > 0
    x = x / jnp.where(hot, s.temperature, 1.0)[:, None]
    x = filter_logits(filter_min_p(x, s.min_p), s.top_k, s.top_p)
    keys = jax.vmap(lambda k, t: jax.random.fold_in(jax.random.wrap_key_data(k), t))(s.key, step)
    drawn = jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)
    token = jnp.where(hot, drawn, greedy)
    logprob = jnp.take_along_axis(raw, token[:, None], axis=-1)[:, 0]
    if not top_n:
        empty = jnp.zeros((logits.shape[0], 0))
        return token, logprob, empty.astype(jnp.int32), empty
    top_logprobs, top_ids = jax.lax.top_k(raw, TOP_LOGPROBS)
    return token, logprob, top_ids.astype(jnp.int32), top_logprobs


def row_key(seed: int, sample: int):
    """Raw key data `[2]` uint32 of sample `sample` of a request seeded `seed`."""
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), sample))
