"""--streaming true: read datasets too large for memory row by row, shuffled within a window.

Rows come from each `--dataset` in turn, or mixed by `--interleave_prob` (local JSON lines read line by line;
other files and hub ids through `datasets` streaming), and a grain window shuffle (`--shuffle_buffer_size`) mixes
them. Every process reads the whole stream and shuffles it alike, then keeps every `process_count`-th row
(unpacked) or packs it all and keeps its rows of each global batch (`data.hosts`), so a step's rows do not depend
on the number of processes. The iterator state is (epoch, dataset, rows read), so a
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
from swift_jax.data.samples import Counters, FlattenSamples, SampleProcessor
from swift_jax.data.resolve import DatasetPlan, LoadOptions, resolve
from swift_jax.data.sources import BUILDERS, list_files, preprocessed


def _json_lines(path: str, bad: BadRows) -> Iterator[tuple[dict, RowRef]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                yield json.loads(text), RowRef(path, n - 1, n)
            except json.JSONDecodeError as e:
                bad.handle(DataError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"))


def stream_rows(plan: DatasetPlan, bad: BadRows) -> Iterator[tuple[dict, RowRef]]:
    """(row, RowRef) of one resolved dataset (files, folder or hub subsets), read lazily and preprocessed."""
    import datasets

    from swift_jax.data.hub_datasets import open_split

    for subset in plan.subsets:
        if plan.hub_layout:
            for split in subset.split:
                name = f"{plan.location}:{subset.name}/{split}"
                stream = open_split(plan, subset, split, streaming=True)
                yield from ((preprocessed(subset.preprocess, row), RowRef(name, i)) for i, row in enumerate(stream))
            continue
        for file in list_files(plan.location):
            suffix = os.path.splitext(file)[1].lower()
            if suffix == ".jsonl":
                rows = _json_lines(file, bad)
            else:
                stream = datasets.load_dataset(BUILDERS[suffix], data_files=file, split="train", streaming=True)
                rows = ((row, RowRef(file, i)) for i, row in enumerate(stream))
            yield from ((preprocessed(subset.preprocess, row), ref) for row, ref in rows)


def stream_plans(args: DataArgs) -> list[DatasetPlan]:
    """The resolved --dataset entries of a streamed run."""
    plans = [resolve(s, LoadOptions.of(args)) for s in args.dataset]
    if not plans:
        raise DataError("no dataset given; pass --dataset PATH")
    return plans


def stream_mix(args: DataArgs) -> tuple[tuple[float, ...], int, str] | None:
    """(probabilities, seed, stopping strategy) of --interleave_prob for a stream, the seed drawn as ms-swift's
    load_dataset draws it (one per dataset, then the mixing one); None: the datasets are read in turn."""
    if args.interleave_prob is None:
        return None
    if len(args.interleave_prob) != len(args.dataset):
        raise DataError(f"--interleave_prob has {len(args.interleave_prob)} values for {len(args.dataset)} datasets; give one per --dataset")
    rng = np.random.RandomState(args.data_seed)
    for _ in args.dataset:
        rng.randint(0, np.iinfo(np.int32).max)
    return tuple(args.interleave_prob), int(rng.randint(0, np.iinfo(np.int32).max)), args.stopping_strategy


def interleave_streams(plans: list[DatasetPlan], strict: bool, mix: tuple[tuple[float, ...], int, str]) -> Iterator[tuple[dict, RowRef]]:
    """Rows of several streams mixed as `datasets.interleave_datasets` mixes iterable datasets: each next row from
    stream i with probability p_i; first_exhausted ends once the first stream has given its last row,
    all_exhausted restarts the ones that ran out until each has been read through."""
    probabilities, seed, strategy = mix
    sources = [_rows(plan, strict) for plan in plans]
    nexts = [next(source, None) for source in sources]  # one row ahead: a stream is exhausted once its last is read
    for plan, row in zip(plans, nexts):
        if row is None:
            raise DataError(f"{plan.spec}: the dataset is empty (no rows)")
    done = np.all if strategy == "all_exhausted" else np.any
    exhausted = np.zeros(len(plans), bool)
    rng = np.random.default_rng(seed)
    while True:
        for i in (int(i) for i in rng.choice(len(plans), size=1000, p=probabilities)):
            if done(exhausted):
                return
            row, nexts[i] = nexts[i], next(sources[i], None)
            if nexts[i] is None:
                exhausted[i] = True
                sources[i] = _rows(plans[i], strict)
                nexts[i] = next(sources[i], None)
            yield row


def _rows(plan: DatasetPlan, strict: bool) -> Iterator[tuple[dict, RowRef]]:
    """One pass over a streamed dataset: its rows, or N of them for `#N` (the dataset repeated past its size)."""
    if plan.spec.num_samples is None:
        return stream_rows(plan, BadRows(strict))
    return itertools.islice(_cycle(plan, strict), plan.spec.num_samples)


def _cycle(plan: DatasetPlan, strict: bool) -> Iterator[tuple[dict, RowRef]]:
    """The rows of `plan` over and over (a streamed `path#N` larger than the dataset repeats it, as the
    in-memory `#N` takes every row once per full pass)."""
    while True:
        empty = True
        for item in stream_rows(plan, BadRows(strict)):
            empty = False
            yield item
        if empty:
            raise DataError(f"{plan.spec}: the dataset is empty (no rows)")


class _StreamIterator(grain.DatasetIterator):
    """Checkpointable iterator over the rows of several datasets, read in turn or mixed by `mix`
    (`stream_mix`; the mixed stream counts as one dataset); state = (epoch, dataset, rows read)."""

    def __init__(self, specs: list[DatasetPlan], strict: bool, num_epochs: int | None,
                 mix: tuple[tuple[float, ...], int, str] | None = None):
        super().__init__()
        self.specs, self.strict, self.num_epochs, self.mix = specs, strict, num_epochs, mix
        self.set_state({"epoch": 0, "dataset": 0, "rows": 0})

    def _open(self) -> None:
        if self.mix is not None:
            self._rows = itertools.islice(interleave_streams(self.specs, self.strict, self.mix), self._read, None)
            return
        self._rows = itertools.islice(_rows(self.specs[self._dataset], self.strict), self._read, None)

    def __next__(self) -> tuple[dict, RowRef]:
        while True:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                raise StopIteration
            try:
                row = next(self._rows)
            except StopIteration:
                self._dataset, self._read = self._dataset + 1, 0
                if self._dataset == len(self.specs) or self.mix is not None:
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


def estimated_rows(specs: list[DatasetPlan], first: list[tuple[dict, RowRef]]) -> float:
    """Rows per epoch of a stream: N for each `path#N`, else its file sizes over the bytes per row of the probed
    `first` rows (0 for hub streams)."""
    row_bytes = np.mean([len(json.dumps(row)) for row, _ in first])
    rows = 0.0
    for plan in specs:
        if plan.spec.num_samples is not None:
            rows += plan.spec.num_samples
        elif plan.source in ("path", "bundled"):
            rows += sum(os.path.getsize(f) for f in list_files(plan.location)) / row_bytes
    return rows


def ordered_stream(specs: list[DatasetPlan], args: DataArgs, seed: int, shuffle: bool, num_epochs: int | None,
                   mix: tuple[tuple[float, ...], int, str] | None = None) -> grain.IterDataset:
    """The (row, RowRef) items of `specs` in the run's order, the same on every process: read in turn (or mixed
    by `mix`, `stream_mix`), then window-shuffled (`--shuffle_buffer_size`) when `shuffle`."""
    ds = _StreamDataset(specs, args.strict, num_epochs, mix)
    if shuffle:
        ds = grain_exp.WindowShuffleIterDataset(ds, window_size=max(1, args.shuffle_buffer_size), seed=seed)
    return ds


class StreamingPipeline(DataPipeline):
    """A DataPipeline whose training rows are streamed instead of loaded."""

    def __init__(self, args: DataArgs, tokenizer, val, **kw):
        self.specs, self.mix = stream_plans(args), stream_mix(args)
        super().__init__(args, tokenizer, None, val, **kw)

    def samples(self, num_epochs: int | None = None) -> grain.IterDataset:
        rows = ordered_stream(self.specs, self.args, self.seed, self.shuffle, num_epochs, self.mix)
        return grain_exp.FlatMapIterDataset(take_share(rows, *self.share).map(self.process.samples_of), FlattenSamples())

    def _probe(self, tokenizer) -> dict:
        """Statistics from the first rows of the stream; steps per epoch from bytes per row and file sizes."""
        counters = Counters()
        process = SampleProcessor(self.args, tokenizer, counters)
        first = list(itertools.islice(iter(_StreamDataset(self.specs, self.args.strict, 1, self.mix)), PROBE_ROWS))
        if not first:
            raise DataError(f"{self.args.dataset}: the dataset is empty (no rows)")
        samples = [s for item in first for s in process.samples_of(item)]
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
    options = LoadOptions.of(args, shuffle=args.val_dataset_shuffle, mix=False)
    return load_table(args.val_dataset, args.data_seed, BadRows(args.strict), options) if args.val_dataset else None
