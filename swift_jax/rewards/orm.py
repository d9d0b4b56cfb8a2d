"""Outcome reward models (ORMs): ms-swift 4.6's built-ins (`swift/rewards/orm.py`) and their base class.

An ORM is called once per generation batch: `reward(completions, **columns) -> list[float | None]`, with
the dataset's extra columns (e.g. `solution`) and `response_token_ids` as keyword arguments. None means
"not applicable to this row" (left out of that function's mean, counted 0 in the weighted total).
"""

from __future__ import annotations

import importlib.util
import math
import re
from typing import Any


class ORM:
    """Base class of reward functions; `args` is the run's arguments (GRPOArgs), as in ms-swift."""

    def __init__(self, args: Any = None, **kwargs):
        self.args = args

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        raise NotImplementedError


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
MATH_HINT = "the accuracy reward needs math_verify (symbolic LaTeX equivalence, as ms-swift): pip install 'swift-jax[math]'"


def _inside_answer_tag(text: str) -> tuple[str, bool]:
    """The text inside `<answer>...</answer>` (stripped) and True, or the whole text and False."""
    tagged = _ANSWER_TAG.search(text)
    return (tagged.group(1).strip(), True) if tagged else (text, False)


class MathAccuracy(ORM):
    """1.0 when the completion's answer is mathematically equal to the `solution` column's, else 0.0
    (`accuracy`), decided by `math_verify` exactly as ms-swift 4.6's MathAccuracy: the gold answer (inside
    `<answer>` tags if any) is parsed with math_verify's defaults; the completion's `<answer>` content the
    same way, or else the first LaTeX answer in it (`\\boxed{}` first); `verify` checks symbolic equivalence
    (`\\frac{1}{2}` = `0.5`, `x+1` = `1+x`). A gold answer math_verify cannot parse scores 0."""

    def __init__(self, args: Any = None, **kwargs):
        super().__init__(args)
        if importlib.util.find_spec("math_verify") is None:
            raise ImportError(MATH_HINT)

    def __call__(self, completions: list[str], solution: list[str], **kwargs) -> list[float]:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig, parse, verify

        unanchored = [LatexExtractionConfig(
            normalization_config=NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True, boxed=True, units=True),
            boxed_match_priority=0, try_extract_without_anchor=False,
        )]
        rewards = []
        for content, sol in zip(completions, solution):
            gold = parse(_inside_answer_tag(sol)[0], extraction_mode="first_match")
            if not gold:
                rewards.append(0.0)  # ms-swift: an unparseable solution scores 0
                continue
            text, tagged = _inside_answer_tag(content)
            answer = parse(text, extraction_mode="first_match") if tagged else parse(text, extraction_config=unanchored, extraction_mode="first_match")
            try:
                rewards.append(float(verify(gold, answer)))
            except Exception:  # math_verify raises on some expressions; ms-swift scores them 0
                rewards.append(0.0)
        return rewards


class Format(ORM):
    """1.0 for `<think>...</think> <answer>...</answer>` and nothing after, else 0.0 (`format`)."""

    PATTERN = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>(?![\s\S])", re.DOTALL | re.MULTILINE)

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        return [1.0 if self.PATTERN.match(c) else 0.0 for c in completions]


def _length(ids) -> int:
    """Tokens of a completion (a list of ids, or a list of per-turn lists)."""
    return sum(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)


class CosineReward(ORM):
    """Length-aware accuracy (arXiv 2502.03373, `cosine`): a cosine schedule over the completion length from
    `cosine_min_len_value_{correct,wrong}` at length 0 to `cosine_max_len_value_*` at `cosine_max_len`."""

    def __init__(self, args: Any = None, accuracy_orm: ORM | None = None, **kwargs):
        super().__init__(args)
        self.min_len_value_wrong = args.cosine_min_len_value_wrong
        self.max_len_value_wrong = args.cosine_max_len_value_wrong
        self.min_len_value_correct = args.cosine_min_len_value_correct
        self.max_len_value_correct = args.cosine_max_len_value_correct
        self.max_len = args.cosine_max_len or args.max_completion_length
        self.accuracy_orm = accuracy_orm or MathAccuracy(args)

    @staticmethod
    def cosfn(t: int, T: int, min_value: float, max_value: float) -> float:
        return max_value - (max_value - min_value) * (1 - math.cos(t * math.pi / T)) / 2

    def __call__(self, completions: list[str], solution: list[str], **kwargs) -> list[float]:
        accuracy = self.accuracy_orm(completions, solution, **kwargs)
        rewards = []
        for ids, acc in zip(kwargs["response_token_ids"], accuracy):
            if acc >= 1.0:  # ms-swift swaps min/max for correct answers
                lo, hi = self.max_len_value_correct, self.min_len_value_correct
            else:
                lo, hi = self.max_len_value_wrong, self.min_len_value_wrong
            rewards.append(self.cosfn(_length(ids), self.max_len, lo, hi))
        return rewards


class RepetitionPenalty(ORM):
    """`repetition_max_penalty` x the share of repeated word n-grams (`repetition_n_grams`), `repetition`."""

    def __init__(self, args: Any = None, **kwargs):
        super().__init__(args)
        self.ngram_size = args.repetition_n_grams
        self.max_penalty = args.repetition_max_penalty

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        rewards = []
        for completion in completions:
            words = completion.lower().split()
            if len(words) < self.ngram_size:  # includes the empty completion
                rewards.append(0.0)
                continue
            ngrams = list(zip(*[words[i:] for i in range(self.ngram_size)]))
            rewards.append((1 - len(set(ngrams)) / len(ngrams)) * self.max_penalty)
        return rewards


class SoftOverlong(ORM):
    """DAPO's soft overlong punishment (`soft_overlong`): 0 up to `soft_max_length - soft_cache_length`
    tokens, then falling linearly to -1 at `soft_max_length`."""

    def __init__(self, args: Any = None, **kwargs):
        super().__init__(args)
        self.soft_max_length = args.soft_max_length or args.max_completion_length
        self.soft_cache_length = args.soft_cache_length
        if self.soft_cache_length is None or not self.soft_cache_length < self.soft_max_length:
            raise ValueError(
                f"soft_overlong needs --soft_cache_length below --soft_max_length ({self.soft_max_length}); "
                f"got soft_cache_length={self.soft_cache_length}"
            )

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        expected = self.soft_max_length - self.soft_cache_length
        return [min(-(_length(ids) - expected) / self.soft_cache_length, 0) for ids in kwargs["response_token_ids"]]


orms: dict[str, type] = {
    "accuracy": MathAccuracy,
    "format": Format,
    "cosine": CosineReward,
    "repetition": RepetitionPenalty,
    "soft_overlong": SoftOverlong,
}
