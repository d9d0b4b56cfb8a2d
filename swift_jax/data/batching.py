"""Fixed-shape batches: pad one sample to a row, or pack several into a row (grain's best-fit packer).

Every row has `input_ids`, `labels` (IGNORE = -100 where not trained), `segment_ids` (1..k for the
samples in the row, 0 = padding) and `positions` (0.. restarting in each segment, 0 on padding), all
int32 `[max_length]`, so a run compiles once.
"""

from __future__ import annotations

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data.templates import IGNORE

FEATURES = ("input_ids", "labels", "segment_ids", "positions")


def pad_sample(sample: dict[str, np.ndarray], max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One sample right-padded to `max_length` as a row with a single segment."""
    n = len(sample["input_ids"])
    row = {
        "input_ids": np.full(max_length, pad_id, np.int32),
        "labels": np.full(max_length, IGNORE, np.int32),
        "segment_ids": np.zeros(max_length, np.int32),
        "positions": np.zeros(max_length, np.int32),
    }
    row["input_ids"][:n] = sample["input_ids"]
    row["labels"][:n] = sample["labels"]
    row["segment_ids"][:n] = 1
    row["positions"][:n] = np.arange(n, dtype=np.int32)
    return row


def empty_row(max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """A row of padding only (fills the last validation batch so every batch has the same shape)."""
    return pad_sample({"input_ids": np.zeros(0, np.int32), "labels": np.zeros(0, np.int32)}, max_length, pad_id)


def _rename_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packer names the segment features after their source; keep one copy under our names."""
    return {
        "input_ids": row["input_ids"].astype(np.int32),
        "labels": row["labels"].astype(np.int32),
        "segment_ids": row["input_ids_segment_ids"].astype(np.int32),
        "positions": row["input_ids_positions"].astype(np.int32),
    }


def pack(samples: grain.IterDataset, max_length: int, pad_id: int, num_bins: int, seed: int, shuffle: bool) -> grain.IterDataset:
    """Pack a stream of samples into `[max_length]` rows, never splitting a sample.

    Best-fit over `num_bins` open rows: each sample goes to the row it fills most tightly; when one fits
    nowhere, all rows are emitted (in shuffled order when `shuffle`). The iterator state is checkpointable."""
    packed = grain_exp.BestFitPackIterDataset(
        samples,
        length_struct={"input_ids": max_length, "labels": max_length},
        num_packing_bins=num_bins,
        seed=seed,
        shuffle_bins=shuffle,
        padding_struct={"input_ids": pad_id, "labels": IGNORE},
    )
    return packed.map(_rename_packed)


def pad_stream(samples: grain.IterDataset, max_length: int, pad_id: int) -> grain.IterDataset:
    """One sample per row, right-padded."""
    return samples.map(lambda s: pad_sample(s, max_length, pad_id))


def packing_efficiency(rows: list[dict[str, np.ndarray]]) -> float:
    """Real tokens / slots over rows (1.0 = no padding)."""
    slots = sum(r["segment_ids"].size for r in rows)
    return float(sum(int((r["segment_ids"] > 0).sum()) for r in rows) / max(slots, 1))
