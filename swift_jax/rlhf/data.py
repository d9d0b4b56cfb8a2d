"""Preference data: rows -> (chosen, rejected) token pairs -> fixed-shape rows that hold whole pairs.

A pair is one unit from the row to the loss, so both answers go through the model in the same forward:

    row --preference_of--> chosen / rejected conversations --ChatEncoder--> two (input_ids, labels)
        --> one pair sample (chosen tokens, then rejected tokens) --pad or pack--> rows [batch, 2 * max_length]

In a row, pair k occupies segments `2k + 1` (chosen) and `2k + 2` (rejected), with positions restarting at 0
in each, so attention never crosses them; unpacked rows hold one pair, packed rows up to `MAX_PAIRS_PER_ROW`
(grain's best-fit packer, which never splits a pair). Each answer is cut to `max_length` as in ms-swift, so a
row of `2 * max_length` tokens always fits a pair. `pair_value` carries the pair's RM margin or KTO label on its
tokens, `pair_id` the pair's row in the training table (the key of `--precompute_ref_log_probs`'s values).
KTO's second sequence is the KL estimate's mismatched example: this row's prompt with the answer of the
previous row in its group of `batch_size` rows (ms-swift's KTOPreprocessor).

The pipeline reuses `swift_jax.data`'s readers, splitting, grain stream and iterator (`PreferencePipeline` is a
`DataPipeline` whose samples are pairs), so it has the same surface: `train_iterator(num_epochs)`,
`val_batches()`, `steps_per_epoch`, `stats`.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data.args import DataArgs
from swift_jax.data.errors import BadRows, DataError, row_error
from swift_jax.data.hosts import take_share
from swift_jax.data.pipeline import PROBE_ROWS, DataPipeline, load_train_val, probe_stats
from swift_jax.data.samples import Counters, truncate
from swift_jax.data.templates import IGNORE
from swift_jax.rlhf.rows import Preference, with_last_answer, preference_of

log = logging.getLogger("swift_jax.rlhf")
MAX_PAIRS_PER_ROW = 16
ALL_ROUNDS = ("orpo",)  # ms-swift's RLHF loss_scale is last_round, but `default` (every assistant turn) for ORPO


def rlhf_data_args(args: DataArgs, rlhf_type: str) -> DataArgs:
    """`args` with ms-swift's RLHF loss_scale: `last_round` (only the final answer is trained; earlier turns are
    context) unless --loss_scale was changed from its SFT default, and `default` for ORPO."""
    if args.loss_scale == "default" and rlhf_type not in ALL_ROUNDS:
        return dataclasses.replace(args, loss_scale="last_round")
    return args
FEATURES = ("input_ids", "labels", "segment_ids", "positions", "pair_value", "pair_id")
_PAIR_FEATURES = ("input_ids", "labels", "part", "pos", "pair_value", "pair_id")  # what the packer sees


class IndexedTable:
    """A row table whose items are `(row, ref, lender, index)`: `lender` is KTOTable's (else None), `index` the
    item's position in the table (the pair's id)."""

    def __init__(self, table):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        item = tuple(self.table[int(i)])
        return (*item, None, int(i)) if len(item) == 2 else (*item, int(i))


class KTOTable:
    """A row table whose items also carry the row that lends its answer to the KL example: the previous row
    within consecutive groups of `group` rows (the first row of a group takes the group's last)."""

    def __init__(self, table, group: int):
        self.table, self.group = table, max(1, group)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        i = int(i)
        start = i - i % self.group
        size = min(self.group, len(self.table) - start)
        row, ref = self.table[i]
        return row, ref, self.table[start + (i - start - 1) % size]


class PairProcessor:
    """Maps a table item to a pair sample `{input_ids, labels, part, pos, pair_value}` `[n]`, or None when dropped."""

    def __init__(self, args: DataArgs, tokenizer, rlhf_type: str, counters: Counters | None = None):
        if args.truncation_strategy not in ("delete", "left", "right"):
            raise DataError(f"--truncation_strategy {args.truncation_strategy!r}: expected delete, left or right")
        self.args, self.rlhf_type = args, rlhf_type
        self.encoder = args.chat_encoder(tokenizer)
        self.counters = counters or Counters()
        self.bad = BadRows(args.strict)

    def _preference(self, item) -> tuple[Preference, dict]:
        """The row's preference and its second conversation (KTO: the KL example, this row's prompt with the
        lender row's answer); a DataError names the file and line of the row at fault."""
        row, ref = item[0], item[1]
        try:
            pref = preference_of(row, self.rlhf_type, self.args.columns)
        except DataError as e:
            raise row_error(ref, str(e)) from None
        if pref.rejected is not None:
            return pref, pref.rejected
        lender, lender_ref = item[2]
        try:
            answer = preference_of(lender, "kto", self.args.columns).chosen["messages"][-1]["content"]
        except DataError as e:
            raise row_error(lender_ref, str(e)) from None
        return pref, with_last_answer(pref.chosen, answer, "messages")

    def _encode(self, sample: dict) -> tuple[np.ndarray, np.ndarray] | None:
        encoded = self.encoder.encode(sample)
        cut = truncate(encoded.input_ids, encoded.labels, self.args.max_length, self.args.truncation_strategy)
        if cut is None:
            return None
        ids, labels, _ = cut  # per-token loss_scale weights do not enter sequence log-probs
        labels = labels.copy()
        labels[0] = IGNORE
        return ids, labels

    def samples_of(self, item) -> list[dict[str, np.ndarray]]:
        """The pair sample of one item as a list (empty when the pair is dropped): the form `DataPipeline.samples`
        flattens."""
        sample = self(item)
        return [] if sample is None else [sample]

    def __call__(self, item) -> dict[str, np.ndarray] | None:
        """`item`: (row, ref, KTO lender (row, ref) or None[, pair id])."""
        try:
            pref, second = self._preference(item)
            try:
                pair = [self._encode(pref.chosen), self._encode(second)]
            except DataError as e:
                raise row_error(item[1], str(e)) from None
        except DataError as e:
            self.bad.handle(e)
            self.counters.add("bad_rows_skipped")
            return None
        if any(p is None for p in pair):
            self.counters.add("dropped_too_long")
            return None
        if not all((labels != IGNORE).any() for _, labels in pair):
            self.counters.add("dropped_no_target")
            return None
        self.counters.add("kept")
        (ci, cl), (ri, rl) = pair
        value = float(pref.label) if self.rlhf_type == "kto" else pref.margin
        return {
            "input_ids": np.concatenate([ci, ri]).astype(np.int32),
            "labels": np.concatenate([cl, rl]).astype(np.int32),
            "part": np.repeat(np.asarray([0, 1], np.int32), [len(ci), len(ri)]),
            "pos": np.concatenate([np.arange(len(ci)), np.arange(len(ri))]).astype(np.int32),
            "pair_value": np.full(len(ci) + len(ri), value, np.float32),
            "pair_id": np.full(len(ci) + len(ri), item[3] if len(item) > 3 else 0, np.int32),
        }


def pad_pair(sample: dict[str, np.ndarray] | None, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One pair right-padded to a row of `length` (segments 1 and 2); None gives a row of padding only."""
    row = {
        "input_ids": np.full(length, pad_id, np.int32),
        "labels": np.full(length, IGNORE, np.int32),
        "segment_ids": np.zeros(length, np.int32),
        "positions": np.zeros(length, np.int32),
        "pair_value": np.zeros(length, np.float32),
        "pair_id": np.zeros(length, np.int32),
    }
    if sample is not None:
        n = len(sample["input_ids"])
        for key in ("input_ids", "labels", "pair_value", "pair_id"):
            if key in sample:
                row[key][:n] = sample[key]
        row["segment_ids"][:n] = 1 + sample["part"]
        row["positions"][:n] = sample["pos"]
    return row


def _from_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed row (one segment per pair) -> our features (two segments per pair)."""
    pair = row["input_ids_segment_ids"].astype(np.int32)  # 1..k, 0 = padding
    return {
        "input_ids": row["input_ids"].astype(np.int32),
        "labels": row["labels"].astype(np.int32),
        "segment_ids": np.where(pair > 0, 2 * pair - 1 + row["part"], 0).astype(np.int32),
        "positions": np.where(pair > 0, row["pos"], 0).astype(np.int32),
        "pair_value": row["pair_value"].astype(np.float32),
        "pair_id": row["pair_id"].astype(np.int32),
    }


def pack_pairs(samples: grain.IterDataset, length: int, pad_id: int, num_bins: int, seed: int,
               shuffle: bool) -> grain.IterDataset:
    """Best-fit packing of whole pairs into rows of `length` (at most MAX_PAIRS_PER_ROW each)."""
    packed = grain_exp.BestFitPackIterDataset(
        samples,
        length_struct={k: length for k in _PAIR_FEATURES},
        num_packing_bins=num_bins,
        seed=seed,
        shuffle_bins=shuffle,
        padding_struct={"input_ids": pad_id, "labels": IGNORE, "part": 0, "pos": 0, "pair_value": 0.0, "pair_id": 0},
        max_sequences_per_bin=MAX_PAIRS_PER_ROW,
    )
    return packed.map(_from_packed)


class PreferencePipeline(DataPipeline):
    """A `DataPipeline` whose samples are preference pairs; `batch_size` counts rows (= pairs unpacked)."""

    streaming = False

    def __init__(self, args: DataArgs, tokenizer, rlhf_type: str, train, val, *, batch_size: int, eval_batch_size: int,
                 seed: int, shuffle: bool, process_index: int, process_count: int):
        self.args, self.rlhf_type = args, rlhf_type
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.shuffle = shuffle and args.dataset_shuffle
        self.process_index, self.process_count = process_index, process_count
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.row_length = 2 * args.max_length
        self.pairs_per_row = MAX_PAIRS_PER_ROW if args.packing else 1
        if rlhf_type == "kto":
            train = KTOTable(train, batch_size * process_count)
            val = KTOTable(val, batch_size * process_count) if val is not None else None
        self.train_table = IndexedTable(train)
        self.val_table = IndexedTable(val) if val is not None else None
        self.tokenizer = tokenizer
        self.counters = Counters()
        self.process = PairProcessor(args, tokenizer, rlhf_type, self.counters)
        self._val_batches = None
        self.stats = self._probe(tokenizer)

    def rows(self, num_epochs: int | None = None) -> grain.IterDataset:
        """Rows of `2 * max_length` tokens holding whole pairs (packed or one per row)."""
        if self.args.packing:  # the whole stream, on every process (`DataPipeline.share`)
            bins = max(self.args.packing_num_bins, self.global_batch_size)
            return pack_pairs(self.samples(num_epochs), self.row_length, self.pad_id, bins, self.seed, self.shuffle)
        return self.samples(num_epochs).map(lambda s: pad_pair(s, self.row_length, self.pad_id))

    def share_of_rows(self, num_epochs: int | None = 1) -> grain.IterDataset:
        """This process's share of the training rows (packed rows, made from the whole stream, split among the
        processes), for a pass that needs every row once on some process (the reference precompute)."""
        rows = self.rows(num_epochs)
        return take_share(rows, self.process_index, self.process_count) if self.args.packing else rows

    def train_dataset(self, num_epochs: int | None = None) -> grain.IterDataset:
        """Batches `[batch_size, 2 * max_length]` (one width for the whole run), prefetched in a background thread."""
        if self.args.packing:  # global batches of packed rows, this process's rows of each
            batched = self.host_batches(self.rows(num_epochs).batch(self.global_batch_size, drop_remainder=True))
        else:
            batched = self.rows(num_epochs).batch(self.batch_size, drop_remainder=True)
        return grain_exp.ThreadPrefetchIterDataset(batched, prefetch_buffer_size=4)

    def set_val_batches(self, batches: list[dict[str, np.ndarray]]) -> None:
        """Replace the validation batches (e.g. with precomputed reference values attached)."""
        self._val_batches = batches

    def _build_val(self) -> list[dict[str, np.ndarray]]:
        if self.val_table is None:
            return []
        n = len(self.val_table)
        per_process = -(-n // self.process_count)
        process = PairProcessor(self.args, self.tokenizer, self.rlhf_type, Counters())
        samples = [process(self.val_table[i]) for i in range(self.process_index, n, self.process_count)]
        samples += [None] * (per_process - len(samples))
        samples += [None] * (-len(samples) % self.eval_batch_size)
        rows = [pad_pair(s, self.row_length, self.pad_id) for s in samples]
        return [{k: np.stack([r[k] for r in rows[b : b + self.eval_batch_size]]) for k in FEATURES}
                for b in range(0, len(rows), self.eval_batch_size)]

    def _probe(self, tokenizer) -> dict:
        """Encode (up to PROBE_ROWS) training pairs for drop counts, lengths and steps per epoch."""
        n = len(self.train_table)
        exact = n <= PROBE_ROWS
        picks = np.arange(n) if exact else np.sort(np.random.default_rng(self.seed).choice(n, PROBE_ROWS, replace=False))
        counters = Counters()
        process = PairProcessor(self.args, tokenizer, self.rlhf_type, counters)
        samples = [s for s in (process(self.train_table[int(i)]) for i in picks) if s is not None]
        if not samples:
            raise DataError(f"no usable preference pair in {len(picks)} rows probed: {counters.as_dict()}; check "
                            f"--max_length ({self.args.max_length}) and that rows have what --rlhf_type {self.rlhf_type} needs")
        counts, scale = counters.as_dict(), n / len(picks)
        lengths = np.asarray([len(s["input_ids"]) for s in samples])
        if self.args.packing:
            probe = grain.MapDataset.source(samples).to_iter_dataset()
            bins = max(self.args.packing_num_bins, self.global_batch_size)
            packed = list(pack_pairs(probe, self.row_length, self.pad_id, bins, self.seed, False))
            rows_per_epoch = len(packed) * scale / self.process_count
            efficiency = float(sum((r["segment_ids"] > 0).sum() for r in packed) / (len(packed) * self.row_length))
        else:
            rows_per_epoch = counts["kept"] * scale / self.process_count
            efficiency = float(lengths.sum() / (len(lengths) * self.row_length))
        self.steps_per_epoch = max(1, int(rows_per_epoch // self.batch_size))
        stats = probe_stats(counts, scale, lengths, rows=n, val_rows=len(self.val_table) if self.val_table is not None else 0,
                            efficiency=efficiency, exact=exact, unit="pairs")
        stats["steps_per_epoch"] = self.steps_per_epoch
        log.info("preference data: %s", stats)
        return stats


def build_preference_data(args: DataArgs, tokenizer, rlhf_type: str, *, batch_size: int, eval_batch_size: int | None = None,
                          batches_per_step: int = 1, seed: int = 42, shuffle: bool = True, process_index: int = 0,
                          process_count: int = 1) -> PreferencePipeline:
    """Load and split `args`' datasets as preference pairs for `rlhf_type` (see the module docstring); batches
    hold `batch_size` rows (validation: `eval_batch_size`, default the same); every batch has the same shape, so
    any `batches_per_step` of them stack. The RLHF loss_scale applies (`rlhf_data_args`)."""
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if rlhf_type == "kto" and batch_size * process_count <= 1:
        raise DataError("KTO needs a batch of at least 2 rows: its KL example borrows another row's answer "
                        "(raise --per_device_train_batch_size)")
    args = rlhf_data_args(args, rlhf_type)
    kw = dict(batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size, seed=seed, shuffle=shuffle,
              process_index=process_index, process_count=process_count)
    if args.streaming:
        from swift_jax.data.streaming import streaming_val_table
        from swift_jax.rlhf.streaming import StreamingPreferencePipeline

        return StreamingPreferencePipeline(args, tokenizer, rlhf_type, streaming_val_table(args), **kw)
    bad = BadRows(args.strict)
    train, val = load_train_val(args, bad)
    pipe = PreferencePipeline(args, tokenizer, rlhf_type, train, val, **kw)
    pipe.stats["bad_rows_skipped"] += bad.count
    return pipe
