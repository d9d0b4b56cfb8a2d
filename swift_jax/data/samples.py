"""One dataset row -> one training sample: normalise the format, render and tokenise, apply max_length.

`SampleProcessor` is what grain maps over the rows (lazily, in background threads): it returns
`{"input_ids", "labels"}` int32 arrays, or None for a row that is dropped (too long under `delete`,
nothing to train on, or a bad row under `--strict false`); drops are counted by reason.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from swift_jax.data.args import DataArgs
from swift_jax.data.errors import BadRows, DataError, row_error
from swift_jax.data.formats import normalize
from swift_jax.data.templates import IGNORE, ChatEncoder

DROP_REASONS = ("dropped_too_long", "dropped_no_target", "bad_rows_skipped")


class Counters:
    """Thread-safe counts of kept and dropped rows by reason."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: self._counts.get(k, 0) for k in ("kept",) + DROP_REASONS}


def truncate(ids: np.ndarray, labels: np.ndarray, max_length: int, strategy: str):
    """Cut a sample to max_length: 'left' keeps the end, 'right' keeps the start, 'delete' returns None."""
    if len(ids) <= max_length:
        return ids, labels
    if strategy == "delete":
        return None
    keep = slice(len(ids) - max_length, None) if strategy == "left" else slice(0, max_length)
    return ids[keep], labels[keep]


def plain_text(sample: dict) -> dict:
    """A normalised sample as pre-training text (ms-swift's template without chat formatting): the last
    round's query followed by its response; the system prompt and earlier rounds are dropped, as ms-swift's
    generation template (one round, no system) does. `text` samples pass through."""
    if "text" in sample:
        return sample
    messages = sample["messages"]
    response = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    asked = [m["content"] for m in messages[: len(messages) - bool(response)] if m["role"] == "user"]
    return {"text": (asked[-1] if asked else "") + response}


class SampleProcessor:
    """Maps (row, RowRef) -> {"input_ids": [n], "labels": [n]} int32, or None when the row is dropped."""

    def __init__(self, args: DataArgs, tokenizer, counters: Counters | None = None):
        if args.truncation_strategy not in ("delete", "left", "right"):
            raise DataError(f"--truncation_strategy {args.truncation_strategy!r}: expected delete, left or right")
        self.args = args
        self.encoder = ChatEncoder(tokenizer, args.template, args.system, args.loss_on_prompt)
        self.counters = counters or Counters()
        self.bad = BadRows(args.strict)

    def encode_row(self, row: dict, ref) -> dict[str, np.ndarray] | None:
        """The sample of one row; raises DataError naming `ref` when the row is malformed (strict)."""
        try:
            sample = normalize(row, self.args.columns)
            if not self.args.use_chat_template:
                sample = plain_text(sample)
            encoded = self.encoder.encode(sample)
        except DataError as e:
            self.bad.handle(row_error(ref, str(e)))
            self.counters.add("bad_rows_skipped")
            return None
        cut = truncate(encoded.input_ids, encoded.labels, self.args.max_length, self.args.truncation_strategy)
        if cut is None:
            self.counters.add("dropped_too_long")
            return None
        ids, labels = cut
        labels = labels.copy()
        labels[0] = IGNORE  # the loss predicts labels[t + 1] at t: never across a sample boundary
        if not (labels != IGNORE).any():
            self.counters.add("dropped_no_target")
            return None
        self.counters.add("kept")
        return {"input_ids": np.ascontiguousarray(ids, np.int32), "labels": labels.astype(np.int32)}

    def __call__(self, item) -> dict[str, np.ndarray] | None:
        row, ref = item
        return self.encode_row(row, ref)
