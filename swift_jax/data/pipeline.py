"""build_data: rows -> grain pipeline of fixed-shape batches, plus validation batches and statistics.

    rows (mixed, #N-sampled) --shuffle(seed, new order each epoch)--> repeat --[process::count]-->
    map(SampleProcessor, lazily in `dataset_num_proc` threads) --pad or pack--> batch --thread prefetch

Packed runs skip the `[process::count]` split: every process packs the whole stream into global batches and
keeps its rows of each (`data.hosts`), so a step's rows do not depend on the number of processes.

Tokenisation is lazy, so a million-row dataset starts in seconds; the statistics reported at start-up
(kept/dropped rows, lengths, packing efficiency, steps per epoch) come from a probe of up to
`PROBE_ROWS` rows, and are exact when the probe covers the whole training set (`stats["exact"]`).
"""

from __future__ import annotations

import atexit
import logging
import math
import weakref

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data import batching
from swift_jax.data.args import DataArgs
from swift_jax.data.errors import BadRows, DataError
from swift_jax.data.hosts import host_rows
from swift_jax.data.samples import Counters, FlattenSamples, SampleProcessor
from swift_jax.data.resolve import LoadOptions
from swift_jax.data.sources import RowTable, load_table, load_tables

log = logging.getLogger("swift_jax.data")
PROBE_ROWS = 1000


def load_train_val(args: DataArgs, bad: BadRows) -> tuple[RowTable, RowTable | None]:
    """The training and validation rows of `args`: --cached_dataset's rows, then --dataset's (`#N`-sampled,
    concatenated or mixed by --interleave_prob, less each entry's --split_dataset_ratio share as ms-swift carves it,
    unless --val_dataset is given); validation: --cached_val_dataset's, then --val_dataset's (sampled by
    --val_dataset_shuffle's rule) or the split (`data.cached`)."""
    from swift_jax.data.cached import load_cached_table

    if (args.cached_dataset or args.cached_val_dataset) and args.streaming:
        raise DataError("--cached_dataset / --cached_val_dataset cannot be streamed (as in ms-swift); drop --streaming")
    train = val = None
    if args.dataset and args.val_dataset:
        train = load_table(args.dataset, args.data_seed, bad, LoadOptions.of(args))
    elif args.dataset:
        train, val = load_tables(args.dataset, args.data_seed, bad, LoadOptions.of(args), args.split_dataset_ratio)
    if args.val_dataset:
        val = load_table(args.val_dataset, args.data_seed, bad, LoadOptions.of(args, shuffle=args.val_dataset_shuffle, mix=False))
    cached = load_cached_table(args.cached_dataset, args.data_seed)
    cached_val = load_cached_table(args.cached_val_dataset, args.data_seed, "--cached_val_dataset")
    train, val = _joined(cached, train), _joined(cached_val, val)
    if train is None:
        raise DataError("no dataset given; pass --dataset PATH (a .jsonl/.json/.csv/.parquet file, a folder or a hub "
                        "id) or --cached_dataset DIR")
    return train, val


def _joined(*tables: RowTable | None) -> RowTable | None:
    given = [t for t in tables if t is not None]
    return RowTable.join(given) if given else None


def probe_stats(counts: dict[str, int], scale: float, lengths: np.ndarray, *, rows: int, val_rows: int,
                efficiency: float, exact: bool, unit: str = "samples") -> dict:
    """The start-up statistics of a probe, counts scaled by `scale` to the whole training set of `rows` rows:
    kept `unit`s (samples, or preference pairs), drops, lengths (`[kept]` tokens) and packing efficiency."""
    return {
        f"num_train_{unit}": int(round(counts["kept"] * scale)),
        f"num_val_{unit}": val_rows,
        "num_train_rows": rows,
        "dropped_too_long": int(round(counts["dropped_too_long"] * scale)),
        "dropped_no_target": int(round(counts["dropped_no_target"] * scale)),
        "bad_rows_skipped": int(round(counts["bad_rows_skipped"] * scale)),
        "packing_efficiency": round(efficiency, 4),
        "mean_length": round(float(lengths.mean()), 1),
        "max_length_seen": int(lengths.max()),
        "tokens_per_epoch": int(round(lengths.sum() * scale)),
        "exact": exact,
    }


class DataPipeline:
    """The training stream and validation batches of one run; see `build_data`."""

    def __init__(self, args: DataArgs, tokenizer, train: RowTable, val: RowTable | None, *, batch_size: int, seed: int,
                 shuffle: bool, process_index: int, process_count: int, batches_per_step: int = 1,
                 eval_batch_size: int | None = None, vision=None):
        if vision is not None and args.padding_side != "right":
            raise DataError(f"--padding_side {args.padding_side}: vision-language batches are padded on the right only")
        self.args = args
        self.vision = vision
        """`data.vision.VisionData` of a vision-language model: rows carry patches or tiles
        (`data.vision_batching`, `data.tile_batching`)."""
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.batches_per_step = max(1, batches_per_step)
        self.seed = seed
        self.shuffle = shuffle and args.dataset_shuffle
        self.process_index, self.process_count = process_index, process_count
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.train_table, self.val_table = train, val
        self.counters = Counters()
        self.process = SampleProcessor(args, tokenizer, self.counters, vision)
        self.weighted = self.process.weighted
        """Batches carry a float32 `loss_scale` [rows, seq] (the loss_scale strategy weighs tokens)."""
        self.features = (vision.batching[0].features if vision else batching.features)(self.weighted)
        self._val_batches: list[dict[str, np.ndarray]] | None = None
        self.stats = self._probe(tokenizer)

    # -- the training stream -------------------------------------------------------------------------
    @property
    def share(self) -> tuple[int, int]:
        """(index, count) of the split of the samples among processes: (0, 1) when packing, where every process
        packs the whole stream and keeps its rows of each global batch (`data.hosts`)."""
        return (0, 1) if self.args.packing else (self.process_index, self.process_count)

    @property
    def global_batch_size(self) -> int:
        """Rows of one batch over all processes."""
        return self.batch_size * self.process_count

    def host_batches(self, global_batches: grain.IterDataset) -> grain.IterDataset:
        """Global batches of whole-stream rows -> this process's batches (`data.hosts.host_rows`)."""
        return host_rows(global_batches, self.batch_size, self.process_index, self.process_count)

    def samples(self, num_epochs: int | None = None) -> grain.IterDataset:
        """This process's share (`share`) of the tokenised training samples (unpadded), lazily, epoch after epoch."""
        ds = grain.MapDataset.source(self.train_table)
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed)
        index, count = self.share
        ds = ds.repeat(num_epochs)[index::count]
        ds = ds.map(self.process.samples_of)
        threads = max(1, self.args.dataset_num_proc)
        out = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(64, 16 * threads)))
        return grain_exp.FlatMapIterDataset(out, FlattenSamples())

    @property
    def bucketed(self) -> bool:
        """Unpacked batches are padded to their own length bucket (single host; several hosts must agree on one
        width per step, so they pad to max_length)."""
        return not self.args.packing and self.process_count == 1

    def train_dataset(self, num_epochs: int | None = None) -> grain.IterDataset:
        """Batches of `batch_size` rows, prefetched in a background thread: packed `[batch_size, max_length]`,
        else padded to the batch's length bucket (a multiple of 128, at most max_length; the
        `batches_per_step` batches of one step share it)."""
        args = self.args
        if self.vision is not None:
            return grain_exp.ThreadPrefetchIterDataset(self._vision_batches(num_epochs), prefetch_buffer_size=4)
        if args.packing:
            bins = max(args.packing_num_bins, self.global_batch_size)
            rows = batching.pack(self.samples(num_epochs), args.row_length(), self.pad_id, bins, self.seed, self.shuffle, self.weighted)
            batched = self.host_batches(rows.batch(self.global_batch_size, drop_remainder=True))
        else:
            multiple = batching.PAD_MULTIPLE if self.bucketed else args.max_length
            batched = batching.padded_batches(self.samples(num_epochs), self.batch_size, args.max_length, self.pad_id,
                                              self.batches_per_step, multiple, args.padding_side)
        return grain_exp.ThreadPrefetchIterDataset(batched, prefetch_buffer_size=4)

    def _vision_batches(self, num_epochs: int | None, samples=None) -> grain.IterDataset:
        """Multimodal training batches (`data.vision_batching` / `data.tile_batching`, `VisionData.batching`)."""
        args, (module, unit) = self.args, self.vision.batching  # unit: merge unit / tile_batching.Tile
        samples = self.samples(num_epochs) if samples is None else samples
        if args.packing:  # global batches (one patch / tile bucket for every process), this process's rows
            return self.host_batches(module.packed_batches(
                samples, self.global_batch_size, args.row_length(), self.pad_id, unit,
                max(args.packing_num_bins, self.global_batch_size), self.seed, self.shuffle, self.weighted,
                self.batches_per_step))
        multiple = batching.PAD_MULTIPLE if self.bucketed else args.max_length
        return module.padded_batches(samples, self.batch_size, args.max_length, self.pad_id, unit,
                                              self.batches_per_step, multiple)

    def train_iterator(self, num_epochs: int | None = None) -> grain.DatasetIterator:
        """A checkpointable iterator over training batches: `get_state()` / `set_state(state)` resume the
        exact stream. `num_epochs=None` repeats forever (each epoch in a new order)."""
        iterator = iter(self.train_dataset(num_epochs))
        _close_at_exit(iterator)
        return iterator

    # -- validation -----------------------------------------------------------------------------------
    def val_batches(self) -> list[dict[str, np.ndarray]]:
        """Validation batches of the same shape as training batches (one sample per row, not packed).

        Every process gets the same number of batches (rows dropped or missing become padding rows, whose
        labels are all ignored), so multi-host evaluation stays in step."""
        if self._val_batches is None:
            self._val_batches = self._build_val()
        return self._val_batches

    def split_val_rows(self) -> list[dict]:
        """The validation rows carved from --dataset by --split_dataset_ratio (ms-swift writes them to the run
        folder's val_dataset.jsonl); empty when the validation set came from --val_dataset."""
        if self.val_table is None or self.args.val_dataset or self.args.split_dataset_ratio <= 0:
            return []
        return [self.val_table[i][0] for i in range(len(self.val_table))]

    def _build_val(self) -> list[dict[str, np.ndarray]]:
        if self.val_table is None:
            return []
        args, n = self.args, len(self.val_table)
        order = np.random.default_rng(self.seed).permutation(n) if args.val_dataset_shuffle else np.arange(n)
        process = SampleProcessor(args, self.process.encoder.tokenizer, Counters(), self.vision)
        if args.truncation_strategy == "split":  # every process splits every row, then takes its share of pieces
            pieces = [s for i in order for s in process.samples_of(self.val_table[int(i)])]
            per_process, mine = math.ceil(len(pieces) / self.process_count), pieces[self.process_index :: self.process_count]
        else:
            per_process, mine = math.ceil(n / self.process_count), order[self.process_index :: self.process_count]
        empty = {"input_ids": np.zeros(0, np.int32), "labels": np.zeros(0, np.int32)}
        if self.weighted:
            empty["loss_scale"] = np.zeros(0, np.float32)
        if self.vision is not None:
            module, unit = self.vision.batching
            empty = self.vision.empty_sample(self.weighted)
        size = self.eval_batch_size
        samples = [(i if isinstance(i, dict) else process(self.val_table[int(i)])) or empty for i in mine]
        samples += [empty] * (per_process - len(samples))
        samples += [empty] * (-len(samples) % size)
        batches = []
        for b in range(0, len(samples), size):
            part = samples[b : b + size]
            longest = max(len(s["input_ids"]) for s in part)
            width = batching.bucket_length(longest, args.max_length) if self.bucketed else args.max_length
            if self.vision is not None:
                batches.append(module.pad_group(part, width, self.pad_id, unit))
                continue
            batches.append(batching.stack_rows([batching.pad_sample(s, width, self.pad_id, args.padding_side) for s in part]))
        return batches

    # -- statistics -----------------------------------------------------------------------------------
    def _probe(self, tokenizer) -> dict:
        """Encode (up to PROBE_ROWS) training rows to measure drops, lengths, packing and steps per epoch."""
        n = len(self.train_table)
        exact = n <= PROBE_ROWS
        picks = np.arange(n) if exact else np.sort(np.random.default_rng(self.seed).choice(n, PROBE_ROWS, replace=False))
        counters = Counters()
        process = SampleProcessor(self.args, tokenizer, counters, self.vision)
        samples = [s for i in picks for s in process.samples_of(self.train_table[int(i)])]
        if not samples:
            raise DataError(
                f"no usable training sample in {len(picks)} rows probed: {counters.as_dict()}; check --max_length "
                f"({self.args.max_length}), --truncation_strategy, and that rows have assistant turns"
            )
        counts = counters.as_dict()
        scale = n / len(picks)
        lengths = np.asarray([len(s["input_ids"]) for s in samples])
        kept_rows = counts["kept"] * scale / self.process_count
        if self.args.packing:
            probe_ds = grain.MapDataset.source(samples).to_iter_dataset()
            bins = max(self.args.packing_num_bins, self.global_batch_size)
            if self.vision is not None:
                module, unit = self.vision.batching
                packed = [{"segment_ids": r} for b in module.packed_batches(
                    probe_ds, 1, self.args.row_length(), self.pad_id, unit, bins, self.seed, False,
                    self.weighted) for r in b["segment_ids"]]
            else:
                packed = list(batching.pack(probe_ds, self.args.row_length(), self.pad_id, bins, self.seed, False, self.weighted))
            efficiency = batching.packing_efficiency(packed)
            rows_per_epoch = len(packed) * scale / self.process_count
        else:  # slots as the batches will have them: each batch padded to its bucket (in the probe's order)
            group = self.batch_size * self.batches_per_step
            slots = 0
            for i in range(0, len(lengths), group):
                part = lengths[i : i + group]
                width = batching.bucket_length(int(part.max()), self.args.max_length) if self.bucketed else self.args.max_length
                slots += width * len(part)
            efficiency = float(lengths.sum() / max(slots, 1))
            rows_per_epoch = kept_rows
        stats = probe_stats(counts, scale, lengths, rows=n, val_rows=len(self.val_table) if self.val_table is not None else 0,
                            efficiency=efficiency, exact=exact)
        self.steps_per_epoch = max(1, int(rows_per_epoch // self.batch_size))
        stats["steps_per_epoch"] = self.steps_per_epoch
        log.info("data: %s", stats)
        return stats

    def length_histogram(self, bins: int = 10) -> list[tuple[int, int, int]]:
        """(lowest, highest, count) of probed sample lengths, for `swift_jax.data.inspect`."""
        process = SampleProcessor(self.args, self.process.encoder.tokenizer, Counters(), self.vision)
        n = min(len(self.train_table), PROBE_ROWS)
        lengths = [len(s["input_ids"]) for i in range(n) for s in process.samples_of(self.train_table[i])]
        edges = np.unique(np.linspace(min(lengths), max(lengths) + 1, bins + 1).astype(int))  # whole tokens
        counts, edges = np.histogram(lengths, bins=edges)
        return [(int(edges[i]), int(edges[i + 1]) - 1, int(c)) for i, c in enumerate(counts)]


def _close_at_exit(iterator) -> None:
    """Stop the prefetch thread at interpreter exit; grain's finaliser would call close() again after
    module teardown and print a spurious traceback, so the closed iterator's close becomes a no-op."""
    ref = weakref.ref(iterator)

    def close():
        it = ref()
        if it is not None:
            it.close()
            it.close = lambda: None

    atexit.register(close)


def build_data(args: DataArgs, tokenizer, *, batch_size: int, seed: int = 42, shuffle: bool = True,
               process_index: int = 0, process_count: int = 1, batches_per_step: int = 1,
               eval_batch_size: int | None = None, vision=None) -> DataPipeline:
    """Load, split and prepare the datasets of `args` for training with `tokenizer`.

    `batch_size` is this process's batch (rows per host batch; `eval_batch_size` for validation batches, default
    the same); `batches_per_step` how many consecutive batches one optimizer step accumulates (they get one
    padded width, so they stack); `seed` drives the training order and the packer (`args.data_seed` drives #N
    sampling and the validation split, as in ms-swift). Bad rows raise a DataError naming file and line unless
    `args.strict` is false. `vision` (a `data.vision.VisionData`) makes the rows' images and videos part of the
    samples (a vision-language model)."""
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if args.max_length <= 1:
        raise DataError(f"--max_length must be at least 2, got {args.max_length}")
    if args.streaming:
        if vision is not None:
            raise DataError("--streaming does not read images yet; drop --streaming for a vision-language model")
        from swift_jax.data.streaming import build_streaming

        return build_streaming(args, tokenizer, batch_size=batch_size, seed=seed, shuffle=shuffle,
                               process_index=process_index, process_count=process_count, batches_per_step=batches_per_step,
                               eval_batch_size=eval_batch_size)
    bad = BadRows(args.strict)
    train, val = load_train_val(args, bad)
    pipe = DataPipeline(args, tokenizer, train, val, batch_size=batch_size, seed=seed, shuffle=shuffle,
                        process_index=process_index, process_count=process_count, batches_per_step=batches_per_step,
                        eval_batch_size=eval_batch_size, vision=vision)
    pipe.stats["bad_rows_skipped"] += bad.count  # unreadable lines skipped while loading
    return pipe
