"""Outcome reward models (ORMs): ms-swift 4.6's built-ins (`swift/rewards/orm.py`) and their base class.

An ORM is called once per generation batch: `reward(completions, **columns) -> list[float | None]`, with
the dataset's extra columns (e.g. `solution`) and `response_token_ids` as keyword arguments. None means
"not applicable to this row" (left out of that function's mean, counted 0 in the weighted total).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any


class ORM:
    """Base class of reward functions; `args` is the run's arguments (GRPOArgs), as in ms-swift."""

    def __init__(self, args: Any = None, **kwargs):
        self.args = args

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        raise NotImplementedError


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_DOLLARS = re.compile(r"\$+([^$]+?)\$+")


def _boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _number(text: str) -> Fraction | None:
    """`text` as an exact number: integers, decimals, `a/b`, `\\frac{a}{b}`, thousands separators; or None."""
    text = text.replace(",", "").replace("\\!", "").strip()
    frac = re.fullmatch(r"-?\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", text)
    try:
        if frac:
            value = Fraction(frac.group(1)) / Fraction(frac.group(2))
            return -value if text.startswith("-") else value
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(text: str) -> str:
    """An answer with the markup around it removed: `$`, `\\boxed{}`, `\\text{}`, spaces, a final period."""
    inner = _boxed(text)
    text = inner if inner is not None else text
    text = re.sub(r"\\text\{(.*?)\}", r"\1", text)
    text = text.replace("$", "").replace("\\left", "").replace("\\right", "")
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def extract_answer(text: str) -> str:
    """The answer a completion gives: inside `<answer>` tags, else the last `\\boxed{}`, else the last
    `$...$`, else the whole text."""
    tagged = _ANSWER_TAG.search(text)
    if tagged:
        return tagged.group(1).strip()
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    dollars = _DOLLARS.findall(text)
    return dollars[-1] if dollars else text.strip()


def answers_match(prediction: str, gold: str) -> bool:
    """Equal after `normalize_answer`, or equal as exact numbers (`0.5` == `1/2` == `\\frac{1}{2}`)."""
    p, g = normalize_answer(prediction), normalize_answer(gold)
    if not g:
        return False
    if p == g:
        return True
    pn, gn = _number(p), _number(g)
    return pn is not None and gn is not None and pn == gn


class MathAccuracy(ORM):
    """1.0 when the completion's answer equals the `solution` column's, else 0.0 (`accuracy`).

    ms-swift uses `math_verify` (symbolic LaTeX equivalence). This is a dependency-free subset: the answer
    is taken from `<answer>` tags, `\\boxed{}` or `$...$` as there, then compared as normalised text or as
    exact numbers; symbolic equivalence (`x+1` vs `1+x`) is not recognised. An empty solution scores 0.
    """

    def __call__(self, completions: list[str], solution: list[str], **kwargs) -> list[float]:
        rewards = []
        for content, sol in zip(completions, solution):
            tagged = _ANSWER_TAG.search(sol)
            gold = tagged.group(1).strip() if tagged else sol
            rewards.append(float(answers_match(extract_answer(content), gold)))
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
