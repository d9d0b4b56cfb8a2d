"""GRPO rollouts in JAX: sample completions with a KV cache in one compiled program, with their log-probs.

One jitted function does the prefill and a `lax.while_loop` of decode steps for a `[rows, prompt_len]`
block of left-padded prompts (each prompt repeated `num_generations` times) and returns, per row, the
completion tokens, the completion mask (through the first eos), the sampling policy's per-token
log-probs (the "old" log-probs of the loss) and whether the completion was cut at
`max_completion_length`. Shapes are fixed per run (`prompt_length` rounds the longest probed prompt up
to 64), and sampling settings are traced values, so the rollout compiles once.

The model is split at call time (`nnx.split`), so LoRA adapters are read live, without a copy; a
sharded model samples on its mesh (the compiled program follows the parameters' shardings).

Log-probs are those of `softmax(logits / temperature)` before top-k / top-p / repetition penalty,
which is what ms-swift's trainer computes for the policy (`_get_per_token_logps_and_entropies` divides
the logits by the temperature), so the importance ratio of an unchanged policy is 1.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.generation import _mark_seen, filter_logits, penalize_repetition
from swift_jax.models.decoder import KVCache

PROMPT_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Rollout sampling settings (ms-swift names); traced, so changing them never recompiles."""

    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) = off
    repetition_penalty: float = 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
    """Completions of one rollout, every array with a leading row axis `[rows, ...]`."""

    completion_ids: jax.Array  # [rows, max_completion_length] int32, pad after the end
    completion_mask: jax.Array  # [rows, max_completion_length] int32, 1 through the first eos (included)
    old_logps: jax.Array  # [rows, max_completion_length] float32, 0 outside the mask
    truncated: jax.Array  # [rows] bool: no eos within max_completion_length

    @property
    def lengths(self) -> jax.Array:
        return self.completion_mask.sum(-1)


def prompt_length(longest: int, max_length: int | None, multiple: int = PROMPT_MULTIPLE) -> int:
    """The run's prompt width: the longest probed prompt (at most `max_length`) rounded up to `multiple`."""
    n = min(longest, max_length) if max_length else longest
    return max(multiple, -(-n // multiple) * multiple)


def pad_prompts(prompts: Sequence[Sequence[int]], width: int, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, mask)` `[rows, width]` int32, left-padded; prompts over `max_length` (or `width`) lose their
    left end (ms-swift's GRPO truncation_strategy `left`)."""
    keep = min(width, max_length or width)
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {row} is empty: every prompt needs at least one token")
        p = list(p)[-keep:]
        ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
    return ids, mask


def _pick(logits, seen, keys, step, s: SamplingParams):
    """Sample each row's next token `[rows]` with its own key; return it and its log-prob under
    softmax(logits / temperature). logits: `[rows, vocab]` float32."""
    logp_all = jax.nn.log_softmax(logits / s.temperature, axis=-1)
    shaped = filter_logits(penalize_repetition(logits, seen, s.repetition_penalty) / s.temperature, s.top_k, s.top_p)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    token = jax.vmap(jax.random.categorical)(step_keys, shaped).astype(jnp.int32)
    return token, jnp.take_along_axis(logp_all, token[:, None], axis=-1)[:, 0]


def _rollout(graphdef, state, ids, mask, keys, sampling: SamplingParams, eos, pad, *, max_new_tokens: int) -> Rollout:
    """Prefill the left-padded prompts `[rows, P]`, then decode until every row ended or the length limit."""
    model = nnx.merge(graphdef, state)
    model.eval()  # no dropout while sampling (the merged copy only; the caller's model keeps its mode)
    rows, width = ids.shape
    cache = KVCache.create(model.config, rows, width + max_new_tokens)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    hidden, cache = model.hidden_states(ids, positions=positions, segment_ids=mask, cache=cache)
    logits = model.logits(hidden[:, -1]).astype(jnp.float32)  # [rows, vocab]
    seen = _mark_seen(jnp.zeros(logits.shape, bool), ids, mask > 0)
    token, logp = _pick(logits, seen, keys, 0, sampling)
    tokens = jnp.full((rows, max_new_tokens), pad, jnp.int32).at[:, 0].set(token)
    logps = jnp.zeros((rows, max_new_tokens), jnp.float32).at[:, 0].set(logp)
    valid = jnp.zeros((rows, max_new_tokens), jnp.int32).at[:, 0].set(1)
    done = jnp.isin(token, eos)
    carry = (cache, tokens, logps, valid, token, mask.sum(-1).astype(jnp.int32), done, _mark_seen(seen, token[:, None], jnp.ones((rows, 1), bool)), jnp.int32(1))

    def cond(c):
        return (c[-1] < max_new_tokens) & ~jnp.all(c[6])

    def body(c):
        cache, tokens, logps, valid, last, position, done, seen, step = c
        hidden, cache = model.hidden_states(last[:, None], positions=position[:, None], segment_ids=jnp.ones((rows, 1), jnp.int32), cache=cache)
        logits = model.logits(hidden[:, 0]).astype(jnp.float32)
        token, logp = _pick(logits, seen, keys, step, sampling)
        token = jnp.where(done, pad, token)
        put = lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v[:, None], step, axis=1)
        tokens = put(tokens, token)
        logps = put(logps, jnp.where(done, 0.0, logp))
        valid = put(valid, (~done).astype(jnp.int32))
        seen = _mark_seen(seen, token[:, None], ~done[:, None])
        return cache, tokens, logps, valid, token, position + 1, done | jnp.isin(token, eos), seen, step + 1

    _, tokens, logps, valid, _, _, done, _, _ = jax.lax.while_loop(cond, body, carry)
    return Rollout(tokens, valid, logps, ~done)


_rollout_jit = jax.jit(_rollout, static_argnums=(0,), static_argnames=("max_new_tokens",))


def rollout_inputs(model: nnx.Module, ids, mask, key, sampling: SamplingParams, eos_ids: Sequence[int]) -> tuple:
    """The arguments of the compiled rollout (also what `lower` needs for the memory report)."""
    if sampling.temperature <= 0:
        raise ValueError(f"rollout temperature must be > 0 (GRPO samples), got {sampling.temperature}")
    graphdef, state = nnx.split(model)
    keys = jax.random.split(key, ids.shape[0])  # one key per completion
    traced = SamplingParams(
        temperature=jnp.float32(sampling.temperature),
        top_p=jnp.float32(sampling.top_p),
        top_k=jnp.int32(sampling.top_k),
        repetition_penalty=jnp.float32(sampling.repetition_penalty),
    )
    width = max(4, -(-len(eos_ids) // 4) * 4)  # padded with -1 (never sampled): up to 4 end tokens, one program
    eos = jnp.asarray(list(eos_ids) + [-1] * (width - len(eos_ids)), jnp.int32)
    pad = jnp.int32(eos_ids[0] if eos_ids else 0)
    return graphdef, state, jnp.asarray(ids), jnp.asarray(mask), keys, traced, eos, pad


def rollout(
    model: nnx.Module,
    ids: np.ndarray,
    mask: np.ndarray,
    key: jax.Array,
    *,
    max_completion_length: int,
    sampling: SamplingParams = SamplingParams(),
    eos_ids: Sequence[int] = (),
) -> Rollout:
    """Sample one completion per row of the left-padded prompts `ids`/`mask` `[rows, P]` (repeat each
    prompt `num_generations` times for GRPO); row `i` samples with `split(key, rows)[i]`."""
    return _rollout_jit(*rollout_inputs(model, ids, mask, key, sampling, eos_ids), max_new_tokens=max_completion_length)


def compile_rollout(
    model: nnx.Module, rows: int, width: int, *, max_completion_length: int, sampling: SamplingParams = SamplingParams(), eos_ids: Sequence[int] = ()
) -> jax.stages.Compiled:
    """The compiled rollout for `rows` completions of prompts `width` wide (for its memory analysis)."""
    ids = np.zeros((rows, width), np.int32)
    args = rollout_inputs(model, ids, ids, jax.random.key(0), sampling, eos_ids)
    return _rollout_jit.lower(*args, max_new_tokens=max_completion_length).compile()


jax.tree_util.register_dataclass(SamplingParams, data_fields=[f.name for f in dataclasses.fields(SamplingParams)], meta_fields=[])
