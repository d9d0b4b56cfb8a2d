"""Record ms-swift 4.6's dataset loading as tests/golden/ms_swift_datasets.json (tests/test_datasets.py compares).

    /work/msswift-venv/bin/python scripts/record_ms_swift_datasets.py

Three parts, all offline:
- `resolve`: for registered names and ids, on each hub, the id ms-swift loads, the subsets it selects
  (name, hub subset, splits) and the preprocessor class of each (the lines of ms-swift's `load_dataset` that pick
  them, run without the download);
- `sampling`: `#N`, concatenation, `--interleave_prob` / `--stopping_strategy` and `--split_dataset_ratio` on
  local files (`files()`),
  through ms-swift's `load_dataset`: the rows' queries, in order without shuffling, sorted with it (ms-swift
  shuffles the result, which swift_jax's pipeline does by itself);
- `preprocess`: local folders named like registered datasets (`folders()`), preprocessed as those datasets: each
  row's standard fields (messages, rejected_response, rejected_messages, tools, images).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden", "ms_swift_datasets.json")

RESOLVE = [
    ("AI-ModelScope/alpaca-gpt4-data-zh#500", False), ("llm-wizard/alpaca-gpt4-data-zh", True),
    ("AI-ModelScope/alpaca-gpt4-data-en", False), ("vicgalle/alpaca-gpt4", True),
    ("swift/self-cognition#500", False), ("modelscope/self-cognition:qwen3", True), ("self-cognition:empty_think", False),
    ("self-cognition", True), ("swift/sharegpt:all", False), ("swift/sharegpt:common-zh/common-en", False),
    ("modelscope/gsm8k", False), ("AI-ModelScope/LaTeX_OCR:human_handwrite/small", False), ("linxy/LaTeX_OCR", True),
    ("sentence-transformers/stsb:positive", True), ("AI-ModelScope/ruozhiba:all", False),
    ("AI-MO/NuminaMath-TIR#100", True), ("AI-MO/NuminaMath-TIR", False), ("LLM-Research/xlam-function-calling-60k:grpo", False),
    ("ms::AI-ModelScope/LongAlpaca-12k", True), ("hf::Yukang/LongAlpaca-12k", False), ("swift/swift-sft-mixture:sharegpt", False),
    ("someone/unregistered:subset_a", False), ("someone/unregistered", True),
]
SAMPLING = [
    (["a.jsonl#4"], {"shuffle": True}),
    (["a.jsonl#4"], {"shuffle": False}),
    (["a.jsonl#25", "b.jsonl#4"], {"shuffle": True}),
    (["a.jsonl#25", "b.jsonl#4"], {"shuffle": False}),
    (["a.jsonl#25", "b.jsonl#4"], {"shuffle": True, "interleave_prob": [0.3, 0.7], "stopping_strategy": "all_exhausted"}),
    (["a.jsonl", "b.jsonl"], {"shuffle": True, "interleave_prob": [0.5, 0.5], "stopping_strategy": "first_exhausted"}),
    (["a.jsonl", "b.jsonl#3", "a.jsonl#2"], {"shuffle": False, "interleave_prob": [0.2, 0.5, 0.3], "seed": 7}),
    (["a.jsonl#25", "b.jsonl"], {"shuffle": True, "split_dataset_ratio": 0.2}),
    (["a.jsonl", "b.jsonl#4"], {"shuffle": False, "split_dataset_ratio": 0.3}),
    (["a.jsonl", "b.jsonl"], {"shuffle": True, "split_dataset_ratio": 0.1, "interleave_prob": [0.5, 0.5]}),
]
PREPROCESS = [
    ("local/alpaca-gpt4-data-zh", {}), ("local/LongAlpaca-12k", {}), ("local/sql-create-context", {}),
    ("local/self-cognition", {"model_name": ["小黄", "Xiao Huang"], "model_author": ["魔搭", "ModelScope"]}),
    ("local/self-cognition:qwen3", {"model_name": ["swift-robot"], "model_author": ["swift"]}),
    ("local/LaTeX_OCR", {}), ("local/clevr_cogen_a_train", {}), ("local/shareAI-Llama3-DPO-zh-en-emoji", {}),
    ("local/orpo-dpo-mix-40k", {}), ("local/function-calling-chatml", {}), ("local/coco_2014_caption:validation", {}),
]
FIELDS = ("messages", "rejected_response", "rejected_messages", "tools", "images")


def files() -> dict[str, list[dict]]:
    """The local files of the sampling cases: a.jsonl (10 rows), b.jsonl (7 rows)."""
    return {f"{name}.jsonl": [{"query": f"{name}{i}", "response": str(i)} for i in range(n)] for name, n in (("a", 10), ("b", 7))}


def folders() -> dict[str, list[dict]]:
    """Folders (under local/) named like registered datasets, in the datasets' own columns: rows of train.jsonl, or
    {file name: rows}."""
    return {
        "alpaca-gpt4-data-zh": [{"instruction": "翻译成英文", "input": "输入：你好", "output": "Hello"},
                                {"instruction": "写一首诗", "input": "", "output": "春眠不觉晓"}],
        "LongAlpaca-12k": [{"instruction": "Summarise the paper.", "input": "", "output": "Answer:  It is short. "},
                           {"instruction": "Q", "input": "context", "output": "No prefix"}],
        "sql-create-context": [{"question": "How many heads?", "context": "CREATE TABLE head (age INTEGER)", "answer": "SELECT COUNT(*) FROM head"}],
        "self-cognition": [{"query": "你是谁？", "response": "我是{{NAME}}，由{{AUTHOR}}训练。", "tag": "zh"},
                           {"query": "Who are you?", "response": "I am {{NAME}}, trained by {{AUTHOR}}.", "tag": "en"}],
        "LaTeX_OCR": {"train.jsonl": [{"image": "formula.png", "text": "\\frac{1}{2}"}],
                      "validation.jsonl": [{"image": "v.png", "text": "x^2"}], "test.jsonl": [{"image": "t.png", "text": "y"}]},
        "clevr_cogen_a_train": [{"image": "scene.png", "problem": "How many cubes?", "solution": "<answer>3</answer>"}],
        "shareAI-Llama3-DPO-zh-en-emoji": [{"prompt": "Hi\ufe0f", "answer_zh": "你好\ufe0f", "answer_en": "Hello\ufe0f"}],
        "orpo-dpo-mix-40k": [
            {"source": "a", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
             "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]},
            {"source": "toxic-dpo-v0.2", "chosen": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "x"}],
             "rejected": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "y"}]}],
        "coco_2014_caption": {
            "README.md": "---\nconfigs:\n- config_name: coco_2014_caption\n  data_files:\n  - split: train\n    path: train.jsonl\n"
                         "  - split: validation\n    path: validation.jsonl\n---\n",
            "train.jsonl": [{"image": "a.jpg", "caption": "a dog&&a brown dog"}],
            "validation.jsonl": [{"image": "b.jpg", "caption": "two cats&&cats on a bed"}]},
        "function-calling-chatml": [{"system_message": "You may call tools.", "function_description": "{\"name\": \"a\"}\n\n{\"name\": \"b\"}",
                                     "conversations": [{"from": "system", "value": "You may call tools."},
                                                       {"from": "human", "value": "call a"}, {"from": "gpt", "value": "ok"}]}],
    }


def write_rows(path: str, rows: list[dict] | str) -> None:
    """Rows as JSON lines (a string: the file's text)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(rows if isinstance(rows, str) else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def ms_swift_plan(entry: str, use_hf: bool) -> dict:
    """What ms-swift's load_dataset would load for `entry` (its lines up to the download, copied)."""
    from swift.dataset.dataset_syntax import DatasetSyntax
    from swift.dataset.loader import DatasetLoader
    from swift.dataset.register import DATASET_MAPPING

    syntax = DatasetSyntax.parse(entry)
    use_hf = syntax.use_hf if syntax.use_hf is not None else use_hf
    if syntax.dataset in DATASET_MAPPING:
        meta = DATASET_MAPPING[syntax.dataset]
        if syntax.use_hf is None and meta.dataset_path is not None:
            syntax.dataset = meta.dataset_path
        else:
            syntax.dataset = meta.hf_dataset_id if use_hf else meta.ms_dataset_id
    else:
        meta = syntax.get_dataset_meta(use_hf)
    subsets = DatasetLoader._select_subsets(syntax.subsets, meta)
    return {"use_hf": use_hf, "dataset": syntax.dataset, "num_samples": syntax.dataset_sample,
            "subsets": [[s.name, s.subset, list(s.split), type(s.preprocess_func).__name__] for s in subsets]}


def standard(value):
    """A recorded field: messages as role/content pairs, images as their paths."""
    if isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if isinstance(value, list) and value and isinstance(value[0], dict) and "path" in value[0]:
        return [v["path"] for v in value]
    return value


def main() -> None:
    """Record the three parts."""
    import swift
    from swift.dataset import load_dataset

    out = {"ms_swift": swift.__version__, "files": files(), "folders": folders(), "resolve": [], "sampling": [], "preprocess": []}
    for entry, use_hf in RESOLVE:
        out["resolve"].append({"entry": entry, "use_hf": use_hf, "plan": ms_swift_plan(entry, use_hf)})
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            for name, rows in files().items():
                write_rows(name, rows)
            for entries, kwargs in SAMPLING:
                train, val = load_dataset(entries, **{"seed": 42, **kwargs})
                queries = [[r["messages"][0]["content"] for r in part] if part else [] for part in (train, val)]
                if kwargs["shuffle"]:
                    queries = [sorted(q) for q in queries]
                out["sampling"].append({"entries": entries, "kwargs": kwargs, "queries": queries[0], "val_queries": queries[1]})
            for name, content in folders().items():
                os.makedirs(os.path.join("local", name))
                for file, rows in (content if isinstance(content, dict) else {"train.jsonl": content}).items():
                    write_rows(os.path.join("local", name, file), rows)
            for entry, kwargs in PREPROCESS:
                train, _ = load_dataset([entry], seed=42, **kwargs)
                rows = [{k: standard(r[k]) for k in FIELDS if r.get(k) is not None} for r in train]
                out["preprocess"].append({"entry": entry, "kwargs": kwargs, "rows": rows})
        finally:
            os.chdir(cwd)
    with open(GOLDEN, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
