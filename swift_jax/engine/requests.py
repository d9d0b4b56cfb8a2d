"""A request inside the engine: its prompt, settings, samples and what is streamed back to its caller.

The engine's thread appends tokens; `Request.events` (or the `on_event` callback) carries `Delta`s to the
caller's thread, and `wait` / `outputs` give the finished responses. Text is decoded on the host: a piece is
only sent once it is whole (no half UTF-8 character) and cannot turn out to be the start of a stop string.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
from typing import Callable, Sequence

from swift_jax.engine.params import GenerationConfig, GenerationOutput

_ids = itertools.count()


@dataclasses.dataclass
class Delta:
    """New output of sample `index` of a request: text and tokens since the last delta; `finish_reason` on its
    last one ("stop", "length", "cancelled", or "error" with `error` set)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclasses.dataclass
class Sample:
    """One of a request's `n` responses while it is generated."""

    index: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    sent_text: int = 0  # characters delivered as deltas
    sent_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None


class Request:
    """A submitted prompt; `cancel()` frees its slots at the engine's next step."""

    def __init__(self, prompt: Sequence[int], config: GenerationConfig, adapter: str | None,
                 on_event: Callable[[Delta], None] | None, budget: int, on_finish: Callable[[], None] | None = None):
        self.id = f"req-{next(_ids)}"
        self.prompt = list(prompt)
        self.config = config
        self.adapter = adapter
        self.budget = budget  # tokens per sample: max_new_tokens, clamped to the slot's room
        self.samples = [Sample(i) for i in range(config.n)]
        self.events: queue.Queue[Delta] = queue.Queue()
        self._on_event = on_event or self.events.put
        self.streaming = on_event is not None  # deltas as tokens come, rather than the text at the end
        self._on_finish = on_finish  # called (on the engine's thread) once every sample is finished
        self._done = threading.Event()
        self.cancelled = False
        self.error: str | None = None

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating (a client went away); the engine frees the slots and sends "cancelled" deltas."""
        self.cancelled = True

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def outputs(self) -> list[GenerationOutput]:
        """The finished responses, one per sample."""
        if self.error:
            raise RuntimeError(f"request {self.id} failed: {self.error}")
        want = self.config.logprobs or self.config.top_logprobs > 0
        return [
            GenerationOutput(s.text, list(s.tokens), s.finish_reason or "length",
                             list(s.logprobs) if want else None, list(s.top_logprobs) if self.config.top_logprobs else None)
            for s in self.samples
        ]

    def emit(self, sample: Sample, text: str | None, final: bool) -> None:
        """Send what sample `sample` produced since its last delta (`text`: its decoded text so far, or None
        without a tokenizer)."""
        safe = "" if text is None else text if final else _holdback(text, self.config.stop)
        new_tokens = sample.tokens[sample.sent_tokens :]
        if len(safe) <= sample.sent_text and not new_tokens and not final:
            return
        piece = safe[sample.sent_text :] if len(safe) > sample.sent_text else ""
        lo = sample.sent_tokens
        delta = Delta(
            sample.index, piece, new_tokens,
            sample.logprobs[lo:] if self.config.logprobs or self.config.top_logprobs else None,
            sample.top_logprobs[lo:] if self.config.top_logprobs else None,
            sample.finish_reason if final else None, self.error if final else None,
        )
        sample.sent_text, sample.sent_tokens = max(sample.sent_text, len(safe)), len(sample.tokens)
        self._on_event(delta)

    def finish_if_done(self) -> bool:
        """Mark the request finished once every sample is; True then."""
        if all(s.finish_reason for s in self.samples) and not self._done.is_set():
            self._done.set()
            if self._on_finish is not None:
                self._on_finish()
            return True
        return False


def _holdback(text: str, stop: Sequence[str]) -> str:
    """`text` without a trailing half character and without a tail that may still grow into a stop string."""
    text = text.rstrip("\ufffd")
    keep = len(text)
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = min(keep, len(text) - n)
                break
    return text[:keep]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the first stop string in it, and whether there was one."""
    hits = [text.index(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)
