"""Hub datasets: a resolved plan's subsets and splits from the Hugging Face hub (`datasets`; a repo already in
the local hub cache is read from there, without the network), ModelScope (the `modelscope` package, an optional
extra) or a local folder of hub layout (a `git clone` of a dataset repo)."""

from __future__ import annotations

import logging
import os
import re

from swift_jax.data.errors import DataError
from swift_jax.data.resolve import DatasetPlan, SubsetPlan
from swift_jax.data.sources import FileRows

log = logging.getLogger("swift_jax.data")
MODELSCOPE_HINT = "pip install modelscope (or pip install 'swift-jax[modelscope]')"


def cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The folder of a Hugging Face dataset repo already in the local hub cache (`huggingface-cli download
    --repo-type dataset ID`, or an earlier run), found without the network; None when not cached."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)
    except Exception:  # not cached (or the id is not a repo id): the hub is asked instead
        return None


def declared_configs(folder: str) -> set[str]:
    """The config names a dataset folder's README.md declares (`configs: - config_name: NAME`), as a hub repo's
    card does; a plain folder of data files declares none."""
    readme = os.path.join(folder, "README.md")
    if not os.path.isfile(readme):
        return set()
    with open(readme, encoding="utf-8", errors="replace") as f:
        return set(re.findall(r"config_name:\s*['\"]?([^'\"\s]+)", f.read()))


def _hf_split(plan: DatasetPlan, subset: SubsetPlan, split: str, streaming: bool):
    import datasets

    revision = None if plan.revision in (None, "master") else plan.revision
    location = plan.location if plan.source == "path" else cached_snapshot(plan.location, revision)
    if location is not None:  # a local folder: a config its README declares, else its data files by split
        name = subset.subset if subset.subset in declared_configs(location) else None
        return datasets.load_dataset(location, name=name, split=split, streaming=streaming)
    return datasets.load_dataset(plan.location, name=subset.subset, split=split, revision=revision, streaming=streaming,
                                 token=plan.token)


def _ms_split(plan: DatasetPlan, subset: SubsetPlan, split: str, streaming: bool):
    try:
        from modelscope import MsDataset
    except ImportError:
        raise DataError(f"dataset {plan.spec}: {plan.location!r} is read from ModelScope, which needs the modelscope "
                        f"package: {MODELSCOPE_HINT}; or use the Hugging Face hub (hf::ID, --use_hf true or USE_HF=1)") from None
    if plan.token:  # --hub_token (else modelscope's own login or $MODELSCOPE_API_TOKEN)
        from modelscope import HubApi

        HubApi().login(plan.token)
    revision = "master" if plan.revision in (None, "main") else plan.revision
    ds = MsDataset.load(plan.location, subset_name=subset.subset, split=split, version=revision, use_streaming=streaming)
    return getattr(ds, "_hf_ds", ds)


def open_split(plan: DatasetPlan, subset: SubsetPlan, split: str, *, streaming: bool = False):
    """One split of one subset as a `datasets` Dataset (or IterableDataset); errors name the hub, id, subset
    and split and say what to try."""
    where = f"{'ModelScope' if plan.source == 'ms' else 'the Hugging Face hub' if plan.source == 'hf' else 'the folder'}"
    try:
        if plan.source == "ms":
            return _ms_split(plan, subset, split, streaming)
        return _hf_split(plan, subset, split, streaming)
    except DataError:
        raise
    except Exception as e:  # network, missing repo or config: all end here with the dataset named
        registered = f" (registered as {plan.registered!r})" if plan.registered else ""
        raise DataError(
            f"dataset {str(plan.spec)!r}{registered}: loading {plan.location!r} subset {subset.subset!r} split {split!r} "
            f"from {where} failed ({type(e).__name__}: {str(e)[:300]}); check the id and the network, or pass a local "
            "copy (a file, or a folder named like the dataset, is preprocessed as the registered dataset)"
        ) from None


def load_subsets(plan: DatasetPlan) -> list[FileRows]:
    """Every selected subset and split of a hub (or hub-layout folder) dataset, each through its preprocessor."""
    out = []
    for subset in plan.subsets:
        for split in subset.split:
            ds = open_split(plan, subset, split)
            log.info("dataset %s: %s subset %s split %s, %d rows", plan.spec, plan.location, subset.subset, split, len(ds))
            out.append(FileRows(f"{plan.location}:{subset.name}/{split}", ds, preprocess=subset.preprocess))
    return out
