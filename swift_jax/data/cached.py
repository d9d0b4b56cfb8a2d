"""Cached datasets (ms-swift's `swift export --to_cached_dataset true` and `--cached_dataset`): a dataset checked
against the template once, saved, and trained from later.

As ms-swift 4.6 does (`swift/pipelines/export/cached_dataset.py`), export reads `--dataset` (and `--val_dataset`
or a `--split_dataset_ratio` split), renders every row with the template, drops the rows training would drop
(too long under `--truncation_strategy delete`, nothing to train, malformed under `--strict false`), and saves the
rest in the standard row format (`messages`, as a list of JSON values) with each row's token counts in a
`lengths` column, as a Hugging Face `datasets` folder (`save_to_disk`):

    OUTPUT_DIR/train/{data-00000-of-00001.arrow, dataset_info.json, state.json}
    OUTPUT_DIR/val/...                           (when a validation set was given or split)

Training with `--cached_dataset OUTPUT_DIR/train [--cached_val_dataset OUTPUT_DIR/val]` reads those rows (no
format detection, parsing or filtering of the source files again; tokenisation stays lazy, in the background,
as for any dataset), and combines them with `--dataset` when both are given (cached rows first). ms-swift's
folders load here and ours there: both are `datasets` folders of standard rows.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from swift_jax.data import formats
from swift_jax.data.args import DataArgs
from swift_jax.data.errors import BadRows, DataError
from swift_jax.data.dataset_syntax import DatasetSpec
from swift_jax.data.sources import FileRows, RowTable, sample_indices

log = logging.getLogger("swift_jax.data")
TEMPLATE_MODES = ("train", "rlhf", "kto")
HINT = "make one with `swift-jax export --to_cached_dataset true --dataset DATA --output_dir DIR` and pass DIR/train"


def load_cached(path: str, flag: str = "--cached_dataset") -> FileRows:
    """The rows of one cached dataset folder (a `datasets.save_to_disk` folder); a DataError names `path` when it
    is missing or not such a folder."""
    import datasets

    if not os.path.isdir(path):
        raise DataError(f"{flag} {path}: no such folder; {HINT}")
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
        inner = [d for d in ("train", "val") if os.path.exists(os.path.join(path, d, "dataset_info.json"))]
        hint = f"did you mean {os.path.join(path, inner[0])}?" if inner else HINT
        raise DataError(f"{flag} {path}: not a cached dataset (no dataset_info.json, as `datasets`' save_to_disk "
                        f"writes); {hint}")
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise DataError(f"{flag} {path}: could not be loaded as a saved dataset ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{flag} {path}: holds the splits {sorted(ds)}; pass one of their folders")
    if len(ds) == 0:
        raise DataError(f"{flag} {path}: the cached dataset is empty (no rows)")
    return FileRows(path, ds)


def load_cached_table(specs: list[str], seed: int, flag: str = "--cached_dataset") -> RowTable | None:
    """The rows of every `PATH[#N]` in `specs` (N: sampled as --dataset's #N), in order; None when none given."""
    rng = np.random.RandomState(seed)
    tables = []
    for text in specs:
        spec = DatasetSpec(text) if os.path.isdir(text) else DatasetSpec.parse(text)
        rows = load_cached(spec.path, flag)
        tables.append(RowTable.concat([(rows, sample_indices(len(rows), spec.num_samples, rng))]))
    return RowTable.join(tables) if tables else None


def cached_rows(spec: str) -> list[dict]:
    """The rows of one cached dataset `PATH[#N]` as written (without `lengths`), for inference
    (`infer --cached_val_dataset`)."""
    table = load_cached_table([spec], seed=42, flag="--cached_val_dataset")
    return [{k: v for k, v in table[i][0].items() if k != "lengths" and v is not None} for i in range(len(table))]


# -- export -------------------------------------------------------------------------------------------------------
def standard_row(row: dict, columns: dict[str, str] | None) -> dict:
    """A row in ms-swift's standard form: chat formats (alpaca, query/response, sharegpt conversations) become
    `messages` (+ `tools`); `messages` and `text` rows, and every other field (images, rejected_response, label,
    ...), are kept as they are."""
    row = {columns.get(k, k): v for k, v in row.items()} if columns else dict(row)
    if formats.detect_format(row) in ("text", None) or row.get("messages") is not None:
        return row
    sample = formats.normalize(row, media=True)
    consumed = set(formats.MESSAGE_KEYS + formats.QUERY_KEYS + formats.RESPONSE_KEYS + formats.SYSTEM_KEYS)
    consumed |= {"instruction", "input", "history", "tools"}
    out = {k: v for k, v in row.items() if k not in consumed}
    out["messages"] = sample["messages"]
    if sample.get("tools"):
        out["tools"] = sample["tools"]
    return out


def _lengths(table: RowTable, args: DataArgs, tokenizer, template_mode: str) -> tuple[list[int], list[list[int]]]:
    """(positions of the rows training keeps, their token counts: [n] per sample, [chosen, rejected] per pair)."""
    if template_mode == "train":
        from swift_jax.data.samples import SampleProcessor

        process = SampleProcessor(args, tokenizer)

        def measure(i):
            sample = process(table[i])
            return None if sample is None else [len(sample["input_ids"])]
    else:
        from swift_jax.rlhf.data import PairProcessor, rlhf_data_args

        pairs = PairProcessor(rlhf_data_args(args, "kto" if template_mode == "kto" else "dpo"), tokenizer,
                              "kto" if template_mode == "kto" else "dpo")

        def measure(i):
            row, ref = table[i]
            sample = pairs((row, ref, (row, ref)))  # KTO: the KL example's answer is this row's own (lengths only)
            return None if sample is None else [int((sample["part"] == p).sum()) for p in (0, 1)]
    kept, lengths = [], []
    for i in range(len(table)):
        n = measure(i)
        if n is not None:
            kept.append(i)
            lengths.append(n)
    return kept, lengths


def save_cached(table: RowTable, args: DataArgs, tokenizer, folder: str, template_mode: str = "train") -> int:
    """Save the rows of `table` that training keeps, standardised, with their `lengths`, to `folder`
    (`datasets.save_to_disk`); returns the number of rows saved."""
    import datasets

    kept, lengths = _lengths(table, args, tokenizer, template_mode)
    if not kept:
        raise DataError(f"no row of {len(table)} is kept by the template (too long for --max_length {args.max_length}, "
                        "nothing to train, or malformed): nothing to cache")
    rows = [{**standard_row(table[i][0], args.columns), "lengths": n} for i, n in zip(kept, lengths)]
    features = None
    if hasattr(datasets, "Json") and any("messages" in r for r in rows):  # heterogeneous messages, as ms-swift writes them
        rest = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "messages"} for r in rows]).features
        features = datasets.Features({**rest, "messages": datasets.List(datasets.Json())})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(folder)
    log.info("cached %d of %d rows in %s", len(rows), len(table), folder)
    return len(rows)


def export_cached_dataset(args: DataArgs, tokenizer, output_dir: str, template_mode: str = "train") -> list[str]:
    """`export --to_cached_dataset true`: `output_dir/train` (and `output_dir/val` when --val_dataset or
    --split_dataset_ratio gives a validation set); returns the folders written."""
    from swift_jax.data.pipeline import load_train_val

    if template_mode not in TEMPLATE_MODES:
        raise DataError(f"--template_mode {template_mode!r}: expected one of {', '.join(TEMPLATE_MODES)}")
    if args.packing:
        raise DataError("--packing: export only tokenises; packing happens when training from the cached dataset "
                        "(as in ms-swift); drop --packing")
    if args.streaming:
        raise DataError("--streaming: a cached dataset is written whole; drop --streaming")
    if not args.dataset:
        raise DataError("--to_cached_dataset needs --dataset PATH (the rows to cache)")
    train, val = load_train_val(args, BadRows(args.strict))
    written = []
    for name, table in (("train", train), ("val", val)):
        if table is not None:
            folder = os.path.join(output_dir, name)
            save_cached(table, args, tokenizer, folder, template_mode)
            written.append(folder)
    return written
