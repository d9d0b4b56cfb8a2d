"""--streaming true for preference data: pairs read row by row from the datasets, as SFT streams them.

The rows come from `swift_jax.data.streaming`'s checkpointable stream (every process keeps every
`process_count`-th row, a window shuffle mixes them, the iterator state resumes the stream); each becomes a pair
sample as in `PreferencePipeline`, then rows are padded or packed the same way. KTO's KL example takes the
previous row's answer within consecutive groups of `batch_size` streamed rows (the first takes the group's
last), as ms-swift's KTOPreprocessor within a batch. Steps per epoch are estimated from the file sizes; a run
needs `--max_steps`.
"""

from __future__ import annotations

import itertools

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data.args import DataArgs
from swift_jax.data.errors import DataError
from swift_jax.data.pipeline import PROBE_ROWS
from swift_jax.data.samples import Counters
from swift_jax.data.sources import DatasetSpec
from swift_jax.data.streaming import _StreamDataset, estimated_rows
from swift_jax.rlhf.preference.data import PairProcessor, PreferencePipeline


class _KTOGroups(grain_exp.FlatMapTransform):
    """A group of streamed (row, ref) items -> pair items whose KL example borrows the previous row's answer."""

    def __init__(self, group: int):
        self.max_fan_out = group

    def flat_map(self, group):
        return [(row, ref, group[(i - 1) % len(group)], 0) for i, (row, ref) in enumerate(group)]


def pair_items(rows: grain.IterDataset, rlhf_type: str, group: int) -> grain.IterDataset:
    """Streamed (row, ref) items -> PairProcessor items `(row, ref, KTO lender or None, 0)`."""
    if rlhf_type == "kto":
        return grain_exp.FlatMapIterDataset(rows.batch(group, batch_fn=list), _KTOGroups(group))
    return rows.map(lambda item: (*item, None, 0))


class StreamingPreferencePipeline(PreferencePipeline):
    """A PreferencePipeline whose training rows are streamed instead of loaded."""

    streaming = True

    def __init__(self, args: DataArgs, tokenizer, rlhf_type: str, val, **kw):
        self.specs = [DatasetSpec.parse(s) for s in args.dataset]
        if not self.specs:
            raise DataError("no dataset given; pass --dataset PATH")
        super().__init__(args, tokenizer, rlhf_type, [], val, **kw)

    def _stream(self, process_index: int, process_count: int, num_epochs: int | None) -> grain.IterDataset:
        return _StreamDataset(self.specs, self.args.strict, process_index, process_count, num_epochs)

    def samples(self, num_epochs: int | None = None) -> grain.IterDataset:
        ds = self._stream(self.process_index, self.process_count, num_epochs)
        if self.shuffle:
            ds = grain_exp.WindowShuffleIterDataset(ds, window_size=max(1, self.args.shuffle_buffer_size), seed=self.seed)
        return pair_items(ds, self.rlhf_type, self.batch_size).map(self.process).filter(lambda s: s is not None)

    def _probe(self, tokenizer) -> dict:
        """Statistics from the first rows of the stream; steps per epoch from the file sizes."""
        first = list(itertools.islice(iter(self._stream(0, 1, 1)), PROBE_ROWS))
        if not first:
            raise DataError(f"{self.args.dataset}: the dataset is empty (no rows)")
        counters = Counters()
        process = PairProcessor(self.args, tokenizer, self.rlhf_type, counters)
        items = pair_items(grain.MapDataset.source(first).to_iter_dataset(), self.rlhf_type, self.batch_size)
        samples = [s for s in map(process, items) if s is not None]
        if not samples:
            raise DataError(f"no usable preference pair in the first {len(first)} rows: {counters.as_dict()}; check "
                            f"--max_length ({self.args.max_length}) and that rows have what --rlhf_type {self.rlhf_type} needs")
        lengths = np.asarray([len(s["input_ids"]) for s in samples])
        rows = estimated_rows(self.specs, first)
        keep = counters.as_dict()["kept"] / len(first)
        pairs_per_row = max(1.0, self.row_length * 0.95 / lengths.mean()) if self.args.packing else 1.0
        self.steps_per_epoch = int(rows * keep / pairs_per_row / self.process_count // self.batch_size)
        return {"streaming": True, "estimated_train_rows": int(rows),
                "num_val_pairs": len(self.val_table) if self.val_table is not None else 0, "probe_rows": len(first),
                "mean_length": round(float(lengths.mean()), 1), "steps_per_epoch": self.steps_per_epoch,
                **{k: v for k, v in counters.as_dict().items() if k != "kept"}}
