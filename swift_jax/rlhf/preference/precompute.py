"""`--precompute_ref_log_probs`: the reference's answer log-probs computed before training, read from the batches.

A first pass runs the reference (the policy with its adapters off, or the frozen copy) over one epoch of the
training rows, in the training layout (packed or one pair per row) on the run's mesh, and stores each pair's
(chosen, rejected) sums under its `pair_id` (its row in the training table). Training then attaches them to each
batch as `ref_logps` (`[rows, seq]`: a segment's value on its first token, 0 elsewhere), so the step runs no
reference forward and full fine-tuning keeps no frozen copy. The values depend only on the frozen reference,
so a resumed run recomputes the same ones. A stream (`--streaming`) has no first pass: each batch gets its
values just before its step.

On several processes each one runs the reference over its own share of the rows (the forward is one program on
the global mesh, so all run it in step: a process whose share is done feeds empty batches until every share is),
then the tables are gathered, so every process holds every pair's values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

REF_KEY = "ref_logps"
Forward = Callable[[dict], tuple[np.ndarray, np.ndarray]]
"""A host batch -> the reference's (chosen, rejected) answer log-prob sums `[rows * pairs_per_row]`."""


def _segment_starts(segment_ids: np.ndarray) -> np.ndarray:
    """[rows, seq] bool: the first token of each segment."""
    previous = np.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
    return (segment_ids > 0) & (segment_ids != previous)


def pair_slots(batch: dict, pairs_per_row: int) -> tuple[np.ndarray, np.ndarray]:
    """(pair ids, present) `[rows * pairs_per_row]` of a host batch's pair slots (the id read on the chosen
    segment; absent slots are padding)."""
    seg = batch["segment_ids"]
    ids = np.arange(1, 2 * pairs_per_row + 1, 2)
    on = seg[..., None] == ids  # [rows, seq, pairs_per_row]
    present = on.any(1)
    first = on.argmax(1)  # [rows, pairs_per_row]
    pair_id = np.take_along_axis(batch["pair_id"], first, axis=1)
    return pair_id.reshape(-1), present.reshape(-1)


def place(batch: dict, chosen: np.ndarray, rejected: np.ndarray, pairs_per_row: int) -> np.ndarray:
    """`ref_logps` `[rows, seq]` float32: each pair slot's chosen / rejected value on its segment's first token."""
    seg = batch["segment_ids"]
    rows = seg.shape[0]
    values = np.stack([chosen.reshape(rows, pairs_per_row), rejected.reshape(rows, pairs_per_row)], -1)  # [rows, ppr, 2]
    values = np.concatenate([np.zeros((rows, 1), np.float32), values.reshape(rows, -1)], 1)  # by segment id
    return np.where(_segment_starts(seg), np.take_along_axis(values, seg, axis=1), 0.0).astype(np.float32)


class ReferenceTable:
    """Each training pair's reference (chosen, rejected) log-prob sums, `[pairs in the table, 2]` (NaN: not
    computed: the pair was dropped by the data pipeline)."""

    def __init__(self, values: np.ndarray, pairs_per_row: int):
        self.values, self.pairs_per_row = values, pairs_per_row

    @classmethod
    def compute(cls, forward: Forward, batches: Iterable[dict], num_pairs: int, pairs_per_row: int) -> "ReferenceTable":
        """Run `forward` over `batches` (one epoch of training rows) and keep every pair's values."""
        values = np.full((num_pairs, 2), np.nan, np.float32)
        for batch in batches:
            chosen, rejected = forward(batch)
            ids, present = pair_slots(batch, pairs_per_row)
            values[ids[present]] = np.stack([chosen, rejected], -1)[present]
        return cls(gathered(values), pairs_per_row)

    def attach(self, batch: dict) -> dict:
        """`batch` with its `ref_logps`."""
        ids, present = pair_slots(batch, self.pairs_per_row)
        picked = np.where(present[:, None], self.values[np.where(present, ids, 0)], 0.0)
        missing = present & np.isnan(picked).any(-1)
        if missing.any():
            raise RuntimeError(f"--precompute_ref_log_probs: no reference values for pairs {ids[missing][:5].tolist()} "
                               "(the first pass did not see them); please report this")
        return {**batch, REF_KEY: place(batch, picked[:, 0], picked[:, 1], self.pairs_per_row)}


def in_step(batches: Iterable[dict], empty: dict) -> Iterable[dict]:
    """`batches`, as many on every process: once this process's are done it yields `empty` (a batch with no pair)
    until every process's are (one small all-gather per batch on several processes)."""
    if jax.process_count() == 1:
        yield from batches
        return
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        if not multihost_utils.process_allgather(np.int32(batch is not None)).any():
            return
        yield empty if batch is None else batch


def gathered(values: np.ndarray) -> np.ndarray:
    """`[pairs, 2]` tables of every process (NaN where a process did not compute a pair) merged into one."""
    if jax.process_count() == 1:
        return values
    return np.fmax.reduce(multihost_utils.process_allgather(values), axis=0)  # fmax: a number wins over NaN


def attach_computed(forward: Forward, batch: dict, pairs_per_row: int) -> dict:
    """`batch` with its `ref_logps` computed now (streams, validation batches)."""
    chosen, rejected = forward(batch)
    return {**batch, REF_KEY: place(batch, chosen, rejected, pairs_per_row)}


def padded_batches(rows: Iterable[dict], batch_size: int, empty_row: dict) -> Iterable[dict]:
    """Rows stacked into batches of `batch_size` (the last one filled with `empty_row`s: one shape, one compile)."""
    part: list[dict] = []
    for row in rows:
        part.append(row)
        if len(part) == batch_size:
            yield {k: np.stack([r[k] for r in part]) for k in part[0]}
            part = []
    if part:
        part += [empty_row] * (batch_size - len(part))
        yield {k: np.stack([r[k] for r in part]) for k in part[0]}
