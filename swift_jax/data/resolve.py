"""Resolve a `--dataset` entry to a plan: where its rows come from, which subsets and splits, how they are
preprocessed. One resolver serves every command that reads a dataset (sft, pt, rlhf, GRPO prompts, infer's
--val_dataset, eval, export's calibration set).

    plan = resolve("AI-ModelScope/alpaca-gpt4-data-zh#500", LoadOptions(use_hf=True))
    plan.source, plan.location, plan.subsets[0].split   # 'hf', 'llm-wizard/alpaca-gpt4-data-zh', ('train',)

The hub: `hf::` / `ms::` in the entry, else `--use_hf`, else `$USE_HF` (1/true: Hugging Face, 0/false: ModelScope),
else ModelScope when the `modelscope` package is installed and Hugging Face when not (ms-swift always defaults to
ModelScope; this keeps a plain install, without `modelscope`, working with the Hugging Face mirrors). A registered
dataset that exists only on the other hub is read from there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Callable

from swift_jax.data.bundled import BUNDLED
from swift_jax.data.dataset_syntax import DatasetSpec
from swift_jax.data.errors import DataError
from swift_jax.data.dataset_preprocessors import SelfCognitionPreprocessor
from swift_jax.data.preprocessors import AutoPreprocessor, Unsupported, WithColumns
from swift_jax.data.registry import DatasetMeta, SubsetDataset, find_meta, register_from_args

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How datasets are read: the hub, self-cognition's name and author, `#N` sampling and mixing."""

    use_hf: bool | None = None
    hub_token: str | None = None
    model_name: tuple[str, ...] | None = None
    model_author: tuple[str, ...] | None = None
    shuffle: bool = True
    """`#N` below the dataset size samples random rows (true) or takes the first N (false), as ms-swift."""
    interleave_prob: tuple[float, ...] | None = None
    stopping_strategy: str = "first_exhausted"
    columns: tuple[tuple[str, str], ...] = ()
    """--columns, renamed before a registered dataset's preprocessor (unregistered rows: by `formats.normalize`)."""

    @classmethod
    def of(cls, args, *, shuffle: bool | None = None, mix: bool = True) -> "LoadOptions":
        """The options of a command's arguments (any dataclass; missing fields keep their defaults), after
        registering its --custom_dataset_info files and --custom_register_path plugins."""
        register_from_args(getattr(args, "custom_dataset_info", None), getattr(args, "custom_register_path", None))

        def tup(name):
            value = getattr(args, name, None)
            return tuple([value] if isinstance(value, str) else value) if value else None

        return cls(
            use_hf=getattr(args, "use_hf", None), hub_token=getattr(args, "hub_token", None),
            model_name=tup("model_name"), model_author=tup("model_author"),
            shuffle=getattr(args, "dataset_shuffle", True) if shuffle is None else shuffle,
            interleave_prob=tup("interleave_prob") if mix else None,
            stopping_strategy=getattr(args, "stopping_strategy", "first_exhausted"),
            columns=tuple((getattr(args, "columns", None) or {}).items()),
        )


@dataclasses.dataclass(frozen=True)
class SubsetPlan:
    """One subset to read: `name` (as selected), `subset` (the hub's config name), its splits, its preprocessor."""

    name: str
    subset: str
    split: tuple[str, ...]
    preprocess: Callable[[dict], dict | None]


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    """Where a dataset's rows come from: `source` is 'path' (a local file or folder), 'hf' / 'ms' (a hub id),
    or 'bundled' (a copy that ships with swift_jax); `registered` names the table entry, if any."""

    spec: DatasetSpec
    source: str
    location: str
    subsets: tuple[SubsetPlan, ...]
    revision: str | None = None
    registered: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def hub_layout(self) -> bool:
        """Rows come through `datasets.load_dataset` by subset (config) and split: a hub dataset, or a folder that
        is a registered dataset's local copy or is asked for named subsets (as ms-swift reads folders)."""
        if self.source in ("hf", "ms"):
            return True
        return os.path.isdir(self.location) and (self.registered is not None or any(s.subset != "default" for s in self.subsets))


def modelscope_installed() -> bool:
    """Whether the `modelscope` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("modelscope") is not None
    except ValueError:  # in sys.modules as None: import blocked
        return False


def hub_is_hf(spec: DatasetSpec, use_hf: bool | None) -> bool:
    """The hub of an entry: `hf::`/`ms::`, else --use_hf, else $USE_HF, else ModelScope if installed."""
    if spec.use_hf is not None:
        return spec.use_hf
    if use_hf is not None:
        return use_hf
    env = os.environ.get("USE_HF", "").strip().lower()
    if env in TRUE or env in FALSE:
        return env in TRUE
    if env:
        raise DataError(f"USE_HF={os.environ['USE_HF']!r}: expected 1/true (Hugging Face) or 0/false (ModelScope)")
    return not modelscope_installed()


def select_subsets(names: tuple[str, ...], meta: DatasetMeta) -> list[SubsetDataset]:
    """The subsets an entry selects (ms-swift's rule): none given -> the only one, or 'default'; 'all' -> every
    subset that is not weak; an unregistered name is read as the hub's config of that name."""
    by_name = {s.name: s for s in meta.subsets}
    if not names:
        if len(by_name) <= 1:
            names = tuple(by_name)
        elif "default" in by_name:
            names = ("default",)
        else:
            raise DataError(f"dataset {meta.label!r} has several subsets; choose with {meta.label}:SUBSET "
                            f"(SUBSET1/SUBSET2, or all): {sorted(by_name)}")
    elif names == ("all",) and "all" not in by_name:
        names = tuple(n for n, s in by_name.items() if not s.is_weak_subset)
    return [by_name.get(n) or SubsetDataset(subset=n) for n in names]


def _subset_plan(subset: SubsetDataset, meta: DatasetMeta, options: LoadOptions) -> SubsetPlan:
    preprocess = subset.preprocess_func or meta.preprocess_func
    if isinstance(preprocess, Unsupported):
        preprocess.check()
    if isinstance(preprocess, SelfCognitionPreprocessor):
        preprocess.set_name_author(options.model_name, options.model_author)
    if options.columns and not isinstance(preprocess, AutoPreprocessor):  # (AutoPreprocessor: normalize renames)
        preprocess = WithColumns(preprocess, dict(options.columns))
    return SubsetPlan(subset.name, subset.subset, tuple(subset.split or meta.split), preprocess)


def resolve(entry: str | DatasetSpec, options: LoadOptions = LoadOptions()) -> DatasetPlan:
    """The plan of one `--dataset` entry (see the module docstring)."""
    spec = entry if isinstance(entry, DatasetSpec) else DatasetSpec.parse(entry)
    use_hf = hub_is_hf(spec, options.use_hf)
    meta = find_meta(spec.path, use_hf)
    registered = meta.label if meta else None
    meta = meta or DatasetMeta()
    path = spec.path
    if registered and path == meta.dataset_name:  # an alias: its path, else its id on the chosen hub
        if meta.dataset_path and spec.use_hf is None:
            path = meta.dataset_path
        else:
            path = (meta.hf_dataset_id if use_hf else meta.ms_dataset_id) or meta.hf_dataset_id or meta.ms_dataset_id
    elif registered and not os.path.exists(path) and path in (meta.ms_dataset_id, meta.hf_dataset_id):
        chosen = meta.hf_dataset_id if use_hf else meta.ms_dataset_id
        if chosen:  # the same dataset's id on the chosen hub
            path = chosen
        else:  # only on the other hub
            use_hf = path == meta.hf_dataset_id
    if os.path.isfile(path):
        plan_subsets = (SubsetPlan("default", "default", ("train",), _subset_plan(SubsetDataset(), meta, options).preprocess),)
        return DatasetPlan(spec, "path", path, plan_subsets, registered=registered)
    if os.path.isdir(path) and not spec.subsets and len(meta.subsets) > 1 and "default" not in {s.name for s in meta.subsets}:
        chosen = [SubsetDataset()]  # a local folder named like a dataset of several subsets: read whole (ms-swift asks)
    else:
        chosen = select_subsets(spec.subsets, meta)
    subsets = tuple(_subset_plan(s, meta, options) for s in chosen)
    if os.path.isdir(path):
        return DatasetPlan(spec, "path", path, subsets, registered=registered)
    check_local(path)
    if path in BUNDLED:
        return DatasetPlan(spec, "bundled", BUNDLED[path], subsets, registered=registered)
    revision = meta.hf_revision if use_hf else meta.ms_revision
    return DatasetPlan(spec, "hf" if use_hf else "ms", path, subsets, revision, registered, options.hub_token)


def check_local(path: str) -> None:
    """Raise when a missing `path` is clearly meant as a local file (a data suffix, or starts with / . ~)
    instead of trying it as a hub id."""
    from swift_jax.data.sources import BUILDERS

    if os.path.splitext(path)[1].lower() in BUILDERS or path.startswith((os.sep, ".", "~")):
        raise DataError(f"{path}: no such file or folder (a local path, not a hub id); check --dataset / --val_dataset")

