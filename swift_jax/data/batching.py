"""Batches: pad samples to the batch's length bucket, or pack several samples into `max_length` rows.

Every row has `input_ids`, `labels` (IGNORE = -100 where not trained), `segment_ids` (1..k for the samples in
the row, 0 = padding) and `positions` (0.. restarting in each segment, 0 on padding), all int32, plus a float32
`loss_scale` (per-token weight aligned with labels, 0 on padding) when the loss_scale strategy weighs tokens.

Packed rows are `[max_length]`. Unpadded batches are padded to their longest sample rounded up to a multiple of
`PAD_MULTIPLE` (at most `max_length`), as PyTorch loops pad to the batch's longest row, but in few enough
widths that a run compiles at most once per bucket. The `batches_per_step` batches a step accumulates share
one width (the widest of them), so they stack.
"""

from __future__ import annotations

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data.templates import IGNORE

FEATURES = ("input_ids", "labels", "segment_ids", "positions")
PAD_MULTIPLE = 128


def features(weighted: bool) -> tuple[str, ...]:
    """The arrays of a row: FEATURES, plus `loss_scale` when samples carry token weights."""
    return FEATURES + ("loss_scale",) if weighted else FEATURES


def bucket_length(longest: int, max_length: int, multiple: int = PAD_MULTIPLE) -> int:
    """`longest` rounded up to a multiple of `multiple`, at most `max_length`."""
    return min(max_length, -(-max(longest, 1) // multiple) * multiple)


def pad_sample(sample: dict[str, np.ndarray], length: int, pad_id: int, side: str = "right") -> dict[str, np.ndarray]:
    """One sample padded to `length` as a row with a single segment, the padding after it (`side` right) or
    before it (left: ms-swift's --padding_side left)."""
    n = len(sample["input_ids"])
    at = slice(length - n, length) if side == "left" else slice(0, n)
    row = {
        "input_ids": np.full(length, pad_id, np.int32),
        "labels": np.full(length, IGNORE, np.int32),
        "segment_ids": np.zeros(length, np.int32),
        "positions": np.zeros(length, np.int32),
    }
    row["input_ids"][at] = sample["input_ids"]
    row["labels"][at] = sample["labels"]
    row["segment_ids"][at] = 1
    row["positions"][at] = np.arange(n, dtype=np.int32)
    if "loss_scale" in sample:
        row["loss_scale"] = np.zeros(length, np.float32)
        row["loss_scale"][at] = sample["loss_scale"]
    return row


def empty_row(length: int, pad_id: int, weighted: bool = False) -> dict[str, np.ndarray]:
    """A row of padding only (fills the last validation batch so every batch has the same shape)."""
    sample = {"input_ids": np.zeros(0, np.int32), "labels": np.zeros(0, np.int32)}
    if weighted:
        sample["loss_scale"] = np.zeros(0, np.float32)
    return pad_sample(sample, length, pad_id)


def stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of one length -> a batch `{name: [rows, length]}`."""
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def batches_of(rows: list[dict[str, np.ndarray]], batch_size: int) -> list[dict[str, np.ndarray]]:
    """A step's rows (one shape) -> its consecutive batches of `batch_size` rows."""
    return [stack_rows(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


class _PadGroup(grain_exp.FlatMapTransform):
    """`batches_per_step * batch_size` samples -> `batches_per_step` batches padded to one bucket width."""

    def __init__(self, batch_size: int, batches_per_step: int, max_length: int, pad_id: int, multiple: int, side: str):
        self.batch_size, self.max_fan_out = batch_size, batches_per_step
        self.max_length, self.pad_id, self.multiple, self.side = max_length, pad_id, multiple, side

    def flat_map(self, samples):
        width = bucket_length(max(len(s["input_ids"]) for s in samples), self.max_length, self.multiple)
        rows = [pad_sample(s, width, self.pad_id, self.side) for s in samples]
        return batches_of(rows, self.batch_size)


def padded_batches(samples: grain.IterDataset, batch_size: int, max_length: int, pad_id: int,
                   batches_per_step: int = 1, multiple: int = PAD_MULTIPLE, side: str = "right") -> grain.IterDataset:
    """Batches `[batch_size, bucket]` of one sample per row (bucket: the longest sample rounded up to
    `multiple`, at most max_length), padded on `side`; each group of `batches_per_step` consecutive batches
    shares its width."""
    groups = samples.batch(batch_size * batches_per_step, drop_remainder=True, batch_fn=list)
    return grain_exp.FlatMapIterDataset(groups, _PadGroup(batch_size, batches_per_step, max_length, pad_id, multiple, side))


def rename_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packer names the segment features after their source; keep one copy under our names."""
    out = {
        "input_ids": row["input_ids"].astype(np.int32),
        "labels": row["labels"].astype(np.int32),
        "segment_ids": row["input_ids_segment_ids"].astype(np.int32),
        "positions": row["input_ids_positions"].astype(np.int32),
    }
    if "loss_scale" in row:
        out["loss_scale"] = row["loss_scale"].astype(np.float32)
    return out


def pack(samples: grain.IterDataset, max_length: int, pad_id: int, num_bins: int, seed: int, shuffle: bool,
         weighted: bool = False) -> grain.IterDataset:
    """Pack a stream of samples into `[max_length]` rows, never splitting a sample.

    Best-fit over `num_bins` open rows: each sample goes to the row it fills most tightly; when one fits
    nowhere, all rows are emitted (in shuffled order when `shuffle`). The iterator state is checkpointable."""
    lengths = {"input_ids": max_length, "labels": max_length}
    padding = {"input_ids": pad_id, "labels": IGNORE}
    if weighted:
        lengths["loss_scale"], padding["loss_scale"] = max_length, 0.0
    packed = grain_exp.BestFitPackIterDataset(
        samples, length_struct=lengths, num_packing_bins=num_bins, seed=seed, shuffle_bins=shuffle, padding_struct=padding,
    )
    return packed.map(rename_packed)


def packing_efficiency(rows: list[dict[str, np.ndarray]]) -> float:
    """Real tokens / slots over rows (1.0 = no padding)."""
    slots = sum(r["segment_ids"].size for r in rows)
    return float(sum(int((r["segment_ids"] > 0).sum()) for r in rows) / max(slots, 1))
