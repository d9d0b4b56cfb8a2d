"""The generation engine: continuous batching over a fixed set of KV-cache slots, for every caller.

infer, deploy, eval, prediction after training and GRPO rollouts submit prompts here. Each step of the engine
admits waiting requests into free slots, writes one chunk of pending prompts into the cache (`prefill`), then
runs a few decode steps of every live slot (`decode`); a finished sample frees its slot at once, so a request
arriving mid-decode starts within a step, not after the batch. The `n` samples of a prompt take `n` slots and
share one prefill (`copy_rows`). Requests are served by the adapter their `adapter` names (LoRA weights
unmerged, swapped when the slots empty: one set of adapters runs at a time).

Drive it from one thread (`generate`, `run`) or let it run in its own (`start`; the server does) and
`submit` from any thread.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from swift_jax.engine import slots as S
from swift_jax.engine.params import GenerationConfig, GenerationOutput
from swift_jax.engine.requests import Delta, Request, Sample, cut_at_stop
from swift_jax.engine.sampler import RowSampling, row_key

EOS_WIDTH = 8  # end tokens per row in one program (more round up to the next multiple)


class QueueFull(RuntimeError):
    """More requests wait than `max_queue_size` allows (the server answers 503)."""


def default_eos(tokenizer, model) -> tuple[int, ...]:
    """End tokens: the tokenizer's and config's eos, and ChatML's `<|im_end|>` / Llama-3's `<|eot_id|>`."""
    ids = set()
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in ("<|im_end|>", "<|eot_id|>") if t in vocab)
    eos = model.config.hf_config.get("eos_token_id")
    ids.update([eos] if isinstance(eos, int) else eos or [])
    return tuple(sorted(ids))


def _bucket(n: int, minimum: int = 1) -> int:
    size = minimum
    while size < n:
        size *= 2
    return size


def _floor_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


class Engine:
    """Continuous-batching generation from one model (and its named LoRA adapters).

    `max_num_seqs` slots of `max_model_len` tokens each (prompt + response); `prefill_chunk` prompt tokens per
    row and step at most, so a long prompt does not stall the running ones; `max_queue_size` requests may wait
    for a slot (None: no bound). `adapters` maps a name to a model carrying that adapter (the base model answers to None).
    `prefix_caching`: a prompt equal to one still held in a slot is copied from it rather than prefilled.
    """

    def __init__(self, model: nnx.Module, tokenizer=None, *, max_num_seqs: int = 16, max_model_len: int = 2048,
                 prefill_chunk: int = 256, max_queue_size: int | None = None, adapters: dict[str, nnx.Module] | None = None,
                 prefix_caching: bool = True):
        if max_num_seqs < 1 or max_model_len < 2:
            raise ValueError(f"the engine needs max_num_seqs >= 1 and max_model_len >= 2, got {max_num_seqs}, {max_model_len}")
        self.tokenizer = tokenizer
        self.config = model.config
        self.default_eos = default_eos(tokenizer, model)
        self.variants = {None: nnx.split(model), **{name: nnx.split(m) for name, m in (adapters or {}).items()}}
        self.variant: str | None = None
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.prefill_chunk, self.max_queue_size = _floor_pow2(prefill_chunk), max_queue_size
        self.vocab = model.config.vocab_size
        self.state = S.init_slots(model.config, max_num_seqs, max_model_len, self.vocab)
        self.owner: list[tuple[Request, Sample] | None] = [None] * max_num_seqs
        self.todo = np.zeros(max_num_seqs, np.int64)  # prompt tokens still to prefill per slot
        self.followers: dict[int, list[int]] = {}  # a prefilling slot -> the slots that copy it when done
        self.prefix_caching = prefix_caching
        self.resident: dict[tuple[int, ...], int] = {}  # a prompt -> the slot that prefilled it (still held)
        self.live = np.zeros(max_num_seqs, bool)  # slots decoding
        self._reset_rows()
        self.waiting: collections.deque[Request] = collections.deque()
        self.lock = threading.Condition()
        self._drive = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.stats = collections.Counter()  # prefill_calls, prefill_tokens, decode_calls, decode_steps

    # ---- submitting ------------------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], config: GenerationConfig = GenerationConfig(), *, adapter: str | None = None,
               on_event: Callable[[Delta], None] | None = None, on_finish: Callable[[], None] | None = None) -> Request:
        """Queue one prompt (token ids); returns its `Request` at once (`on_event(Delta)` while it streams,
        `on_finish()` when done, both on the engine's thread). Raises ValueError for a request that can never
        run (the message names the field), QueueFull when `max_queue_size` requests already wait."""
        config.check()
        if len(prompt) == 0:
            raise ValueError("empty prompt: every prompt needs at least one token")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; this engine holds {self.max_model_len} per sequence "
                             f"(--max_model_len), prompt and response together")
        if config.n > self.max_num_seqs:
            raise ValueError(f"n={config.n} samples need as many slots; this engine has {self.max_num_seqs} (--max_num_seqs)")
        if adapter not in self.variants:
            names = sorted(n for n in self.variants if n)
            raise ValueError(f"unknown adapter {adapter!r}; served adapters: {names or 'none'}")
        if (config.stop or on_event) and self.tokenizer is None:
            raise ValueError("stop strings and streaming need a tokenizer: build the engine with one")
        bad = [t for t in prompt if not 0 <= int(t) < self.vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab})")
        budget = min(config.max_new_tokens, self.max_model_len - len(prompt) + 1)
        request = Request(prompt, config, adapter, on_event, budget, on_finish)
        with self.lock:
            queued = len(self.waiting) - self.free_slots  # those that will not find a slot at the next step
            if self.max_queue_size is not None and queued >= self.max_queue_size:
                raise QueueFull(f"{queued} requests are already waiting for a slot (--max_queue_size {self.max_queue_size}); retry later")
            self.waiting.append(request)
            self.lock.notify_all()
        return request

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig(),
                 adapter: str | None = None) -> list[list[GenerationOutput]]:
        """Responses to every prompt (a list of `config.n` samples each), in order."""
        requests = [self.submit(p, config, adapter=adapter) for p in prompts]
        self.run(requests)
        return [r.outputs for r in requests]

    def run(self, requests: Sequence[Request]) -> None:
        """Return once `requests` are finished: step the engine here, or wait for its thread."""
        while not all(r.finished for r in requests):
            self.advance(next(r for r in requests if not r.finished))

    def advance(self, request: Request) -> None:
        """Make progress towards `request`: one step here, or a short wait when the engine runs in its thread."""
        if self._thread is not None:
            request.wait(0.05)
            return
        with self._drive:
            self.step()

    def warmup(self) -> None:
        """Compile the decode step for every slot bucket (1, 2, 4, ... slots) and the prefill of short prompts
        for as many rows, before serving: otherwise the first time a bucket is reached its requests wait for
        the compilation (seconds). Every call here runs no sequence (no live row; padding rows are dropped)."""
        graphdef, params = self.variants[self.variant]
        rows = 1
        while True:
            rows = min(rows, self.max_num_seqs)
            sampling = RowSampling(**{k: v[:rows] for k, v in self.rows.items() if k not in ("eos", "budget")})
            self.state, _ = S.decode(graphdef, params, self.state, sampling, np.zeros(rows, bool), self.rows["eos"][:rows],
                                     self.rows["budget"][:rows], np.int32(0), top_n=False)
            outside = np.full(rows, self.max_num_seqs, np.int32)
            self.state = S.prefill(graphdef, params, self.state, outside, np.zeros((rows, 16), np.int32), np.zeros(rows, np.int32))
            if rows == self.max_num_seqs:
                break
            rows *= 2
        jax.block_until_ready(self.state)

    # ---- the engine's own thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Step in a background thread until `stop`: submitted requests run without anyone driving them."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="swift_jax-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the background thread after its current step (in-flight requests stay as they are)."""
        with self.lock:
            self._stop = True
            self.lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self._stop and not self.waiting and not self.busy:
                    self.lock.wait()
                if self._stop:
                    return
            with self._drive:
                try:
                    self.step()
                except Exception as err:  # the requests in flight got the error; serve the next ones
                    print(f"[ERROR] engine step failed: {type(err).__name__}: {err}", flush=True)

    @property
    def busy(self) -> bool:
        return any(o is not None for o in self.owner)

    @property
    def free_slots(self) -> int:
        return sum(o is None for o in self.owner)

    # ---- one step ------------------------------------------------------------------------------------

    def step(self) -> None:
        """Cancel, admit, prefill one chunk, decode a few tokens; a failure fails the requests in flight."""
        try:
            self._cancel()
            self._admit()
            self._prefill()
            self._decode()
        except Exception as err:  # an XLA or host error: answer every request in flight, start over clean
            self._fail_all(f"{type(err).__name__}: {err}")
            self.state = S.init_slots(self.config, self.max_num_seqs, self.max_model_len, self.vocab)
            raise

    def _cancel(self) -> None:
        with self.lock:
            gone = [r for r in self.waiting if r.cancelled]
            for r in gone:
                self.waiting.remove(r)
        for r in gone:
            self._finish_request(r, "cancelled")
        for slot, own in enumerate(self.owner):
            if own is not None and own[0].cancelled:
                self._finish_request(own[0], "cancelled")

    def _admit(self) -> None:
        rows, admitted, ready, copies = [], [], [], []
        with self.lock:
            while self.waiting:
                request = self.waiting[0]
                if request.adapter != self.variant:
                    if self.busy or rows:
                        break  # the other adapter's turn comes when the slots empty
                    self.variant = request.adapter
                free = [s for s, o in enumerate(self.owner) if o is None]
                if len(free) < request.config.n:
                    break
                self.waiting.popleft()
                taken = free[: request.config.n]
                for sample, slot in zip(request.samples, taken):
                    self.owner[slot] = (request, sample)
                    self._set_row(slot, request, sample.index)
                leader = self.resident.get(tuple(request.prompt)) if self.prefix_caching else None
                if leader is not None and self.todo[leader] > 0:  # that prompt is being prefilled: copy it when done
                    self.followers.setdefault(leader, []).extend(taken)
                elif leader is not None:
                    copies.extend((leader, slot) for slot in taken)
                else:
                    self.todo[taken[0]] = len(request.prompt) - 1
                    self.followers[taken[0]] = taken[1:]
                    self.resident[tuple(request.prompt)] = taken[0]
                    if len(request.prompt) == 1:
                        ready.append(taken[0])
                rows.extend(taken)
                admitted.extend([request.prompt] * len(taken))
        if not rows:
            return
        width, count = _bucket(max(map(len, admitted)), 16), _bucket(len(rows))
        prompt = np.zeros((count, width), np.int32)
        mask = np.zeros((count, width), np.int32)
        for i, p in enumerate(admitted):
            prompt[i, : len(p)], mask[i, : len(p)] = p, 1
        index = np.full(count, self.max_num_seqs, np.int32)  # padding rows fall outside: dropped
        index[: len(rows)] = rows
        last = np.array([p[-1] for p in admitted] + [0] * (count - len(rows)), np.int32)
        position = np.array([len(p) - 1 for p in admitted] + [0] * (count - len(rows)), np.int32)
        self.state = S.admit(self.state, index, last, position, prompt, mask)
        if copies:
            self._copy([source for source, _ in copies], [target for _, target in copies])
        for slot in ready:  # one-token prompts: nothing to prefill
            self._go_live(slot)

    def _prefill(self) -> None:
        rows = [s for s in range(self.max_num_seqs) if self.todo[s] > 0]
        if not rows:
            return
        graphdef, params = self.variants[self.variant]
        starts = {s: len(self.owner[s][0].prompt) - 1 - int(self.todo[s]) for s in rows}
        room = self.max_model_len - max(starts.values())
        chunk = min(_bucket(int(self.todo[rows].max()), 16), self.prefill_chunk, _floor_pow2(room))
        count = _bucket(len(rows))
        ids = np.zeros((count, chunk), np.int32)
        valid = np.zeros(count, np.int32)
        index = np.full(count, self.max_num_seqs, np.int32)
        for i, s in enumerate(rows):
            prompt, start = self.owner[s][0].prompt, starts[s]
            piece = prompt[start : min(start + chunk, len(prompt) - 1)]
            ids[i, : len(piece)], valid[i], index[i] = piece, len(piece), s
            self.todo[s] -= len(piece)
        self.state = S.prefill(graphdef, params, self.state, index, ids, valid)
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] += int(valid.sum())
        for s in rows:
            if self.todo[s] == 0:
                self._go_live(s)

    def _go_live(self, slot: int) -> None:
        """A prompt is in the cache: its slot (and the slots that share its prompt, copied from it) decode."""
        followers = self.followers.pop(slot, [])
        if followers:
            self._copy([slot] * len(followers), followers)
        self.live[slot] = True

    def _copy(self, sources: list[int], targets: list[int]) -> None:
        """Copy the prompt of each source slot into its target slot, which then decodes."""
        count = _bucket(len(targets))
        source = np.full(count, sources[0], np.int32)
        target = np.full(count, self.max_num_seqs, np.int32)
        length = np.zeros(count, np.int32)
        source[: len(sources)], target[: len(targets)] = sources, targets
        length[: len(targets)] = [len(self.owner[t][0].prompt) - 1 for t in targets]
        self.state = S.copy_rows(self.state, source, target, length)
        self.stats["prefill_copies"] += len(targets)
        self.live[targets] = True

    def _decode(self) -> None:
        if not self.live.any():
            return
        graphdef, params = self.variants[self.variant]
        with self.lock:
            hurry = bool(self.waiting) and self.free_slots > 0
        limit = 1 if hurry or self.todo.any() else S.K_MAX
        top_n = any(o is not None and o[0].config.top_logprobs > 0 for o in self.owner)
        rows = min(_bucket(int(np.nonzero(self.live)[0].max()) + 1), self.max_num_seqs)  # the slots this call runs
        sampling = RowSampling(**{k: v[:rows] for k, v in self.rows.items() if k not in ("eos", "budget")})
        self.state, out = S.decode(graphdef, params, self.state, sampling, self.live[:rows].copy(), self.rows["eos"][:rows],
                                   self.rows["budget"][:rows], np.int32(limit), top_n=top_n)
        tokens, logps, top_ids, top_lps = jax.device_get(out)
        self.stats["decode_calls"] += 1
        self.stats["decode_steps"] += int((tokens >= 0).any(0).sum())
        for slot in np.nonzero(self.live)[0]:
            request, sample = self.owner[slot]
            row = tokens[slot]
            steps = int((row >= 0).sum())
            eos = set(self.rows["eos"][slot].tolist())
            for j in range(steps):
                if int(row[j]) in eos:
                    sample.finish_reason = "stop"
                    break
                sample.tokens.append(int(row[j]))
                sample.logprobs.append(float(logps[slot, j]))
                if request.config.top_logprobs:
                    k = request.config.top_logprobs
                    sample.top_logprobs.append(list(zip(top_ids[slot, j, :k].tolist(), top_lps[slot, j, :k].tolist())))
            if not sample.finish_reason and len(sample.tokens) >= request.budget:
                sample.finish_reason = "length"
            self._advance_text(request, sample)
            if sample.finish_reason:
                self._release(slot)
                request.emit(sample, sample.text if self.tokenizer is not None else None, final=True)
                request.finish_if_done()

    def _advance_text(self, request: Request, sample: Sample) -> None:
        """Decode the sample's text when someone reads it now (streaming, stop strings, the end)."""
        if self.tokenizer is None:
            return
        streaming = request.streaming
        if not (streaming or request.config.stop or sample.finish_reason):
            return
        text = self.tokenizer.decode(sample.tokens, skip_special_tokens=True)
        text, hit = cut_at_stop(text, request.config.stop)
        if hit:
            sample.finish_reason = "stop"
        sample.text = text
        if streaming and not sample.finish_reason:
            request.emit(sample, text, final=False)

    # ---- bookkeeping ---------------------------------------------------------------------------------

    def _reset_rows(self) -> None:
        """Per-slot sampling settings, handed to every decode call (host arrays: a new request costs no compile)."""
        n = self.max_num_seqs
        self.rows = dict(
            temperature=np.zeros(n, np.float32), top_k=np.zeros(n, np.int32), top_p=np.ones(n, np.float32),
            min_p=np.zeros(n, np.float32), repetition_penalty=np.ones(n, np.float32),
            presence_penalty=np.zeros(n, np.float32), frequency_penalty=np.zeros(n, np.float32),
            key=np.zeros((n, 2), np.uint32), eos=np.full((n, EOS_WIDTH), -1, np.int32), budget=np.zeros(n, np.int32),
        )

    def _set_row(self, slot: int, request: Request, sample: int) -> None:
        c = request.config
        r = self.rows
        r["temperature"][slot], r["top_k"][slot], r["top_p"][slot], r["min_p"][slot] = c.temperature, max(c.top_k, 0), c.top_p, c.min_p
        r["repetition_penalty"][slot] = c.repetition_penalty
        r["presence_penalty"][slot], r["frequency_penalty"][slot] = c.presence_penalty, c.frequency_penalty
        r["key"][slot] = np.asarray(row_key(c.seed, sample))
        eos = sorted(set(self.default_eos if c.eos_token_ids is None else c.eos_token_ids) | set(c.stop_token_ids))
        if len(eos) > r["eos"].shape[1]:
            width = -(-len(eos) // EOS_WIDTH) * EOS_WIDTH
            r["eos"] = np.pad(r["eos"], ((0, 0), (0, width - r["eos"].shape[1])), constant_values=-1)
        r["eos"][slot] = -1
        r["eos"][slot, : len(eos)] = eos
        r["budget"][slot] = request.budget

    def _release(self, slot: int) -> None:
        """Free `slot`; slots waiting to copy its prompt (it was still prefilling) prefill it themselves."""
        request = self.owner[slot][0]
        key = tuple(request.prompt)
        if self.resident.get(key) == slot:
            del self.resident[key]
        waiting = [s for s in self.followers.pop(slot, []) if self.owner[s] is not None]
        if waiting and self.todo[slot] > 0:
            first, rest = waiting[0], waiting[1:]
            self.todo[first] = len(request.prompt) - 1
            self.followers[first] = rest
            self.resident[key] = first
        self.owner[slot] = None
        self.live[slot] = False
        self.todo[slot] = 0

    def _finish_request(self, request: Request, reason: str, error: str | None = None) -> None:
        """End every unfinished sample of `request` with `reason` and free its slots."""
        request.error = request.error or error
        for slot, own in enumerate(self.owner):
            if own is not None and own[0] is request:
                self._release(slot)
        for sample in request.samples:
            if not sample.finish_reason:
                sample.finish_reason = reason
                request.emit(sample, sample.text if self.tokenizer is not None else None, final=True)
        request.finish_if_done()

    def _fail_all(self, error: str) -> None:
        for request in {id(o[0]): o[0] for o in self.owner if o is not None}.values():
            self._finish_request(request, "error", error)
