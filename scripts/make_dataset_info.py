"""Write swift_jax/data/dataset_info.json: ms-swift's registered datasets as our own table.

Run with ms-swift's interpreter (it imports `swift.dataset`, whose import registers ms-swift's built-in
`dataset_info.json` and the Python registrations of `swift/dataset/dataset/llm.py` and `mllm.py`):

    /work/msswift-venv/bin/python scripts/make_dataset_info.py

Each entry keeps the hub ids (ModelScope and Hugging Face), revisions, the local `dataset_path`, the alias
`dataset_name`, the splits and subsets, the tags, and the preprocessing as data: `{"type": NAME, ...}` where NAME
is one swift_jax implements (auto, messages, response, alpaca, alpaca_zh, long_alpaca, self_cognition) with its
column mapping and keyword arguments, or ms-swift's class name for preprocessors that do more than rename
columns (loading such a dataset raises an error naming it and `--columns` / a plugin as the way forward).
"""

from __future__ import annotations

import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "swift_jax", "data", "dataset_info.json")

# ms-swift class -> our preprocessor type, for classes whose behaviour is reproduced row by row
SAME = {
    "AutoPreprocessor": "auto",
    "ResponsePreprocessor": "response",
    "AlpacaPreprocessor": "alpaca",
    "AlpacaZhPreprocessor": "alpaca_zh",
    "LongAlpacaPreprocessor": "long_alpaca",
    "SelfCognitionPreprocessor": "self_cognition",
    "MessagesPreprocessor": "messages",
}


def describe(func) -> dict:
    """Our `preprocess` record of one ms-swift preprocess_func."""
    from swift.dataset.preprocessor.core import default_repair_messages

    name = type(func).__name__
    kind = SAME.get(name, name)
    if name == "MessagesPreprocessor" and func.repair_messages is not default_repair_messages:
        kind = "MessagesPreprocessor(repair_messages)"  # a Python repair function: not a table entry
    out = {"type": kind}
    columns = func.columns if name == "AutoPreprocessor" else getattr(func, "origin_columns", None)
    if columns:
        out["columns"] = dict(columns)
    if kind == "messages":
        defaults = {"role_keys": ["role", "from"], "content_keys": ["content", "value"], "user_roles": ["user", "human"],
                    "assistant_roles": ["assistant", "gpt", "bot"], "system_role": "system", "inner_key": None}
        for key, default in defaults.items():
            value = getattr(func, key)
            if value != default:
                out[key.rstrip("s") if key.endswith("s") else key] = value[0] if isinstance(value, list) else value
    if kind == "self_cognition":
        out.update({k: getattr(func, k) for k in ("query_suffix", "response_prefix") if getattr(func, k)})
    return out


def entry(meta) -> dict:
    """One DatasetMeta as a JSON object (fields left out when at ms-swift's default)."""
    out = {k: getattr(meta, k) for k in ("ms_dataset_id", "hf_dataset_id", "dataset_path", "dataset_name", "ms_revision", "hf_revision")
           if getattr(meta, k) is not None}
    if meta.split != ["train"]:
        out["split"] = list(meta.split)
    top = describe(meta.preprocess_func)
    if top != {"type": "auto"}:
        out["preprocess"] = top
    subsets = []
    for s in meta.subsets:
        sub = {"name": s.name, "subset": s.subset}
        if s.split is not None:
            sub["split"] = list(s.split)
        if s.preprocess_func is not None:
            sub["preprocess"] = describe(s.preprocess_func)
        if s.is_weak_subset:
            sub["is_weak_subset"] = True
        subsets.append(sub["name"] if sub == {"name": s.name, "subset": s.name} else sub)
    if subsets != ["default"]:
        out["subsets"] = subsets
    if meta.tags:
        out["tags"] = list(meta.tags)
    if meta.huge_dataset:
        out["huge_dataset"] = True
    return out


def main() -> None:
    """Import ms-swift's registry and write our table."""
    import swift
    from swift.dataset.register import DATASET_MAPPING

    table = [entry(meta) for meta in DATASET_MAPPING.values()]
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in table) + "\n]\n")
    kinds = sorted({p["type"] for e in table for p in [e.get("preprocess", {"type": "auto"})] + [s.get("preprocess", {"type": "auto"}) for s in e.get("subsets", []) if isinstance(s, dict)]})
    print(f"wrote {len(table)} datasets of ms-swift {swift.__version__} to {OUT}; preprocess types: {kinds}", file=sys.stderr)


if __name__ == "__main__":
    main()
