"""Find and read dataset rows: local files and folders (via `datasets`), hub ids, `path#N` sampling, mixing.

Rows stay where `datasets` put them (Arrow, memory-mapped), so a million-row file costs little memory;
every row keeps a reference to its file and line for error messages. A JSON-lines file that Arrow cannot
read (a malformed line, a column whose type changes between rows) is re-read line by line, which names
the bad line, or skips it under `--strict false`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from swift_jax.data.errors import BadRows, DataError, RowRef

# file suffix -> `datasets` builder
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One `--dataset` entry: a path or hub id, and an optional sample count from `path#N`."""

    path: str
    num_samples: int | None = None

    @classmethod
    def parse(cls, spec: str) -> "DatasetSpec":
        """'data/a.jsonl#500' -> DatasetSpec('data/a.jsonl', 500)."""
        path, sep, count = spec.rpartition("#")
        if not sep:
            return cls(spec)
        if not count.isdigit() or int(count) <= 0:
            raise DataError(f"dataset {spec!r}: the part after '#' must be a positive sample count, e.g. {path or spec}#1000")
        return cls(path, int(count))


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


class FileRows(Sequence):
    """The rows of one file (a `datasets.Dataset` or a list of dicts) with `ref(i)` naming file and line."""

    def __init__(self, name: str, rows: Sequence[dict], line_numbers: Sequence[int] | None = None):
        self.name = name
        self.rows = rows
        self._lines = line_numbers
        self._jsonl = name.endswith(".jsonl") and os.path.isfile(name)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[int(i)]

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


def load_file(path: str, bad: BadRows) -> FileRows:
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
    return rows


def load_hub(name: str) -> FileRows:
    """Rows of a hub dataset id (train split); a clear error when it is neither a local path nor reachable."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:
        raise DataError(
            f"dataset {name!r} is not a local file or folder, and loading it from the hub failed "
            f"({type(e).__name__}: {str(e)[:200]}); check the path, or the network for hub ids"
        ) from None
    if len(ds) == 0:
        raise DataError(f"hub dataset {name!r}: the dataset is empty (no rows)")
    return FileRows(name, ds)


def check_local(path: str) -> None:
    """Raise when a missing `path` is clearly meant as a local file (a data suffix, or starts with / . ~),
    instead of trying it as a hub id."""
    if os.path.splitext(path)[1].lower() in BUILDERS or path.startswith((os.sep, ".", "~")):
        raise DataError(f"{path}: no such file or folder (a local path, not a hub id); check --dataset / --val_dataset")


def load_source(path: str, bad: BadRows) -> list[FileRows]:
    """The files of one dataset path (a file, a folder, or a hub id)."""
    if os.path.exists(path):
        return [load_file(f, bad) for f in list_files(path)]
    check_local(path)
    return [load_hub(path)]


def sample_indices(size: int, num_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    """ms-swift's `#N`: N <= size takes N distinct rows; N > size repeats the whole set and samples the rest."""
    if num_samples is None:
        return np.arange(size)
    repeats, rest = divmod(num_samples, size)
    return np.concatenate([np.tile(np.arange(size), repeats), rng.choice(size, rest, replace=False)]).astype(np.int64)


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


def load_table(specs: list[str], seed: int, bad: BadRows) -> RowTable:
    """All `--dataset` entries mixed into one table, each sampled by its `#N` (over all its files)."""
    rng = np.random.default_rng(seed)
    tables = []
    for text in specs:
        spec = DatasetSpec.parse(text)
        whole = RowTable.concat([(f, np.arange(len(f))) for f in load_source(spec.path, bad)])
        tables.append(whole.subset(sample_indices(len(whole), spec.num_samples, rng)))
    if not tables:
        raise DataError("no dataset given; pass --dataset PATH (a .jsonl/.json/.csv/.parquet file, a folder or a hub id)")
    return RowTable.join(tables)
