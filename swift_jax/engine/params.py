"""What one request asks of the engine (`GenerationConfig`) and what it gets back (`GenerationOutput`).

Names follow transformers / ms-swift where they exist (`max_new_tokens`, `repetition_penalty`) and OpenAI / vLLM
for the rest (`min_p`, `presence_penalty`, `frequency_penalty`, `n`, `logprobs`, `top_logprobs`, `stop_token_ids`).
"""

from __future__ import annotations

import dataclasses

TOP_LOGPROBS = 20  # the most alternatives a request may ask for per token (OpenAI's limit)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings of one request; every field is per request, so one batch mixes them freely."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 (or -1) = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (0 = off)
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in the prompt or response
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence in the response
    seed: int = 0  # sample i of a request draws from fold_in(key(seed), i): reproducible whatever else runs
    stop: tuple[str, ...] = ()  # stop strings: the response ends before the first one
    stop_token_ids: tuple[int, ...] = ()  # more end tokens, on top of eos_token_ids
    eos_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's eos (and chat end) tokens
    n: int = 1  # samples of the prompt (its prefill is shared)
    logprobs: bool = False  # return each token's log-probability (of the model's raw distribution)
    top_logprobs: int = 0  # and this many most likely alternatives per token (<= TOP_LOGPROBS)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field (the server answers it with HTTP 400)."""
        problems = [
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
            ("n", self.n >= 1, ">= 1"),
            ("top_logprobs", 0 <= self.top_logprobs <= TOP_LOGPROBS, f"in [0, {TOP_LOGPROBS}]"),
        ]
        for name, ok, expected in problems:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is out of range: expected {expected}")


@dataclasses.dataclass
class GenerationOutput:
    """One response: its text, its token ids (without the eos) and why it ended ("stop" or "length").
    With `logprobs`: each token's log-probability, and its `top_logprobs` alternatives as (token id, logprob)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
