"""Text generation for every caller, through the engine (`swift_jax.engine`): `Generator` is its batch and
streaming front end for infer, eval and prediction.

`Generator.generate_ids` submits every prompt to one continuous-batching engine (`max_batch_size` slots, sized
for the call's longest prompt + `max_new_tokens`), so results do not depend on how prompts are grouped.
Prompts with images (vision-language models) still run the left-padded batch loop below (`_prefill` /
`_decode`), which fills a KV cache for a `[batch, prompt_len]` bucket and samples in a `lax.while_loop`.
"""

from __future__ import annotations

import dataclasses
from typing import Generator as PyGenerator
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.engine import Engine, GenerationConfig, GenerationOutput, default_eos
from swift_jax.engine.sampler import filter_logits, penalize_repetition
from swift_jax.models.decoder import KVCache

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _State:
    cache: KVCache
    tokens: jax.Array  # [batch, max_new_tokens] int32, generated so far (pad after a row is done)
    last: jax.Array  # [batch] int32, the token fed at the next step
    position: jax.Array  # [batch] int32, its position
    done: jax.Array  # [batch] bool
    seen: jax.Array  # [batch, vocab] bool, tokens in prompt or response (repetition penalty)
    step: jax.Array  # [] int32, columns of `tokens` filled


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Sampling:
    temperature: jax.Array  # [] float32
    top_k: jax.Array  # [] int32
    top_p: jax.Array  # [] float32
    repetition_penalty: jax.Array  # [] float32
    key: jax.Array  # PRNG key; step t samples with fold_in(key, t), so chunking never changes results
    eos: jax.Array  # [n_eos] int32
    pad: jax.Array  # [] int32, written after a row is done


def _next_token(logits, seen, s: _Sampling, step, do_sample: bool):
    """Pick the next token `[batch]` from float32 logits `[batch, vocab]`."""
    logits = penalize_repetition(logits, seen, s.repetition_penalty)
    if not do_sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / s.temperature, s.top_k, s.top_p)
    return jax.random.categorical(jax.random.fold_in(s.key, step), logits, axis=-1).astype(jnp.int32)


def _mark_seen(seen: jax.Array, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    """Set `seen[b, tokens[b, i]]` where `valid[b, i]`; tokens `[batch, n]`."""
    rows = jnp.arange(seen.shape[0])[:, None]
    return seen.at[rows, tokens].max(valid)


def _prefill(graphdef, params, ids, mask, sampling: _Sampling, vision=None, *, max_new_tokens: int, do_sample: bool) -> _State:
    """Run the left-padded prompts `ids`/`mask` `[batch, prompt_len]` through the model, sample token 0.
    `vision` (Qwen2-VL family): per-row patches and M-RoPE `positions` `[batch, prompt_len, 3]`
    (`models.vision.rows`); decoding then continues from each row's largest position + 1. InternVL: per-row
    tiles `pixel_values` `[batch, T, C, H, W]` (`models.vision.tiles`), plain positions."""
    model = nnx.merge(graphdef, params)
    batch, prompt_len = ids.shape
    cache = KVCache.create(model.config, batch, prompt_len + max_new_tokens)
    if vision is None:
        positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)  # [b, prompt_len]
        hidden, cache = model.hidden_states(ids, positions=positions, segment_ids=mask, cache=cache)
        next_position = mask.sum(-1).astype(jnp.int32)
    elif vision["pixel_values"].ndim == 5:  # InternVL: tiles [b, T, C, H, W]
        from swift_jax.models.vision.tiles import row_hidden_states

        positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)  # [b, prompt_len]
        hidden, cache = row_hidden_states(model, ids, positions, mask, vision["pixel_values"], cache)
        next_position = mask.sum(-1).astype(jnp.int32)
    else:
        from swift_jax.models.vision.rows import row_embeds

        embeds = row_embeds(model, ids, vision)
        hidden, cache = model.model(ids, jnp.moveaxis(vision["positions"], -1, 0), mask, cache, embeds=embeds)
        next_position = (vision["positions"].max(axis=(1, 2)) + 1).astype(jnp.int32)
    logits = model.logits(hidden[:, -1]).astype(jnp.float32)  # [b, vocab]; left padding: last slot is real
    seen = _mark_seen(jnp.zeros(logits.shape, bool), ids, mask > 0)
    empty = mask.sum(-1) == 0  # batch-bucket filler rows
    token = jnp.where(empty, sampling.pad, _next_token(logits, seen, sampling, 0, do_sample))
    tokens = jnp.full((batch, max_new_tokens), sampling.pad, jnp.int32).at[:, 0].set(token)
    return _State(
        cache=cache,
        tokens=tokens,
        last=token,
        position=next_position,
        done=empty | jnp.isin(token, sampling.eos),
        seen=_mark_seen(seen, token[:, None], ~empty[:, None]),
        step=jnp.ones((), jnp.int32),
    )


def _decode(graphdef, params, state: _State, until, sampling: _Sampling, *, do_sample: bool) -> _State:
    """Generate tokens one at a time (`lax.while_loop`) until step `until` or every row is done."""
    model = nnx.merge(graphdef, params)
    batch = state.last.shape[0]

    def cond(s: _State):
        return (s.step < until) & ~jnp.all(s.done)

    def body(s: _State) -> _State:
        hidden, cache = model.hidden_states(
            s.last[:, None], positions=s.position[:, None], segment_ids=jnp.ones((batch, 1), jnp.int32), cache=s.cache
        )
        logits = model.logits(hidden[:, 0]).astype(jnp.float32)  # [b, vocab]
        token = jnp.where(s.done, sampling.pad, _next_token(logits, s.seen, sampling, s.step, do_sample))
        tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step, axis=1)
        return _State(
            cache=cache,
            tokens=tokens,
            last=token,
            position=s.position + 1,
            done=s.done | jnp.isin(token, sampling.eos),
            seen=_mark_seen(s.seen, token[:, None], ~s.done[:, None]),
            step=s.step + 1,
        )

    return jax.lax.while_loop(cond, body, state)


_prefill_jit = jax.jit(_prefill, static_argnums=(0,), static_argnames=("max_new_tokens", "do_sample"))
_decode_jit = jax.jit(_decode, static_argnums=(0,), static_argnames=("do_sample",), donate_argnums=(2,))


def bucket(n: int, minimum: int = 16) -> int:
    """The padded size for `n`: the next power of two, at least `minimum` (bounds recompilation)."""
    size = minimum
    while size < n:
        size *= 2
    return size


class Generator:
    """Generates from one model through a continuous-batching `Engine` of `max_batch_size` slots.

    Works with merged models, unmerged LoRA adapters (they are part of the model's state) and models
    sharded over a mesh (the compiled functions follow the parameters' shardings). `engine` passes a
    ready engine (the server's); otherwise one is built, and rebuilt larger when a call needs longer slots.
    """

    def __init__(self, model: nnx.Module, tokenizer=None, *, max_batch_size: int = 16, engine: Engine | None = None):
        self.model = model
        self.graphdef, self.params = nnx.split(model)
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.default_eos = default_eos(tokenizer, model)
        self.vision_config = getattr(model.config, "vision", None)
        """Vision-language models: prompts may carry images (`data.vision.VisionPrompt`)."""
        self.engine = engine
        self._sized = engine is not None  # an engine given is used as it is (its --max_model_len clamps responses)

    def engine_for(self, longest: int, max_new_tokens: int) -> Engine:
        """The engine, with slots long enough for a `longest`-token prompt and `max_new_tokens` more."""
        need = longest + max_new_tokens
        if not self._sized and (self.engine is None or self.engine.max_model_len < need):
            self.engine = Engine(self.model, self.tokenizer, max_num_seqs=self.max_batch_size,
                                 max_model_len=bucket(need, 64))
        return self.engine

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig()
    ) -> list[GenerationOutput]:
        """Responses to token-id prompts, in order (all submitted at once: slots refill as responses end)."""
        if any(getattr(p, "layout", None) is not None for p in prompts):
            return self._generate_vision(prompts, config)
        self._check(prompts, config)
        engine = self.engine_for(max(map(len, prompts), default=1), config.max_new_tokens)
        return [outs[0] for outs in engine.generate(prompts, config)]

    def generate(self, prompts: Sequence[str], config: GenerationConfig = GenerationConfig()) -> list[GenerationOutput]:
        """Responses to text prompts (already formatted: apply the chat template first for chat models)."""
        tok = self._need_tokenizer("text prompts")
        return self.generate_ids([tok.encode(p, add_special_tokens=False) for p in prompts], config)

    def stream(
        self, prompt_ids: Sequence[int], config: GenerationConfig = GenerationConfig()
    ) -> PyGenerator[str, None, GenerationOutput]:
        """Yield the response to one prompt piece by piece as its tokens come in; return its full output
        (`out = yield from gen.stream(...)` in a generator, or `StopIteration.value`)."""
        if getattr(prompt_ids, "layout", None) is not None:
            run = self._run([prompt_ids], config, stream=True)
            while True:
                try:
                    _, delta = next(run)
                except StopIteration as finished:
                    return finished.value[0]
                yield delta
        self._check([prompt_ids], config)
        self._need_tokenizer("streaming")
        engine = self.engine_for(len(prompt_ids), config.max_new_tokens)
        pieces: list[str] = []
        request = engine.submit(prompt_ids, config, on_event=lambda d: pieces.append(d.text))
        while not request.finished or pieces:
            while pieces:
                piece = pieces.pop(0)
                if piece:
                    yield piece
            if not request.finished:
                engine.advance(request)
        return request.outputs[0]

    def _check(self, prompts, config: GenerationConfig) -> None:
        if config.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        if config.stop:
            self._need_tokenizer("stop strings and streaming")

    def _generate_vision(self, prompts, config: GenerationConfig) -> list[GenerationOutput]:
        """Vision prompts: the left-padded batch loop, `max_batch_size` prompts at a time."""
        outputs: list[GenerationOutput] = []
        for start in range(0, len(prompts), self.max_batch_size):
            run = self._run(prompts[start : start + self.max_batch_size], config, stream=False)
            while True:
                try:
                    next(run)
                except StopIteration as finished:
                    outputs.extend(finished.value)
                    break
        return outputs

    def _vision_rows(self, layouts: list[dict], batch: int, prompt_len: int) -> dict[str, np.ndarray]:
        """The prompts' vision arrays as `batch` rows: Qwen2-VL family patches and M-RoPE positions
        (`models.vision.rows.left_padded_rows`), InternVL tiles `[batch, T, C, H, W]` (T: a power of two)."""
        cfg = self.vision_config
        if hasattr(cfg, "merge_unit"):
            from swift_jax.models.vision.rows import left_padded_rows

            return left_padded_rows(layouts, batch, prompt_len, cfg.merge_unit)
        from swift_jax.models.vision.tiles import tile_bucket, tile_shape

        count = tile_bucket(max(len(layout["pixel_values"]) for layout in layouts))
        tiles = np.zeros((batch, count, *tile_shape(cfg)), np.float32)
        for row, layout in enumerate(layouts):
            tiles[row, : len(layout["pixel_values"])] = layout["pixel_values"]
        return {"pixel_values": tiles}

    def _need_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise ValueError(f"{what} need a tokenizer: pass Generator(model, tokenizer)")
        return self.tokenizer

    def _run(self, prompts, config: GenerationConfig, *, stream: bool):
        """Generate one batch; yields `(row, new_text)` while streaming, returns the outputs."""
        if config.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        watch = stream or bool(config.stop)  # the host reads the text between decode chunks
        if watch:
            self._need_tokenizer("stop strings and streaming")
        layouts = [getattr(p, "layout", None) for p in prompts]
        prompts = [getattr(p, "ids", p) for p in prompts]
        batch, prompt_len = bucket(len(prompts), 1), bucket(max(len(p) for p in prompts))
        ids = np.zeros((batch, prompt_len), np.int32)
        mask = np.zeros((batch, prompt_len), np.int32)
        for row, p in enumerate(prompts):  # left padding: every prompt ends at the last slot
            ids[row, prompt_len - len(p) :] = p
            mask[row, prompt_len - len(p) :] = 1
        eos = self.default_eos if config.eos_token_ids is None else tuple(config.eos_token_ids)
        sampling = _Sampling(
            temperature=jnp.float32(max(config.temperature, 1e-6)),
            top_k=jnp.int32(config.top_k),
            top_p=jnp.float32(config.top_p),
            repetition_penalty=jnp.float32(config.repetition_penalty),
            key=jax.random.key(config.seed),
            eos=jnp.asarray(eos or (-1,), jnp.int32),
            pad=jnp.int32(eos[0] if eos else 0),
        )
        n, sample = config.max_new_tokens, config.do_sample
        vision = None
        if any(layout is not None for layout in layouts):
            if self.vision_config is None or any(layout is None for layout in layouts):
                raise ValueError("prompts with images need a vision-language model, and every prompt of the batch "
                                 "its vision layout (data.vision.prompt_inputs)")
            vision = self._vision_rows(layouts, batch, prompt_len)
        state = _prefill_jit(self.graphdef, self.params, ids, mask, sampling, vision, max_new_tokens=n, do_sample=sample)
        chunk = 1 if stream else 16 if config.stop else n
        stopped = np.zeros(batch, bool)
        length = np.full(batch, n)  # tokens kept per row: a stop string ends a row where it is seen
        sent = [""] * len(prompts)
        while True:
            if watch:
                tokens = np.asarray(state.tokens)[:, : int(state.step)]
                for i in range(len(prompts)):
                    text, hit = self._text(tokens[i], eos, config.stop)
                    if hit and not stopped[i]:
                        stopped[i], length[i] = True, tokens.shape[1]
                    safe = text if hit else text.rstrip("\ufffd")  # wait for whole characters
                    if stream and len(safe) > len(sent[i]):
                        yield i, safe[len(sent[i]) :]
                        sent[i] = safe
                state = dataclasses.replace(state, done=state.done | jnp.asarray(stopped))
            step = int(state.step)
            if step >= n or bool(jnp.all(state.done)):
                break
            until = jnp.int32(min(step + chunk, n))
            state = _decode_jit(self.graphdef, self.params, state, until, sampling, do_sample=sample)
        tokens = np.asarray(state.tokens)
        outputs = []
        for i in range(len(prompts)):
            ids_i, ended = _until_eos(tokens[i, : length[i]], eos)
            text, hit = self._text(tokens[i, : length[i]], eos, config.stop) if self.tokenizer is not None else ("", False)
            outputs.append(GenerationOutput(text, ids_i, "stop" if ended or hit or stopped[i] else "length"))
            if stream and len(text) > len(sent[i]):  # flush what was held back
                yield i, text[len(sent[i]) :]
        return outputs

    def _text(self, row: np.ndarray, eos, stop: Sequence[str]) -> tuple[str, bool]:
        """The decoded response of one row (before eos, cut before a stop string) and whether one was hit."""
        text = self.tokenizer.decode(_until_eos(row, eos)[0], skip_special_tokens=True)
        hits = [text.index(s) for s in stop if s and s in text]
        return (text[: min(hits)], True) if hits else (text, False)


def _until_eos(row: np.ndarray, eos) -> tuple[list[int], bool]:
    """Token ids of one row before its first eos, and whether an eos ended it."""
    hits = np.nonzero(np.isin(row, np.asarray(eos or (-1,))))[0]
    return (row[: hits[0]].tolist(), True) if hits.size else (row.tolist(), False)


def generate(
    model: nnx.Module, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig(), tokenizer=None
) -> list[GenerationOutput]:
    """One-shot helper: responses to token-id prompts (build a `Generator` to reuse compilations)."""
    return Generator(model, tokenizer, max_batch_size=max(len(prompts), 1)).generate_ids(prompts, config)
