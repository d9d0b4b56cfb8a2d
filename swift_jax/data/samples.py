"""One dataset row -> one training sample: normalise the format, render and tokenise, apply max_length.

`SampleProcessor` is what grain maps over the rows (lazily, in background threads): it returns
`{"input_ids", "labels"}` int32 arrays (plus float32 `loss_scale` when the loss_scale weighs tokens), or None for a row that is dropped (too long under `delete`,
nothing to train on, or a bad row under `--strict false`); drops are counted by reason.
"""

from __future__ import annotations

import collections
import os
import logging
import threading

import grain.experimental as grain_exp
import numpy as np

from swift_jax.data.args import DataArgs
from swift_jax.data.errors import BadRows, DataError, row_error
from swift_jax.data.formats import normalize, unused_fields
from swift_jax.data.media import row_media
from swift_jax.data.templates import IGNORE

log = logging.getLogger("swift_jax.data")

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


def split_long(ids: np.ndarray, labels: np.ndarray, max_length: int, scale: np.ndarray | None = None) -> list[tuple]:
    """--truncation_strategy split (ms-swift's template): consecutive `max_length` pieces of a sample, each
    trained on from its second token (the first has no prediction inside the piece)."""
    return [(ids[i : i + max_length], labels[i : i + max_length], None if scale is None else scale[i : i + max_length])
            for i in range(0, len(ids), max_length)]


def truncate(ids: np.ndarray, labels: np.ndarray, max_length: int, strategy: str, scale: np.ndarray | None = None):
    """Cut a sample (and its weights) to max_length: 'left' keeps the end, 'right' keeps the start, 'delete'
    returns None."""
    if len(ids) <= max_length:
        return ids, labels, scale
    if strategy == "delete":
        return None
    keep = slice(len(ids) - max_length, None) if strategy == "left" else slice(0, max_length)
    return ids[keep], labels[keep], None if scale is None else scale[keep]


_NOTED: set[str] = set()
_NOTED_LOCK = threading.Lock()


def _note_unused(row: dict, ref) -> None:
    """Name, once per run, each field SFT ignores (as ms-swift's SFT does), with the first row that has it."""
    for field in unused_fields(row):
        with _NOTED_LOCK:
            if field in _NOTED:
                continue
            _NOTED.add(field)
        log.warning("field %r (first seen at %s) is not used by SFT and is ignored, as in ms-swift", field, ref)


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


class FlattenSamples(grain_exp.FlatMapTransform):
    """Each row's list of samples (`SampleProcessor.samples_of`: none, one, or split pieces) -> one sample after
    another in the training stream."""

    def flat_map(self, samples):
        return samples


class SampleProcessor:
    """Maps (row, RowRef) -> {"input_ids": [n], "labels": [n]} int32, or None when the row is dropped."""

    def __init__(self, args: DataArgs, tokenizer, counters: Counters | None = None, vision=None):
        if args.truncation_strategy not in ("delete", "left", "right", "split"):
            raise DataError(f"--truncation_strategy {args.truncation_strategy!r}: expected delete, left, right or split")
        self.args = args
        self.encoder = args.chat_encoder(tokenizer)
        self.weighted = self.encoder.weighted
        """Samples carry a float32 `loss_scale` (per-token weight, aligned with labels)."""
        self.counters = counters or Counters()
        self.bad = BadRows(args.strict)
        self.vision = vision
        """A `data.vision.VisionData` when the model reads images / videos: samples carry its arrays."""

    def encode_row(self, row: dict, ref) -> dict[str, np.ndarray] | None:
        """The sample of one row (with --truncation_strategy split: its first piece); raises DataError naming
        `ref` when the row is malformed (strict)."""
        samples = self.encode_pieces(row, ref)
        return samples[0] if samples else None

    def samples_of(self, item) -> list[dict[str, np.ndarray]]:
        """The samples of one (row, ref): none (dropped), one, or with --truncation_strategy split, one per
        `max_length` piece."""
        row, ref = item
        return self.encode_pieces(row, ref)

    def encode_pieces(self, row: dict, ref) -> list[dict[str, np.ndarray]]:
        """See `samples_of`; malformed rows raise (strict) or are counted and skipped."""
        try:
            sample = normalize(row, self.args.columns, media=self.vision is not None)
            if not self.args.use_chat_template:
                sample = plain_text(sample)
            if self.vision is not None:
                vision_sample = self._vision_sample(row, sample, ref)
                return [vision_sample] if vision_sample is not None else []
            encoded = self.encoder.encode(sample)
        except DataError as e:
            message = str(e)
            self.bad.handle(DataError(message) if message.startswith(str(ref)) else row_error(ref, message))
            self.counters.add("bad_rows_skipped")
            return []
        _note_unused(row, ref)
        if self.args.truncation_strategy == "split":
            pieces = split_long(encoded.input_ids, encoded.labels, self.args.max_length, encoded.loss_scale)
        else:
            cut = truncate(encoded.input_ids, encoded.labels, self.args.max_length, self.args.truncation_strategy, encoded.loss_scale)
            if cut is None:
                self.counters.add("dropped_too_long")
                return []
            pieces = [cut]
        return [s for s in (self._finish(*piece) for piece in pieces) if s is not None]

    def _finish(self, ids: np.ndarray, labels: np.ndarray, scale: np.ndarray | None) -> dict[str, np.ndarray] | None:
        """A sample of (ids, labels, weights) cut to length: no loss on its first token; none without targets."""
        labels = labels.copy()
        labels[0] = IGNORE  # the loss predicts labels[t + 1] at t: never across a sample boundary
        if not (labels != IGNORE).any():
            self.counters.add("dropped_no_target")
            return None
        self.counters.add("kept")
        sample = {"input_ids": np.ascontiguousarray(ids, np.int32), "labels": labels.astype(np.int32)}
        if self.weighted:
            sample["loss_scale"] = np.asarray(scale, np.float32).copy()
            sample["loss_scale"][0] = 0.0
        return sample

    def _vision_sample(self, row: dict, sample: dict, ref) -> dict[str, np.ndarray] | None:
        """A multimodal sample: tokens with the vision pads expanded plus the per-sample vision layout
        (`data.vision.VisionData.layout`). Too long is dropped whatever --truncation_strategy: a cut would
        split an image's tokens from its pixels."""
        if "text" in sample:
            raise DataError("a 'text' row cannot carry images; expected a chat row (messages, query, ...)")
        media = row_media(row, str(ref), base=os.path.dirname(getattr(ref, "file", "") or ""))
        encoded = self.vision.encode(self.encoder, sample, media, str(ref))
        if len(encoded["input_ids"]) > self.args.max_length:
            self.counters.add("dropped_too_long")
            return None
        encoded["labels"][0] = IGNORE
        if not (encoded["labels"] != IGNORE).any():
            self.counters.add("dropped_no_target")
            return None
        self.counters.add("kept")
        out = {k: encoded[k] for k in ("input_ids", "labels", "loss_scale") if k in encoded}
        if "loss_scale" in out:
            out["loss_scale"][0] = 0.0
        return {**out, **self.vision.layout(encoded)}

    def __call__(self, item) -> dict[str, np.ndarray] | None:
        row, ref = item
        return self.encode_row(row, ref)
