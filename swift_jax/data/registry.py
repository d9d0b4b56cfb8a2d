"""Registered datasets: ms-swift's names resolved to hub ids, subsets, splits and preprocessing.

The table `dataset_info.json` beside this module is ms-swift 4.6's registry (its own `dataset_info.json` and the
Python registrations of `swift/dataset/dataset/*.py`), written by `scripts/make_dataset_info.py`. More datasets
register as in ms-swift: `--custom_dataset_info my_info.json` (ms-swift's JSON format: `ms_dataset_id` /
`hf_dataset_id` / `dataset_path` / `dataset_name`, `subsets`, `split`, `columns`, `messages`), or
`--custom_register_path plugin.py` (alias `--external_plugins`), a Python file that calls `register_dataset`
(see `swift_jax.data.preprocessors`).

A `--dataset` entry finds its entry as ms-swift's `load_dataset` does: by `dataset_name`; else by its hub id on
the chosen hub (or its `dataset_path`); else by the last part of the id or path (`/data/alpaca-gpt4-data-zh`, a
local clone, is preprocessed as `AI-ModelScope/alpaca-gpt4-data-zh`); else it is an unregistered dataset
(ms-swift's AutoPreprocessor).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable

from swift_jax.data.errors import DataError
from swift_jax.data.dataset_preprocessors import preprocessor_of
from swift_jax.data.preprocessors import (AlpacaPreprocessor, AutoPreprocessor, MessagesPreprocessor, ResponsePreprocessor,
                                          RowPreprocessor)

__all__ = ["DATASET_MAPPING", "AlpacaPreprocessor", "AutoPreprocessor", "DatasetMeta", "MessagesPreprocessor",
           "ResponsePreprocessor", "RowPreprocessor", "SubsetDataset", "register_dataset", "register_dataset_info"]
"""What a plugin imports (ms-swift's names)."""

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataset_info.json")


@dataclasses.dataclass
class SubsetDataset:
    """One subset of a registered dataset: `name` (what `id:name` selects), `subset` (the hub's config name),
    `split` and `preprocess_func` (None: the dataset's), `is_weak_subset` (left out of `:all`)."""

    name: str | None = None
    subset: str = "default"
    split: list[str] | None = None
    preprocess_func: Callable[[dict], dict | None] | None = None
    is_weak_subset: bool = False

    def __post_init__(self):
        if self.name is None:
            self.name = self.subset


@dataclasses.dataclass
class DatasetMeta:
    """A registered dataset (ms-swift's DatasetMeta): at least one of the hub ids or `dataset_path`."""

    ms_dataset_id: str | None = None
    hf_dataset_id: str | None = None
    dataset_path: str | None = None
    dataset_name: str | None = None
    ms_revision: str | None = None
    hf_revision: str | None = None
    subsets: list = dataclasses.field(default_factory=lambda: ["default"])
    split: list[str] = dataclasses.field(default_factory=lambda: ["train"])
    preprocess_func: Callable[[dict], dict | None] = dataclasses.field(default_factory=AutoPreprocessor)
    tags: list[str] = dataclasses.field(default_factory=list)
    help: str | None = None
    huge_dataset: bool = False

    def __post_init__(self):
        self.subsets = [SubsetDataset(subset=s) if isinstance(s, str) else s for s in self.subsets]

    @property
    def key(self) -> Any:
        """The registry key: `dataset_name`, else (ms id, hf id, path), as ms-swift's DATASET_MAPPING."""
        return self.dataset_name or (self.ms_dataset_id, self.hf_dataset_id, self.dataset_path)

    @property
    def label(self) -> str:
        """A name for messages."""
        return self.dataset_name or self.ms_dataset_id or self.hf_dataset_id or self.dataset_path


DATASET_MAPPING: dict[Any, DatasetMeta] = {}
_loaded: set[str] = set()  # custom info files and plugins already registered


def register_dataset(meta: DatasetMeta, *, exist_ok: bool = False) -> None:
    """Register `meta` (ms-swift's register_dataset): raises if its key is registered, unless `exist_ok`."""
    _ensure_table()
    if not exist_ok and meta.key in DATASET_MAPPING:
        raise DataError(f"dataset {meta.label!r} is already registered; pass exist_ok=True to replace it")
    DATASET_MAPPING[meta.key] = meta


def _meta_of(info: dict, base_dir: str | None = None) -> DatasetMeta:
    """A DatasetMeta from one JSON entry: ours (`preprocess`) or ms-swift's custom format (`columns`, `messages`)."""
    info = dict(info)
    label = info.get("dataset_name") or info.get("ms_dataset_id") or info.get("hf_dataset_id") or info.get("dataset_path")
    if not label:
        raise DataError(f"dataset info entry {info}: needs one of ms_dataset_id, hf_dataset_id, dataset_path")
    record = info.pop("preprocess", None)
    columns, messages = info.pop("columns", None), info.pop("messages", None)
    if messages is not None:
        record = {"type": "messages", **messages, **({"columns": columns} if columns else {})}
    elif columns:
        record = {"type": "auto", "columns": columns}
    info["preprocess_func"] = preprocessor_of(record, label)
    if info.get("dataset_path"):
        path = os.path.expanduser(info["dataset_path"])
        info["dataset_path"] = os.path.abspath(os.path.join(base_dir, path) if base_dir else path)
    subsets = []
    for s in info.pop("subsets", ["default"]):
        if isinstance(s, dict):
            s = dict(s)
            sub_record, sub_columns = s.pop("preprocess", None), s.pop("columns", None)
            if sub_columns:
                sub_record = {"type": "auto", "columns": sub_columns}
            if sub_record is not None:
                s["preprocess_func"] = preprocessor_of(sub_record, f"{label}:{s.get('name') or s.get('subset')}")
            s = SubsetDataset(**s)
        subsets.append(s)
    try:
        return DatasetMeta(subsets=subsets, **info)
    except TypeError as e:
        raise DataError(f"dataset info entry for {label!r}: {e}") from None


def register_dataset_info(source: str) -> list[DatasetMeta]:
    """Register the datasets of a JSON file (a list of entries; relative `dataset_path`s are relative to it) or a
    JSON string: ms-swift's `--custom_dataset_info`."""
    _ensure_table()
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                entries, base_dir = json.load(f), os.path.dirname(path)
            except json.JSONDecodeError as e:
                raise DataError(f"--custom_dataset_info {source}: not valid JSON ({e})") from None
    else:
        try:
            entries, base_dir = json.loads(source), None
        except json.JSONDecodeError:
            raise DataError(f"--custom_dataset_info {source!r}: no such file, and not a JSON list of datasets") from None
    if isinstance(entries, dict):
        entries = [entries]
    metas = [_meta_of(e, base_dir) for e in entries]
    for meta in metas:
        register_dataset(meta)
    return metas


def import_plugin(path: str) -> None:
    """Import a Python file that registers datasets (ms-swift's `--custom_register_path`, which ms-swift adds to
    `--external_plugins`: the same import)."""
    from swift_jax.rewards.plugins import load_plugins

    try:
        load_plugins([path])
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"--custom_register_path: {e}") from e


def register_from_args(custom_dataset_info: list[str] | str | None, plugins: list[str] | str | None) -> None:
    """Register `--custom_dataset_info` files and import `--custom_register_path` plugins, each once per process."""
    for kind, items in (("info", custom_dataset_info), ("plugin", plugins)):
        for item in [items] if isinstance(items, str) else items or []:
            key = f"{kind}:{os.path.abspath(item) if os.path.exists(item) else item}"
            if key in _loaded:
                continue
            _loaded.add(key)
            register_dataset_info(item) if kind == "info" else import_plugin(item)


def _ensure_table() -> None:
    """Load the built-in table on first use."""
    if "table" in _loaded:
        return
    _loaded.add("table")
    with open(TABLE, encoding="utf-8") as f:
        for entry in json.load(f):
            meta = _meta_of(entry)
            DATASET_MAPPING[meta.key] = meta


def dataset_name(dataset_id: str) -> str:
    """The last part of an id or path (ms-swift's get_dataset_name; a HF cache snapshot path gives the repo name)."""
    dataset_id = dataset_id.rstrip("/")
    match = re.search("/datasets--.+?--(.+?)/snapshots/", dataset_id)
    return match.group(1) if match else dataset_id.rsplit("/", 1)[-1]


def find_meta(path: str, use_hf: bool) -> DatasetMeta | None:
    """The registered dataset a `--dataset` path or id means (see the module docstring), or None."""
    _ensure_table()
    if path in DATASET_MAPPING:
        return DATASET_MAPPING[path]
    by_id, by_name = {}, {}
    for meta in DATASET_MAPPING.values():
        keys = []
        if meta.dataset_path:
            keys.append(("path", meta.dataset_path))
        if meta.ms_dataset_id:
            keys.append(("ms", meta.ms_dataset_id))
        if meta.hf_dataset_id:
            keys.append(("hf", meta.hf_dataset_id))
        for key in keys:
            by_id[key] = meta
            by_name[dataset_name(key[1])] = meta
    if os.path.exists(path):
        kind, path = "path", os.path.abspath(path)
    else:
        kind = "hf" if use_hf else "ms"
    return by_id.get((kind, path)) or by_name.get(dataset_name(path))
