"""--streaming true for preference data: pairs read row by row from the datasets, as SFT streams them.

The rows come from `swift_jax.data.streaming`'s checkpointable stream (a window shuffle mixes them, the
iterator state resumes the stream, every process sees the same order); each becomes a pair sample as in
`PreferencePipeline`, then rows are padded or packed the same way, and shared among processes as
`data.hosts` says. KTO's KL example takes the previous row's answer within consecutive groups of one global
batch of streamed rows (`batch_size` x processes; the first takes the group's last), as ms-swift's
KTOPreprocessor within a batch. Steps per epoch are estimated from the file sizes; a run
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
from swift_jax.data.hosts import take_share
from swift_jax.data.streaming import _StreamDataset, estimated_rows, ordered_stream, stream_mix, stream_plans
from swift_jax.rlhf.data import PairProcessor, PreferencePipeline


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
        self.specs, self.mix = stream_plans(args), stream_mix(args)
        super().__init__(args, tokenizer, rlhf_type, [], val, **kw)

    def samples(self, num_epochs: int | None = None) -> grain.IterDataset:
        rows = ordered_stream(self.specs, self.args, self.seed, self.shuffle, num_epochs)
        items = pair_items(rows, self.rlhf_type, self.global_batch_size)
        return take_share(items, *self.share).map(self.process).filter(lambda s: s is not None)

    def _probe(self, tokenizer) -> dict:
        """Statistics from the first rows of the stream; steps per epoch from the file sizes."""
        first = list(itertools.islice(iter(_StreamDataset(self.specs, self.args.strict, 1)), PROBE_ROWS))
        if not first:
            raise DataError(f"{self.args.dataset}: the dataset is empty (no rows)")
        counters = Counters()
        process = PairProcessor(self.args, tokenizer, self.rlhf_type, counters)
        items = pair_items(grain.MapDataset.source(first).to_iter_dataset(), self.rlhf_type, self.global_batch_size)
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
