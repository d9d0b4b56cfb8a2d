"""The engine's device state and its compiled steps: a fixed set of slots, each a row of one KV cache.

Every slot row holds one sequence at its own length (the cache's per-row `index`), so requests of any length
share one decode step and join whenever a slot frees. Four compiled functions work on the slots:

- `admit`: reset rows for new sequences (their prompt tokens for the repetition penalty, their last prompt
  token as the next input).
- `prefill`: write a chunk of prompt tokens of a few rows into their cache rows (gathered, run, scattered back).
  A prompt is prefilled up to its last token; the decode step reads that one, so the first response token
  comes from the same sampler as every other.
- `copy_rows`: duplicate a prefilled prompt into other rows (the `n` samples of one prompt, and requests with the
  same prompt, share its prefill).
- `decode`: up to `K_MAX` steps of every live row (a `lax.while_loop` with a traced step limit: one program),
  sampling with each row's own settings (`sampler.select`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.engine.params import TOP_LOGPROBS
from swift_jax.engine.sampler import RowSampling, select
from swift_jax.models.decoder import KVCache

K_MAX = 8  # decode steps per call at most (the host reads tokens, streams text and admits requests between calls)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Slots:
    cache: KVCache  # index [slots]: each row's length
    last: jax.Array  # [slots] int32, the token fed at the next step
    position: jax.Array  # [slots] int32, its position
    prompt_seen: jax.Array  # [slots, vocab] bool, tokens of the prompt (repetition penalty)
    counts: jax.Array  # [slots, vocab] int32, occurrences in the response (penalties)
    generated: jax.Array  # [slots] int32, tokens generated so far (the sampling step)


def _batch_axis(leaf: jax.Array) -> int:
    """Cache arrays are `[..., batch, max_len, heads, dim]` (scanned layers add a leading stack axis)."""
    return leaf.ndim - 4


def _take(cache: KVCache, rows: jax.Array) -> KVCache:
    pick = lambda a: jnp.take(a, rows, axis=_batch_axis(a), mode="clip")
    return KVCache(
        tuple(map(pick, cache.keys)), tuple(map(pick, cache.values)),
        jnp.take(cache.segment_ids, rows, axis=0, mode="clip"), jnp.take(cache.index, rows, mode="clip"),
    )


def _put(cache: KVCache, rows: jax.Array, part: KVCache) -> KVCache:
    """`cache` with `part`'s rows written at `rows` (rows out of range, the padding of a bucket, are dropped)."""

    def put(a, b):
        axis = _batch_axis(a)
        index = (slice(None),) * axis + (rows,)
        return a.at[index].set(b, mode="drop")

    return KVCache(
        tuple(map(put, cache.keys, part.keys)), tuple(map(put, cache.values, part.values)),
        cache.segment_ids.at[rows].set(part.segment_ids, mode="drop"), cache.index.at[rows].set(part.index, mode="drop"),
    )


def _init(config, slots: int, max_len: int, vocab: int) -> Slots:
    cache = KVCache.create(config, slots, max_len)
    cache = dataclasses.replace(cache, index=jnp.zeros((slots,), jnp.int32))
    zeros = jnp.zeros((slots,), jnp.int32)
    return Slots(cache, zeros, zeros, jnp.zeros((slots, vocab), bool), jnp.zeros((slots, vocab), jnp.int32), zeros)


def init_slots(config, slots: int, max_len: int, vocab: int) -> Slots:
    """Empty slots: `slots` rows of a `max_len`-token KV cache."""
    return jax.jit(_init, static_argnums=(0, 1, 2, 3))(config, slots, max_len, vocab)


def slot_bytes(config, max_len: int, vocab: int) -> int:
    """Device bytes of one slot (its KV cache row and penalty tables), for sizing the slots by a memory budget."""
    shapes = jax.eval_shape(lambda: _init(config, 1, max_len, vocab))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes))


def _admit(state: Slots, rows, last, position, prompt, prompt_mask) -> Slots:
    """Reset `rows` `[p]` for new sequences: prompt ids `[p, L]` (mask `[p, L]`), next input `last` at `position`."""
    seen = jnp.zeros((rows.shape[0], state.prompt_seen.shape[1]), bool)
    seen = seen.at[jnp.arange(rows.shape[0])[:, None], prompt].max(prompt_mask > 0)
    put = lambda a, v: a.at[rows].set(v, mode="drop")
    cache = dataclasses.replace(state.cache, index=put(state.cache.index, jnp.zeros_like(rows)))
    return Slots(
        cache, put(state.last, last), put(state.position, position), put(state.prompt_seen, seen),
        put(state.counts, jnp.zeros((rows.shape[0], state.counts.shape[1]), jnp.int32)), put(state.generated, jnp.zeros_like(rows)),
    )


def _prefill(graphdef, params, state: Slots, rows, ids, valid) -> Slots:
    """Write prompt chunks `ids` `[p, C]` (the first `valid` `[p]` of each real) into cache rows `rows` `[p]`
    after what those rows hold already."""
    model = nnx.merge(graphdef, params)
    model.eval()  # no dropout while generating (the merged copy only)
    part = _take(state.cache, rows)
    start = part.index  # [p]
    chunk = ids.shape[1]
    segment = (jnp.arange(chunk)[None] < valid[:, None]).astype(jnp.int32)  # [p, C]
    positions = start[:, None] + jnp.arange(chunk, dtype=jnp.int32)[None]
    _, part = model.hidden_states(ids, positions=positions, segment_ids=segment, cache=part)
    part = dataclasses.replace(part, index=start + valid)
    return dataclasses.replace(state, cache=_put(state.cache, rows, part))


def _copy_rows(state: Slots, source, target, length) -> Slots:
    """The caches of rows `target` `[p]` become copies of rows `source` `[p]`'s first `length` `[p]` tokens (a
    shared prompt: what the source generated after it is past the copy's index, so never read)."""
    part = dataclasses.replace(_take(state.cache, source), index=length)
    return dataclasses.replace(state, cache=_put(state.cache, target, part))


def _head(state: Slots, rows: int) -> Slots:
    """The first `rows` slots (every array sliced on its batch axis)."""
    cut = lambda a: jax.lax.slice_in_dim(a, 0, rows, axis=_batch_axis(a))
    cache = KVCache(tuple(map(cut, state.cache.keys)), tuple(map(cut, state.cache.values)),
                    state.cache.segment_ids[:rows], state.cache.index[:rows])
    return Slots(cache, *(a[:rows] for a in (state.last, state.position, state.prompt_seen, state.counts, state.generated)))


def _put_head(state: Slots, head: Slots) -> Slots:
    """`state` with its first slots replaced by `head` (in place when `state` is donated)."""
    put = lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b, 0, axis=_batch_axis(a))
    cache = KVCache(tuple(map(put, state.cache.keys, head.cache.keys)), tuple(map(put, state.cache.values, head.cache.values)),
                    state.cache.segment_ids.at[: head.last.shape[0]].set(head.cache.segment_ids),
                    state.cache.index.at[: head.last.shape[0]].set(head.cache.index))
    rest = [a.at[: b.shape[0]].set(b) for a, b in zip(
        (state.last, state.position, state.prompt_seen, state.counts, state.generated),
        (head.last, head.position, head.prompt_seen, head.counts, head.generated))]
    return Slots(cache, *rest)


def _decode(graphdef, params, state: Slots, sampling: RowSampling, live, eos, budget, limit, *, top_n: bool):
    """Up to `limit` (<= K_MAX) decode steps of the `live` rows among the first `rows = live.shape[0]` slots (a
    power of two covering every live slot: one request does not pay for all the slots); a row stops at one of
    its `eos` `[rows, E]` ids or after `budget` `[rows]` generated tokens. Returns the new state and per step
    the tokens `[rows, K_MAX]` (-1 where a row did not run), their log-probs and top alternatives."""
    whole = state
    state = _head(state, live.shape[0])
    model = nnx.merge(graphdef, params)
    model.eval()
    slots = live.shape[0]
    k = TOP_LOGPROBS if top_n else 0
    out = (
        jnp.full((slots, K_MAX), -1, jnp.int32), jnp.zeros((slots, K_MAX), jnp.float32),
        jnp.zeros((slots, K_MAX, k), jnp.int32), jnp.zeros((slots, K_MAX, k), jnp.float32),
    )

    def cond(carry):
        step, _, alive, _ = carry
        return (step < limit) & jnp.any(alive)

    def body(carry):
        step, s, alive, (tokens, logps, top_ids, top_lps) = carry
        hidden, cache = model.hidden_states(
            s.last[:, None], positions=s.position[:, None], segment_ids=alive[:, None].astype(jnp.int32), cache=s.cache
        )
        logits = model.logits(hidden[:, 0]).astype(jnp.float32)  # [slots, vocab]
        token, logp, ids, lps = select(logits, sampling, s.prompt_seen, s.counts, s.generated, top_n=top_n)
        token = jnp.where(alive, token, -1)
        grow = alive.astype(jnp.int32)
        cache = dataclasses.replace(cache, index=s.cache.index + grow)
        counts = s.counts.at[jnp.arange(slots), jnp.maximum(token, 0)].add(grow)
        s = Slots(cache, jnp.where(alive, token, s.last), s.position + grow, s.prompt_seen, counts, s.generated + grow)
        done = (token[:, None] == eos).any(-1) | (s.generated >= budget)
        put = lambda a, v: a.at[:, step].set(v)
        outputs = (put(tokens, token), put(logps, logp), put(top_ids, ids), put(top_lps, lps))
        return step + 1, s, alive & ~done, outputs

    _, state, _, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, live, out))
    return _put_head(whole, state), out


admit = jax.jit(_admit, donate_argnums=(0,))
prefill = jax.jit(_prefill, static_argnums=(0,), donate_argnums=(2,))
copy_rows = jax.jit(_copy_rows, donate_argnums=(0,))
decode = jax.jit(_decode, static_argnums=(0,), static_argnames=("top_n",), donate_argnums=(2,))
