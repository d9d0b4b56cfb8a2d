"""--streaming true: read datasets too large for memory row by row, shuffled within a window.

Rows come from each `--dataset` in turn (local JSON lines read line by line; other files and hub ids
through `datasets` streaming), and a grain window shuffle (`--shuffle_buffer_size`) mixes them. Every process
reads the whole stream and shuffles it alike, then keeps every `process_count`-th row (unpacked) or packs it
all and keeps its rows of each global batch (`data.hosts`), so a step's rows do not depend on the number of
processes. The iterator state is (epoch, dataset, rows read), so a
checkpoint resumes the same stream (skipping to the position costs a re-read up to it).
Steps per epoch are estimated from the probed bytes per row and the file sizes (0 for hub streams).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data.args import DataArgs
from swift_jax.data.errors import BadRows, DataError, RowRef
from swift_jax.data.hosts import take_share
from swift_jax.data.pipeline import PROBE_ROWS, DataPipeline, load_table
from swift_jax.data.samples import Counters, SampleProcessor
from swift_jax.data.sources import BUILDERS, DatasetSpec, check_local, list_files


def _json_lines(path: str, bad: BadRows) -> Iterator[tuple[dict, RowRef]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                yield json.loads(text), RowRef(path, n - 1, n)
            except json.JSONDecodeError as e:
                bad.handle(DataError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"))


def stream_rows(path: str, bad: BadRows) -> Iterator[tuple[dict, RowRef]]:
    """(row, RowRef) of one dataset path (file, folder or hub id), read lazily."""
    import datasets

    if not os.path.exists(path):
        check_local(path)
        try:
            stream = datasets.load_dataset(path, split="train", streaming=True)
        except Exception as e:
            raise DataError(f"dataset {path!r} is not a local file or folder, and streaming it from the hub failed ({type(e).__name__}: {str(e)[:200]})") from None
        yield from ((row, RowRef(path, i)) for i, row in enumerate(stream))
        return
    for file in list_files(path):
        suffix = os.path.splitext(file)[1].lower()
        if suffix == ".jsonl":
            yield from _json_lines(file, bad)
        else:
            stream = datasets.load_dataset(BUILDERS[suffix], data_files=file, split="train", streaming=True)
            yield from ((row, RowRef(file, i)) for i, row in enumerate(stream))


def _cycle(path: str, strict: bool) -> Iterator[tuple[dict, RowRef]]:
    """The rows of `path` over and over (a streamed `path#N` larger than the dataset repeats it, as the
    in-memory `#N` takes every row once per full pass)."""
    while True:
        empty = True
        for item in stream_rows(path, BadRows(strict)):
            empty = False
            yield item
        if empty:
            raise DataError(f"{path}: the dataset is empty (no rows)")


class _StreamIterator(grain.DatasetIterator):
    """Checkpointable iterator over the rows of several datasets; state = (epoch, dataset, rows read)."""

    def __init__(self, specs: list[DatasetSpec], strict: bool, num_epochs: int | None):
        super().__init__()
        self.specs, self.strict, self.num_epochs = specs, strict, num_epochs
        self.set_state({"epoch": 0, "dataset": 0, "rows": 0})

    def _open(self) -> None:
        spec = self.specs[self._dataset]
        rows = stream_rows(spec.path, BadRows(self.strict)) if spec.num_samples is None else _cycle(spec.path, self.strict)
        self._rows = itertools.islice(rows, self._read, spec.num_samples)

    def __next__(self) -> tuple[dict, RowRef]:
        while True:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                raise StopIteration
            try:
                row = next(self._rows)
            except StopIteration:
                self._dataset, self._read = self._dataset + 1, 0
                if self._dataset == len(self.specs):
                    self._epoch, self._dataset = self._epoch + 1, 0
                self._open()
                continue
            self._read += 1
            return row

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "dataset": self._dataset, "rows": self._read}

    def set_state(self, state: dict) -> None:
        self._epoch, self._dataset, self._read = state["epoch"], state["dataset"], state["rows"]
        self._open()


class _StreamDataset(grain.IterDataset):
    def __init__(self, *args):
        super().__init__()
        self._args = args

    def __iter__(self) -> _StreamIterator:
        return _StreamIterator(*self._args)


def estimated_rows(specs: list[DatasetSpec], first: list[tuple[dict, RowRef]]) -> float:
    """Rows per epoch of a stream: N for each `path#N`, else its file sizes over the bytes per row of the probed
    `first` rows (0 for hub streams)."""
    row_bytes = np.mean([len(json.dumps(row)) for row, _ in first])
    rows = 0.0
    for spec in specs:
        if spec.num_samples is not None:
            rows += spec.num_samples
        elif os.path.exists(spec.path):
            rows += sum(os.path.getsize(f) for f in list_files(spec.path)) / row_bytes
    return rows


def ordered_stream(specs: list[DatasetSpec], args: DataArgs, seed: int, shuffle: bool,
                   num_epochs: int | None) -> grain.IterDataset:
    """The (row, RowRef) items of `specs` in the run's order, the same on every process: read in turn, then
    window-shuffled (`--shuffle_buffer_size`) when `shuffle`."""
    ds = _StreamDataset(specs, args.strict, num_epochs)
    if shuffle:
        ds = grain_exp.WindowShuffleIterDataset(ds, window_size=max(1, args.shuffle_buffer_size), seed=seed)
    return ds


class StreamingPipeline(DataPipeline):
    """A DataPipeline whose training rows are streamed instead of loaded."""

    def __init__(self, args: DataArgs, tokenizer, val, **kw):
        self.specs = [DatasetSpec.parse(s) for s in args.dataset]
        if not self.specs:
            raise DataError("no dataset given; pass --dataset PATH")
        super().__init__(args, tokenizer, None, val, **kw)

    def samples(self, num_epochs: int | None = None) -> grain.IterDataset:
        rows = ordered_stream(self.specs, self.args, self.seed, self.shuffle, num_epochs)
        return take_share(rows, *self.share).map(self.process).filter(lambda s: s is not None)

    def _probe(self, tokenizer) -> dict:
        """Statistics from the first rows of the stream; steps per epoch from bytes per row and file sizes."""
        counters = Counters()
        process = SampleProcessor(self.args, tokenizer, counters)
        first = list(itertools.islice(iter(_StreamDataset(self.specs, self.args.strict, 1)), PROBE_ROWS))
        if not first:
            raise DataError(f"{self.args.dataset}: the dataset is empty (no rows)")
        samples = [s for s in (process(item) for item in first) if s is not None]
        lengths = np.asarray([len(s["input_ids"]) for s in samples] or [0])
        rows = estimated_rows(self.specs, first)
        keep = counters.as_dict()["kept"] / len(first)
        per_row = (lengths.mean() / (self.args.max_length * 0.95)) if self.args.packing else 1.0
        self.steps_per_epoch = int(rows * keep * per_row / self.process_count // self.batch_size)
        stats = {"streaming": True, "estimated_train_rows": int(rows), "num_val_samples": len(self.val_table) if self.val_table else 0,
                 "probe_rows": len(first), "mean_length": round(float(lengths.mean()), 1), "steps_per_epoch": self.steps_per_epoch,
                 **{k: v for k, v in counters.as_dict().items() if k != "kept"}}
        return stats


def build_streaming(args: DataArgs, tokenizer, **kw) -> StreamingPipeline:
    """The streaming variant of `build_data` (validation rows, from --val_dataset, are loaded normally)."""
    return StreamingPipeline(args, tokenizer, streaming_val_table(args), **kw)


def streaming_val_table(args: DataArgs):
    """The validation rows of a streamed run: --val_dataset, loaded (a stream has no split to carve)."""
    if args.split_dataset_ratio > 0 and not args.val_dataset:
        raise DataError("--streaming cannot carve a validation split (--split_dataset_ratio); pass --val_dataset instead")
    return load_table(args.val_dataset, args.data_seed, BadRows(args.strict)) if args.val_dataset else None
