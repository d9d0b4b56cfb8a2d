"""Read dataset rows: local files and folders (via `datasets`), hub datasets (`hub_datasets`), `#N` sampling,
and mixing (`--interleave_prob`, `--stopping_strategy`), for the plans of `resolve`.

Rows stay where `datasets` put them (Arrow, memory-mapped), so a million-row file costs little memory;
every row keeps a reference to its file and line for error messages. A JSON-lines file that Arrow cannot
read (a malformed line, a column whose type changes between rows) is re-read line by line, which names
the bad line, or skips it under `--strict false`.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from swift_jax.data.errors import DROPPED, BadRows, DataError, RowRef
from swift_jax.data.resolve import DatasetPlan, LoadOptions, resolve

# file suffix -> `datasets` builder
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def list_files(path: str) -> list[str]:
    """The data files of a file or folder (recursively, sorted); raises if a folder holds none."""
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() not in BUILDERS:
            raise DataError(f"{path}: unsupported file type; expected one of {sorted(BUILDERS)}")
        return [path]
    files = sorted(
        f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if os.path.splitext(f)[1].lower() in BUILDERS
    )
    if not files:
        raise DataError(f"{path}: folder holds no data files; expected files ending in {sorted(BUILDERS)}")
    return files


def preprocessed(preprocess: Callable[[dict], dict | None] | None, row: dict) -> dict:
    """`row` through a dataset's preprocessor; a row it drops or fails on becomes a DROPPED row (a bad row for
    the --strict handling downstream, not a crash)."""
    if preprocess is None:
        return row
    try:
        out = preprocess(dict(row))
    except Exception as e:  # a registered preprocessor on a row it does not fit
        return {DROPPED: f"the dataset's preprocessing failed on this row ({type(e).__name__}: {e})"}
    return out if out is not None else {DROPPED: "the dataset's preprocessing dropped this row"}


class FileRows(Sequence):
    """The rows of one file or hub split (a `datasets.Dataset` or a list of dicts), each through the dataset's
    `preprocess` (a registered dataset's preprocessor; None: rows as stored), with `ref(i)` naming file and line."""

    def __init__(self, name: str, rows: Sequence[dict], line_numbers: Sequence[int] | None = None,
                 preprocess: Callable[[dict], dict | None] | None = None):
        self.name = name
        self.rows = rows
        self.preprocess = preprocess
        self._lines = line_numbers
        self._jsonl = name.endswith(".jsonl") and os.path.isfile(name)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return preprocessed(self.preprocess, self.rows[int(i)])

    def ref(self, i: int) -> RowRef:
        """File and line (jsonl; the i-th non-blank line, found on first use) or row index of row i."""
        if self._lines is None and self._jsonl:
            self._lines = _non_blank_lines(self.name)
        line = self._lines[i] if self._lines is not None and i < len(self._lines) else None
        return RowRef(self.name, int(i), line)


def _non_blank_lines(path: str) -> list[int]:
    """1-based numbers of the non-blank lines of a text file (Arrow skips blank lines)."""
    with open(path, "rb") as f:
        return [n for n, line in enumerate(f, 1) if line.strip()]


def _read_json_lines(path: str, bad: BadRows) -> FileRows:
    """Line-by-line JSON reader: precise errors, mixed schemas; bad lines skipped when not strict."""
    rows, lines = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rows.append(json.loads(text))
                lines.append(n)
            except json.JSONDecodeError as e:
                bad.handle(DataError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"))
    return FileRows(path, rows, lines)


def _read_json_array(path: str, bad: BadRows) -> FileRows:
    """A .json file: a JSON array of rows, or JSON lines despite the suffix."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON lines
            return _read_json_lines(path, bad)
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows (or one object per line), got {type(data).__name__}")
    return FileRows(path, data)


def load_file(path: str, bad: BadRows, preprocess: Callable[[dict], dict | None] | None = None) -> FileRows:
    """Rows of one local file; Arrow-backed through `datasets` where it can, else the JSON reader."""
    suffix = os.path.splitext(path)[1].lower()
    import datasets

    try:
        ds = datasets.load_dataset(BUILDERS[suffix], data_files=path, split="train")
        rows = FileRows(path, ds)
    except Exception as e:  # Arrow's errors name neither line nor cause; fall back to a reader that does
        if suffix == ".jsonl":
            rows = _read_json_lines(path, bad)
        elif suffix == ".json":
            rows = _read_json_array(path, bad)
        else:
            raise DataError(f"{path}: could not be read as {suffix[1:]}: {type(e).__name__}: {e}") from None
    if len(rows) == 0:
        raise DataError(f"{path}: the dataset is empty (no rows); expected at least one row")
    rows.preprocess = preprocess
    return rows


def load_plan(plan: DatasetPlan, bad: BadRows) -> list[FileRows]:
    """The row sources of a resolved dataset: its hub (or hub-layout folder) subsets and splits, or its local
    files (every data file of a folder) or bundled copy."""
    from swift_jax.data import hub_datasets

    if plan.hub_layout:
        return hub_datasets.load_subsets(plan)
    return [load_file(f, bad, s.preprocess) for s in plan.subsets for f in list_files(plan.location)]


def sample_indices(size: int, num_samples: int | None, rng: np.random.RandomState, shuffle: bool = True) -> np.ndarray:
    """ms-swift's `#N` (`sample_dataset`): N <= size takes N rows, random (`shuffle`, the first N of a permutation
    by the run's RandomState, so the same rows as ms-swift) or the first N; N > size repeats the whole set
    N // size times and samples the rest alike."""
    if num_samples is None:
        return np.arange(size)
    repeats, rest = divmod(num_samples, size)
    tail = (rng.permutation(size)[:rest] if shuffle else np.arange(rest)) if rest else np.zeros(0, np.int64)
    return np.concatenate([np.tile(np.arange(size), repeats), tail]).astype(np.int64)


def interleave_positions(lengths: list[int], probabilities: list[float], seed: int, stopping_strategy: str) -> np.ndarray:
    """Positions into the concatenation of datasets of `lengths`, mixed as `datasets.interleave_datasets` mixes
    them (ms-swift's `--interleave_prob`): each next row comes from dataset i with probability p_i;
    `first_exhausted` stops when any dataset runs out, `all_exhausted` once every one has been read through
    (the ones that ran out start over)."""
    if stopping_strategy not in ("first_exhausted", "all_exhausted"):
        raise DataError(f"--stopping_strategy {stopping_strategy!r}: expected first_exhausted or all_exhausted")
    if len(probabilities) != len(lengths):
        raise DataError(f"--interleave_prob has {len(probabilities)} values for {len(lengths)} datasets; give one per --dataset")
    offsets = np.cumsum([0] + lengths[:-1])
    done = np.all if stopping_strategy == "all_exhausted" else np.any
    exhausted, current, out = np.zeros(len(lengths), bool), [0] * len(lengths), []
    rng = np.random.default_rng(seed)
    while True:
        for i in (int(i) for i in rng.choice(len(lengths), size=1000, p=probabilities)):
            if done(exhausted):
                return np.asarray(out, np.int64)
            out.append(current[i] + offsets[i])
            current[i] += 1
            if current[i] >= lengths[i]:
                exhausted[i], current[i] = True, 0


class RowTable(Sequence):
    """Several datasets mixed into one indexable table: `table[i]` -> (row, RowRef).

    Row i is row `row[i]` of file `files[part[i]]`; sampling, splitting and mixing only move indices."""

    def __init__(self, files: list[FileRows], part: np.ndarray, row: np.ndarray):
        self.files, self.part, self.row = files, part, row

    @classmethod
    def concat(cls, parts: list[tuple[FileRows, np.ndarray]]) -> "RowTable":
        """One table of the given (file, row indices) parts, in order."""
        files = [f for f, _ in parts]
        part = np.concatenate([np.full(len(idx), k, np.int32) for k, (_, idx) in enumerate(parts)] or [np.zeros(0, np.int32)])
        row = np.concatenate([np.asarray(idx, np.int64) for _, idx in parts] or [np.zeros(0, np.int64)])
        return cls(files, part, row)

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, i: int) -> tuple[dict, RowRef]:
        rows, j = self.files[self.part[i]], int(self.row[i])
        return rows[j], rows.ref(j)

    def subset(self, positions: np.ndarray) -> "RowTable":
        """The rows at `positions`, in that order."""
        return RowTable(self.files, self.part[positions], self.row[positions])

    @classmethod
    def join(cls, tables: list["RowTable"]) -> "RowTable":
        """One table of the rows of `tables`, in order."""
        files = [f for t in tables for f in t.files]
        shift = np.cumsum([0] + [len(t.files) for t in tables])
        return cls(files, np.concatenate([t.part + s for t, s in zip(tables, shift)]), np.concatenate([t.row for t in tables]))


def split_indices(size: int, num_samples: int | None, ratio: float, rng: np.random.RandomState, shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of one dataset under --split_dataset_ratio, as ms-swift's post_process:
    `max(int(min(size, N) * ratio), 1)` distinct rows are held out (`train_test_split`: the head of a permutation
    seeded from the RandomState, or the last rows without shuffling), and `N` minus those are `#N`-sampled from
    the rest."""
    if not 0 < ratio < 1:
        raise DataError(f"--split_dataset_ratio {ratio}: expected a fraction in [0, 1)")
    total = size if num_samples is None else num_samples
    n_val = max(int(min(size, total) * ratio), 1)
    if total - n_val <= 0 or n_val >= size:
        raise DataError(f"--split_dataset_ratio {ratio} leaves no training rows out of {size}")
    seed = int(rng.randint(0, np.iinfo(np.int32).max))
    order = np.random.default_rng(seed).permutation(size) if shuffle else np.roll(np.arange(size), n_val)
    val, rest = order[:n_val], order[n_val:]
    return rest[sample_indices(len(rest), total - n_val, rng, shuffle)], val


def load_tables(specs: list[str], seed: int, bad: BadRows, options: LoadOptions = LoadOptions(),
                split_ratio: float = 0.0) -> tuple[RowTable, RowTable | None]:
    """All `--dataset` entries as one training table, each sampled by its `#N` (over all its files and subsets)
    and, with `split_ratio`, each giving up its share of validation rows (`split_indices`); the parts are
    concatenated, or mixed by `options.interleave_prob`. The random draws follow ms-swift's `load_dataset` (one
    RandomState seeded by `seed`), so the rows are ms-swift's."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    for text in specs:
        plan = resolve(text, options)
        whole = RowTable.concat([(f, np.arange(len(f))) for f in load_plan(plan, bad)])
        if len(whole) == 0:
            raise DataError(f"dataset {text!r}: the dataset is empty (no rows)")
        rng.randint(0, np.iinfo(np.int32).max)  # ms-swift draws a seed per dataset (init_decision_augment) first
        if split_ratio > 0:
            rows, held_out = split_indices(len(whole), plan.spec.num_samples, split_ratio, rng, options.shuffle)
            train.append(whole.subset(rows))
            val.append(whole.subset(held_out))
        else:
            train.append(whole.subset(sample_indices(len(whole), plan.spec.num_samples, rng, options.shuffle)))
    if not train:
        raise DataError("no dataset given; pass --dataset PATH (a .jsonl/.json/.csv/.parquet file, a folder or a hub id)")
    mixed = _combine(train, options, rng)
    return mixed, _combine(val, options, rng) if val else None


def _combine(tables: list[RowTable], options: LoadOptions, rng: np.random.RandomState) -> RowTable:
    """Tables concatenated, or interleaved by `options.interleave_prob` (a seed drawn as ms-swift draws it)."""
    table = RowTable.join(tables)
    if options.interleave_prob is None:
        return table
    seed = int(rng.randint(0, np.iinfo(np.int32).max))  # ms-swift's get_seed
    if len(tables) == 1:
        return table
    return table.subset(interleave_positions([len(t) for t in tables], list(options.interleave_prob), seed, options.stopping_strategy))


def load_table(specs: list[str], seed: int, bad: BadRows, options: LoadOptions = LoadOptions()) -> RowTable:
    """All `--dataset` entries as one table (`load_tables` without a validation split)."""
    return load_tables(specs, seed, bad, options)[0]
