"""Dataset entries as ms-swift reads them: the `[hf::|ms::]ID[:SUBSETS][#N]` syntax, registered names resolved to
hub ids, subsets, splits and preprocessing (against ms-swift's own resolution, recorded in
tests/golden/ms_swift_datasets.json by scripts/record_ms_swift_datasets.py), `#N` and `--interleave_prob`
picking the rows ms-swift picks, the hub choice (USE_HF, modelscope), hub-layout folders, and
`--custom_dataset_info` / `--custom_register_path` registration. Offline: no test downloads anything."""

import json
import os
import sys

import datasets
import numpy as np
import pytest
from tokenizers_for_tests import bundled_tokenizer

from swift_jax.data import DataArgs, DataError, build_data
from swift_jax.data.bundled import BUNDLED
from swift_jax.data.dataset_preprocessors import BUILT_IN
from swift_jax.data.dataset_syntax import DatasetSpec
from swift_jax.data.errors import BadRows
from swift_jax.data.formats import normalize
from swift_jax.data.frontend import read_rows
from swift_jax.data.preprocessors import Unsupported
from swift_jax.data.registry import DatasetMeta, find_meta
from swift_jax.data.resolve import LoadOptions, hub_is_hf, resolve, select_subsets
from swift_jax.data.sources import interleave_positions, load_tables
from swift_jax.data.streaming import interleave_streams, stream_mix
from swift_jax.data.templates import ChatEncoder
from swift_jax.quant.calibration import calibration_rows

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "ms_swift_datasets.json"), encoding="utf-8"))


def write_rows(path, rows):
    """JSON lines (a string: the file's text)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(rows if isinstance(rows, str) else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def messages_of(row):
    return [{"role": m["role"], "content": m["content"]} for m in normalize(row)["messages"]]


def standard_fields(row):
    """The standard fields of a preprocessed row as the recording writes them (messages as role/content pairs)."""
    out = {}
    for key in ("messages", "rejected_response", "rejected_messages", "tools", "images"):
        if row.get(key) is not None:
            value = row[key]
            out[key] = (messages_of({"messages": value}) if key.endswith("messages")
                        else [value] if key == "images" and isinstance(value, str) else value)
    return out


@pytest.fixture
def golden_files(tmp_path, monkeypatch):
    """The recording's local files and registered-name folders, in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    for name, rows in GOLDEN["files"].items():
        write_rows(name, rows)
    for name, content in GOLDEN["folders"].items():
        for file, rows in (content if isinstance(content, dict) else {"train.jsonl": content}).items():
            write_rows(os.path.join("local", name, file), rows)
    return tmp_path


def test_syntax_parses_as_ms_swift(tmp_path):
    assert DatasetSpec.parse("hf::org/name:sub1/sub2#500") == DatasetSpec("org/name", 500, ("sub1", "sub2"), True)
    assert DatasetSpec.parse("MS::org/name") == DatasetSpec("org/name", None, (), False)
    assert DatasetSpec.parse("data/a.jsonl#7") == DatasetSpec("data/a.jsonl", 7)
    odd = write_rows(tmp_path / "odd#1.jsonl", [{"query": "q", "response": "r"}])
    assert DatasetSpec.parse(odd) == DatasetSpec(odd)  # an existing path is taken whole
    assert str(DatasetSpec.parse("ms::a/b:x/y#3")) == "ms::a/b:x/y#3"
    with pytest.raises(DataError, match="positive sample count"):
        DatasetSpec.parse("a.jsonl#0")
    with pytest.raises(DataError, match="unknown hub prefix 'xx::'"):
        DatasetSpec.parse("xx::a/b")


BUILT_IN_NAMES = {cls.__name__ for cls in BUILT_IN.values()}


def theirs_kinds(plan):
    return [s[3] for s in plan["subsets"]]


def _kind(preprocess):
    return preprocess.kind if isinstance(preprocess, Unsupported) else type(preprocess).__name__


def test_registered_names_resolve_as_ms_swift():
    """Every recorded entry: the same hub, subsets, splits and preprocessor as ms-swift; the plan reads the id
    ms-swift reads (the bundled copy for self-cognition), or refuses a preprocessor swift_jax lacks by name."""
    for case in GOLDEN["resolve"]:
        theirs, spec = case["plan"], DatasetSpec.parse(case["entry"])
        use_hf = hub_is_hf(spec, case["use_hf"])
        assert use_hf == theirs["use_hf"], case
        meta = find_meta(spec.path, use_hf) or DatasetMeta()
        ours = [[s.name, s.subset, list(s.split or meta.split), _kind(s.preprocess_func or meta.preprocess_func)]
                for s in select_subsets(spec.subsets, meta)]
        assert ours == theirs["subsets"], case
        unsupported = {k for k in theirs_kinds(theirs) if k not in BUILT_IN_NAMES}
        if unsupported:
            with pytest.raises(DataError, match=f"{sorted(unsupported)[0]}, which swift_jax does not reproduce"):
                resolve(spec, LoadOptions(use_hf=case["use_hf"]))
            continue
        plan = resolve(spec, LoadOptions(use_hf=case["use_hf"]))
        assert (plan.spec.num_samples, [s.name for s in plan.subsets]) == (theirs["num_samples"], [s[0] for s in ours])
        if theirs["dataset"] in BUNDLED:
            assert (plan.source, plan.location) == ("bundled", BUNDLED[theirs["dataset"]])
        else:
            assert (plan.source, plan.location) == ("hf" if use_hf else "ms", theirs["dataset"]), case


def test_sampling_and_interleaving_pick_the_rows_ms_swift_picks(golden_files):
    """`#N` (random rows from the data seed's RandomState, or the first N), repeats past the size, concatenation,
    --interleave_prob under both stopping strategies and --split_dataset_ratio (per dataset): ms-swift's training
    and validation rows (sorted where ms-swift shuffles)."""
    for case in GOLDEN["sampling"]:
        kw = case["kwargs"]
        options = LoadOptions(shuffle=kw["shuffle"], interleave_prob=kw.get("interleave_prob"),
                              stopping_strategy=kw.get("stopping_strategy", "first_exhausted"))
        tables = load_tables(case["entries"], kw.get("seed", 42), BadRows(True), options, kw.get("split_dataset_ratio", 0.0))
        for table, expected in zip(tables, (case["queries"], case["val_queries"])):
            queries = [table[i][0]["query"] for i in range(len(table))] if table is not None else []
            assert (sorted(queries) if kw["shuffle"] else queries) == expected, case


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted"])
def test_interleave_matches_datasets_interleave(strategy):
    parts = [datasets.Dataset.from_dict({"i": list(range(o, o + n))}) for o, n in ((0, 5), (100, 12), (200, 3))]
    for probs, seed in (([0.2, 0.5, 0.3], 0), ([0.6, 0.3, 0.1], 1234)):
        theirs = datasets.interleave_datasets(parts, probs, seed=seed, stopping_strategy=strategy)["i"]
        flat = np.concatenate([p["i"] for p in parts])
        assert flat[interleave_positions([5, 12, 3], probs, seed, strategy)].tolist() == theirs
    with pytest.raises(DataError, match="one per --dataset"):
        interleave_positions([5, 12], [1.0], 0, strategy)


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted"])
def test_streamed_interleave_matches_datasets_interleave(golden_files, strategy):
    """--streaming with --interleave_prob: the rows `datasets.interleave_datasets` gives for iterable datasets, and
    the training stream reads them."""
    plans = [resolve(e) for e in ("a.jsonl", "b.jsonl#4")]
    parts = [datasets.Dataset.from_list(GOLDEN["files"]["a.jsonl"]).to_iterable_dataset(),
             datasets.Dataset.from_list(GOLDEN["files"]["b.jsonl"][:4]).to_iterable_dataset()]
    theirs = [r["query"] for r in datasets.interleave_datasets(parts, [0.3, 0.7], seed=5, stopping_strategy=strategy)]
    assert [row["query"] for row, _ in interleave_streams(plans, True, ((0.3, 0.7), 5, strategy))] == theirs
    args = DataArgs(dataset=["a.jsonl", "b.jsonl#4"], interleave_prob=[0.3, 0.7], stopping_strategy=strategy, streaming=True,
                    dataset_shuffle=False, max_length=64)
    pipe = build_data(args, bundled_tokenizer(), batch_size=1)
    assert sum(1 for _ in pipe.train_iterator(num_epochs=1)) == sum(1 for _ in interleave_streams(plans, True, stream_mix(args)))


def test_local_folders_named_like_registered_datasets_are_preprocessed_as_ms_swift(golden_files):
    """alpaca-gpt4-data-zh drops '输入：', LongAlpaca-12k drops 'Answer: ', sql-create-context maps its
    columns, self-cognition fills --model_name / --model_author (and :qwen3 adds its suffix and prefix), LaTeX_OCR
    reads its three splits, clevr, the emoji DPO set, orpo-dpo-mix-40k (toxic rows dropped),
    function-calling-chatml (tools) and coco_2014_caption (a hub-layout folder's config) as ms-swift does."""
    for case in GOLDEN["preprocess"]:
        names = {k: tuple(v) for k, v in case["kwargs"].items()}
        rows = read_rows(case["entry"], options=LoadOptions(shuffle=False, **names))
        assert [standard_fields(r) for r in rows if "__swift_jax_dropped__" not in r] == case["rows"], case["entry"]


def test_registered_folder_trains_and_streams(golden_files):
    """The same preprocessing reaches the training pipeline, loaded and streamed."""
    for streaming in (False, True):
        args = DataArgs(dataset=["local/alpaca-gpt4-data-zh#4"], max_length=64, streaming=streaming, dataset_shuffle=False)
        pipe = build_data(args, bundled_tokenizer(), batch_size=4)
        batch = next(pipe.train_iterator(num_epochs=1))
        text = bundled_tokenizer().decode(batch["input_ids"][0])
        assert "翻译成英文\n你好" in text and "输入" not in text


def test_hub_choice_use_hf_and_translation(monkeypatch):
    monkeypatch.delenv("USE_HF", raising=False)
    zh = DatasetSpec.parse("AI-ModelScope/alpaca-gpt4-data-zh")
    monkeypatch.setenv("USE_HF", "1")
    assert hub_is_hf(zh, None) and not hub_is_hf(zh, False) and not hub_is_hf(DatasetSpec.parse("ms::x/y"), True)
    assert resolve(zh).location == "llm-wizard/alpaca-gpt4-data-zh"  # the registered dataset's id on that hub
    monkeypatch.setenv("USE_HF", "false")
    assert resolve("hf::AI-ModelScope/alpaca-gpt4-data-zh").location == "llm-wizard/alpaca-gpt4-data-zh"
    assert (resolve("llm-wizard/alpaca-gpt4-data-zh").source, resolve("llm-wizard/alpaca-gpt4-data-zh").location) == (
        "ms", "AI-ModelScope/alpaca-gpt4-data-zh")
    only_ms = resolve("wyj123456/GPT4all", LoadOptions(use_hf=True))  # registered on ModelScope only
    assert (only_ms.source, only_ms.location) == ("ms", "wyj123456/GPT4all")
    monkeypatch.setenv("USE_HF", "maybe")
    with pytest.raises(DataError, match="USE_HF='maybe'"):
        resolve(zh)


def test_modelscope_missing_names_the_package(monkeypatch):
    monkeypatch.delenv("USE_HF", raising=False)
    monkeypatch.setitem(sys.modules, "modelscope", None)  # as if not installed
    assert resolve("someone/unregistered").source == "hf"  # the default hub without modelscope
    with pytest.raises(DataError, match=r"needs the modelscope package: pip install modelscope"):
        read_rows("ms::AI-ModelScope/alpaca-gpt4-data-zh#3")


def test_hub_layout_folder_subsets(tmp_path):
    """A folder laid out as a hub dataset repo (README configs): `folder:SUBSET` reads that config's split;
    a missing config is an error naming the folder, subset and split."""
    repo = tmp_path / "my_hub_data"
    write_rows(repo / "a" / "train.jsonl", [{"query": "qa", "response": "ra"}])
    write_rows(repo / "b" / "train.jsonl", [{"query": "qb", "response": "rb"}, {"query": "qb2", "response": "rb2"}])
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: sub_a\n  data_files:\n  - split: train\n    path: a/*.jsonl\n"
                                    "- config_name: sub_b\n  data_files:\n  - split: train\n    path: b/*.jsonl\n---\n")
    assert [r["query"] for r in read_rows(f"{repo}:sub_b")] == ["qb", "qb2"]
    assert [r["query"] for r in read_rows(f"{repo}:sub_a/sub_b#2")] == ["qa", "qb"]
    with pytest.raises(DataError, match="subset 'nope' split 'train' from the folder failed"):
        read_rows(f"{repo}:nope")


def test_hugging_face_cache_serves_registered_names_offline(tmp_path, monkeypatch):
    """A dataset repo in the local Hugging Face hub cache is read from there (no network), under the registered
    name's preprocessing; its snapshot folder passed as a path is preprocessed the same (ms-swift's rule)."""
    import huggingface_hub

    repo = tmp_path / "hub" / "datasets--llm-wizard--alpaca-gpt4-data-zh"
    write_rows(repo / "snapshots" / "abc123" / "train.jsonl", GOLDEN["folders"]["alpaca-gpt4-data-zh"])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    expected = [r["messages"] for r in next(c["rows"] for c in GOLDEN["preprocess"] if c["entry"] == "local/alpaca-gpt4-data-zh")]
    rows = read_rows("AI-ModelScope/alpaca-gpt4-data-zh", options=LoadOptions(use_hf=True, shuffle=False))
    assert [messages_of(r) for r in rows] == expected
    assert [messages_of(r) for r in read_rows(str(repo / "snapshots" / "abc123"))] == expected


def test_columns_rename_before_a_registered_preprocessor(tmp_path):
    folder = tmp_path / "alpaca-gpt4-data-zh"
    write_rows(folder / "train.jsonl", [{"instr": "翻译成英文", "input": "输入：你好", "output": "Hello"}])
    (row,) = read_rows(str(folder), options=LoadOptions.of(DataArgs(columns={"instr": "instruction"}), shuffle=False))
    assert messages_of(row) == [{"role": "user", "content": "翻译成英文\n你好"}, {"role": "assistant", "content": "Hello"}]


def test_plain_folders_with_registered_names_still_read(tmp_path):
    """A user's folder that happens to share a registered dataset's name (gsm8k: subset 'main'; sharegpt: three
    subsets, no default) is read whole, with that dataset's preprocessing."""
    for name in ("gsm8k", "sharegpt"):
        folder = write_rows(tmp_path / name / "part.jsonl", [{"query": f"{name} q", "response": "r"}])
        assert [r["query"] for r in read_rows(os.path.dirname(folder))] == [f"{name} q"]


def test_flags_parse(tmp_path):
    from swift_jax.cli import parse_config
    from swift_jax.config import TrainArguments

    flags = ["--model", "m", "--dataset", "a.jsonl#3", "hf::b/c:x/y#4", "--interleave_prob", "0.3", "0.7", "--stopping_strategy",
             "all_exhausted", "--use_hf", "true", "--hub_token", "t", "--custom_dataset_info", "i.json", "--custom_register_path", "p.py"]
    data = parse_config(TrainArguments, flags).data
    assert (data.dataset, data.interleave_prob, data.stopping_strategy, data.use_hf, data.hub_token) == (
        ["a.jsonl#3", "hf::b/c:x/y#4"], [0.3, 0.7], "all_exhausted", True, "t")
    assert (data.custom_dataset_info, data.custom_register_path) == (["i.json"], ["p.py"])


def test_custom_dataset_info_registers_names_columns_and_subsets(tmp_path):
    write_rows(tmp_path / "data" / "rows.jsonl", [{"q": f"question {i}", "a": f"answer {i}"} for i in range(5)])
    info = tmp_path / "my_info.json"
    info.write_text(json.dumps([
        {"dataset_name": "cdi-local", "dataset_path": "data/rows.jsonl", "columns": {"q": "query", "a": "response"}},
        {"ms_dataset_id": "cdi/remote", "hf_dataset_id": "cdi/remote-hf", "split": ["train", "validation"],
         "subsets": [{"subset": "s1", "columns": {"problem": "query"}}, "s2"]},
    ]))
    options = LoadOptions.of(DataArgs(custom_dataset_info=[str(info)], dataset_shuffle=False))
    rows = read_rows("cdi-local#2", options=options)
    assert [messages_of(r) for r in rows] == [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
                                             for i in range(2)]
    plan = resolve("cdi/remote:all", LoadOptions(use_hf=True))
    assert plan.location == "cdi/remote-hf" and [(s.subset, s.split) for s in plan.subsets] == [("s1", ("train", "validation")),
                                                                                               ("s2", ("train", "validation"))]
    assert plan.subsets[0].preprocess({"problem": "p", "response": "r"})["query"] == "p"
    with pytest.raises(DataError, match="several subsets; choose with cdi/remote:SUBSET"):
        resolve("cdi/remote")


def test_custom_register_path_plugin(tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", [{"text1": "a cat", "text2": "a dog", "label": 1.25}])
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "from swift_jax.data.registry import DatasetMeta, ResponsePreprocessor, register_dataset\n\n"
        "class StsbPreprocessor(ResponsePreprocessor):\n"
        "    def preprocess(self, row):\n"
        "        return super().preprocess({'query': f\"{row['text1']} / {row['text2']}\", 'response': f\"{row['label']:.1f}\"})\n\n"
        f"register_dataset(DatasetMeta(dataset_name='plugin-stsb', dataset_path={data!r}, preprocess_func=StsbPreprocessor()))\n"
    )
    args = DataArgs(custom_register_path=[str(plugin)])
    (row,) = read_rows("plugin-stsb", options=LoadOptions.of(args))
    assert messages_of(row) == [{"role": "user", "content": "a cat / a dog"}, {"role": "assistant", "content": "1.2"}]
    LoadOptions.of(args)  # registering again in the same process is a no-op, not a duplicate error


def test_hash_n_everywhere_a_dataset_is_read(tmp_path):
    """`data.jsonl#N` in the readers of infer's --val_dataset, eval and export's calibration set (read_rows)."""
    data = write_rows(tmp_path / "data.jsonl", [{"query": f"count {i}", "response": "one two three"} for i in range(6)])
    assert [r["query"] for r in read_rows(f"{data}#2")] == ["count 0", "count 1"]  # the first N, as ms-swift's val sets
    assert len(read_rows(f"{data}#9")) == 9  # past the size: the set, then the first rows again
    encoder = ChatEncoder(bundled_tokenizer())
    one = calibration_rows(encoder, [f"{data}#1"], n_samples=8, seq_len=4)
    all_rows = calibration_rows(encoder, [data], n_samples=64, seq_len=4)
    assert 0 < len(one) < len(all_rows)


def test_preprocessing_failures_are_bad_rows(tmp_path):
    folder = tmp_path / "self-cognition"
    write_rows(folder / "train.jsonl", [{"query": "q", "response": "I am {{NAME}}", "tag": "en"}, {"prompt": "no query", "tag": "zh"}])
    pipe = build_data(DataArgs(dataset=[str(folder)], max_length=64, strict=False, model_name=["bot"]), bundled_tokenizer(), batch_size=1)
    assert pipe.stats["bad_rows_skipped"] >= 1 and pipe.stats["num_train_samples"] == 1
    with pytest.raises(DataError, match=r"self-cognition:default/train, row 1: the dataset.s preprocessing failed on this row \("):
        build_data(DataArgs(dataset=[str(folder)], max_length=64), bundled_tokenizer(), batch_size=1)
