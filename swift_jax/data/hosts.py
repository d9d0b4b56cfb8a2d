"""How the processes of a multi-host run share one global stream, so that a step's rows do not depend on how many
processes the run spans.

Unpacked samples are split before tokenisation: process p of P takes every P-th sample of the global order,
and the P host batches of a step together hold the rows one process would have batched. Packed rows cannot be
split that way (which samples share a row depends on every sample before them), so every process tokenises and
packs the whole stream, batches it into global batches of `batch_size * P` rows, and keeps its own contiguous
`batch_size` rows of each (`host_rows`): the global batch is the one a single process builds.
"""

from __future__ import annotations

import grain
import numpy as np


def take_share(ds: grain.IterDataset, process_index: int, process_count: int) -> grain.IterDataset:
    """Elements process_index, process_index + process_count, ... of a stream (all of it for one process)."""
    if process_count == 1:
        return ds
    groups = ds.batch(process_count, drop_remainder=False, batch_fn=list)
    return groups.map(lambda group: group[process_index] if process_index < len(group) else None).filter(
        lambda item: item is not None)


def _rows(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in batch.items()}


def host_rows(batches: grain.IterDataset, batch_size: int, process_index: int, process_count: int) -> grain.IterDataset:
    """Global batches `{name: [batch_size * process_count, ...]}` -> this process's rows
    `[process_index * batch_size, (process_index + 1) * batch_size)` of each."""
    if process_count == 1:
        return batches
    start = process_index * batch_size
    return batches.map(lambda batch: _rows(batch, start, start + batch_size))
