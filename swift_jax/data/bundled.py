"""Datasets that ship with the package and resolve offline by their hub ids, e.g. `swift/self-cognition#500`.

`swift/self-cognition` (ms-swift's id; `modelscope/self-cognition` on the HF hub) is a small set of our own
writing in ms-swift's row format (`query`, `response`, `tag` = zh | en) whose `{{NAME}}` and `{{AUTHOR}}`
placeholders are filled from `--model_name` and `--model_author` (first value for zh rows, second for en rows;
one value serves both), as ms-swift's SelfCognitionPreprocessor does. Subsets `:qwen3` (query + " /no_think",
an empty think block before the response) and `:empty_think` (the empty think block only) follow ms-swift.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
SELF_COGNITION_IDS = ("swift/self-cognition", "modelscope/self-cognition")
SELF_COGNITION_FILE = os.path.join(ASSETS, "self_cognition", "self_cognition.jsonl")
EMPTY_THINK = "<think>\n\n</think>\n\n"
SUBSETS = {"default": ("", ""), "qwen3": (" /no_think", EMPTY_THINK), "empty_think": ("", EMPTY_THINK)}


def _zh_en(values: list[str] | None) -> tuple[str | None, str | None]:
    if not values:
        return None, None
    return values[0], values[1] if len(values) > 1 else values[0]


def self_cognition_rows(subset: str = "default", model_name: list[str] | None = None, model_author: list[str] | None = None) -> list[dict]:
    """The bundled self-cognition rows as `query`/`response` pairs with the placeholders filled."""
    if subset not in SUBSETS:
        raise ValueError(f"swift/self-cognition:{subset}: unknown subset; expected one of {sorted(SUBSETS)}")
    query_suffix, response_prefix = SUBSETS[subset]
    names, authors = _zh_en(model_name), _zh_en(model_author)
    rows = []
    with open(SELF_COGNITION_FILE, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            index = 0 if row["tag"] == "zh" else 1
            query, response = row["query"], row["response"]
            for placeholder, values in (("{{NAME}}", names), ("{{AUTHOR}}", authors)):
                if values[index] is not None:
                    query, response = query.replace(placeholder, values[index]), response.replace(placeholder, values[index])
            rows.append({"query": query + query_suffix, "response": response_prefix + response})
    return rows


def resolve_bundled(specs: list[str], model_name: list[str] | None = None, model_author: list[str] | None = None) -> list[str]:
    """`--dataset` entries with bundled hub ids replaced by local files (the `#N` suffix kept); others unchanged.

    A local path of the same name wins, so a user's own `swift/self-cognition` folder is read as given."""
    out = []
    for spec in specs:
        path, sep, count = spec.rpartition("#") if "#" in spec else (spec, "", "")
        dataset_id, _, subset = path.partition(":")
        if dataset_id not in SELF_COGNITION_IDS or os.path.exists(path):
            out.append(spec)
            continue
        rows = self_cognition_rows(subset or "default", model_name, model_author)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        digest = hashlib.sha1(text.encode()).hexdigest()[:12]
        local = os.path.join(tempfile.gettempdir(), f"swift_jax_self_cognition_{digest}.jsonl")
        if not os.path.exists(local):
            with open(local + ".tmp", "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(local + ".tmp", local)
        out.append(local + (sep + count if sep else ""))
    return out
