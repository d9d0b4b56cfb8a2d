"""Loading (files, folders, #N, mixing, split), packing, iterator state, process sharding, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
from tokenizers_for_tests import bundled_tokenizer

from swift_jax.data import DataArgs, DataError, build_data
from swift_jax.data.batching import pack, packing_efficiency
from swift_jax.data.templates import IGNORE

WORDS = [f"w{i}" for i in range(60)]


def rows(words=WORDS):
    return [{"messages": [{"role": "user", "content": f"reverse {w}"}, {"role": "assistant", "content": w[::-1]}]} for w in words]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


@pytest.fixture
def jsonl(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", rows())


def build(paths, batch_size=4, **kw):
    kw.setdefault("max_length", 64)
    return build_data(DataArgs(dataset=list(paths), **kw), bundled_tokenizer(), batch_size=batch_size)


def user_texts(pipe, batches):
    """The user prompt of every segment in `batches` (identifies each sample)."""
    tok, out = bundled_tokenizer(), []
    for b in batches:
        for ids, seg in zip(b["input_ids"], b["segment_ids"]):
            for s in range(1, seg.max() + 1):
                text = tok.decode(ids[seg == s])
                out.append(text.split("user\n")[1].split("<|im_end|>")[0])
    return out


def test_file_types_and_folders_load_the_same_rows(tmp_path, jsonl):
    flat = [{"query": f"reverse {w}", "response": w[::-1]} for w in WORDS]
    (tmp_path / "d").mkdir()
    pd.DataFrame(flat[:30]).to_csv(tmp_path / "d" / "a.csv", index=False)
    pd.DataFrame(flat[30:]).to_parquet(tmp_path / "d" / "b.parquet")
    (tmp_path / "all.json").write_text(json.dumps(rows()))
    expected = sorted(f"reverse {w}" for w in WORDS)
    for source in (jsonl, str(tmp_path / "all.json"), str(tmp_path / "d")):
        pipe = build([source], dataset_shuffle=False)
        assert pipe.stats["num_train_samples"] == 60
        batches = [next(pipe.train_iterator(num_epochs=1)) for _ in range(1)]
        assert user_texts(pipe, batches)[0] in expected
        assert sorted(user_texts(pipe, list(pipe.train_iterator(num_epochs=1)))) == expected


def test_sampling_mixing_and_split(tmp_path, jsonl):
    other = write_jsonl(tmp_path / "other.jsonl", rows([f"x{i}" for i in range(10)]))
    few = build([f"{jsonl}#7"], dataset_shuffle=False, batch_size=1)
    got = user_texts(few, list(few.train_iterator(num_epochs=1)))
    assert len(got) == 7 and len(set(got)) == 7  # N < size: distinct rows
    many = build([f"{jsonl}#150", other], dataset_shuffle=False, batch_size=1)
    got = user_texts(many, list(many.train_iterator(num_epochs=1)))
    counts = {w: got.count(f"reverse {w}") for w in WORDS}
    assert len(got) == 160 and min(counts.values()) >= 2 and sum(counts.values()) == 150  # 2 full passes + 30
    assert sum(t.startswith("reverse x") for t in got) == 10
    split = build([jsonl], split_dataset_ratio=0.1)
    assert (split.stats["num_train_samples"], split.stats["num_val_samples"]) == (54, 6)
    val = split.val_batches()
    assert len(val) == 2 and all(b["input_ids"].shape == (4, 64) for b in val)
    val_texts = user_texts(split, val)
    train_texts = user_texts(split, list(split.train_iterator(num_epochs=1)))
    assert len(val_texts) == 6 and not set(val_texts) & set(train_texts)


def test_batches_have_the_documented_layout(jsonl):
    for packing in (False, True):
        pipe = build([jsonl], packing=packing)
        batch = next(pipe.train_iterator())
        assert set(batch) == {"input_ids", "labels", "segment_ids", "positions"}
        for v in batch.values():
            assert v.shape == (4, 64) and v.dtype == np.int32
        seg, pos, labels = batch["segment_ids"], batch["positions"], batch["labels"]
        pad = bundled_tokenizer().pad_token_id
        assert (batch["input_ids"][seg == 0] == pad).all() and (labels[seg == 0] == IGNORE).all() and (pos[seg == 0] == 0).all()
        for r in range(4):
            for s in range(1, seg[r].max() + 1):
                where = np.flatnonzero(seg[r] == s)
                assert (np.diff(where) == 1).all()  # contiguous
                np.testing.assert_array_equal(pos[r, where], np.arange(len(where)))
                assert labels[r, where[0]] == IGNORE  # a shift never crosses samples
        if packing:
            assert seg.max() > 1 and pipe.stats["packing_efficiency"] > 0.8


def test_packing_never_splits_and_fills_rows_on_lognormal_lengths():
    import grain

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(300), 1.0, 3000).astype(int), 8, 2048)
    samples = [{"input_ids": np.full(n, i, np.int32), "labels": np.full(n, i, np.int32)} for i, n in enumerate(lengths)]
    packed = list(pack(grain.MapDataset.source(samples).to_iter_dataset(), 2048, -1, 64, seed=0, shuffle=True))
    efficiency = packing_efficiency(packed)
    assert efficiency > 0.95, efficiency
    seen = {}
    for row in packed:
        for s in range(1, row["segment_ids"].max() + 1):
            ids = row["input_ids"][row["segment_ids"] == s]
            assert len(set(ids.tolist())) == 1  # one sample per segment
            seen[int(ids[0])] = len(ids)
    assert seen == {i: int(n) for i, n in enumerate(lengths)}  # every sample once, whole


@pytest.mark.parametrize("packing", [False, True])
def test_iterator_state_restores_the_same_stream(jsonl, packing):
    pipe = build([jsonl], packing=packing, dataset_num_proc=2)
    it = pipe.train_iterator()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(20)]  # crosses epoch boundaries
    resumed = build([jsonl], packing=packing, dataset_num_proc=2).train_iterator()
    resumed.set_state(json.loads(json.dumps(state)))  # the state survives a JSON round trip (checkpoint)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_processes_get_disjoint_shares_and_epochs_reshuffle(tmp_path, jsonl):
    args = DataArgs(dataset=[jsonl], max_length=64)
    shares = []
    for p in range(2):
        pipe = build_data(args, bundled_tokenizer(), batch_size=1, process_index=p, process_count=2)
        shares.append(user_texts(pipe, list(pipe.train_iterator(num_epochs=1))))
    assert len(shares[0]) == len(shares[1]) == 30 and not set(shares[0]) & set(shares[1])
    one = build([jsonl], batch_size=1)
    two_epochs = user_texts(one, list(one.train_iterator(num_epochs=2)))
    assert sorted(two_epochs[:60]) == sorted(two_epochs[60:]) and two_epochs[:60] != two_epochs[60:]
    assert one.steps_per_epoch == 60


BAD_INPUTS = {
    "malformed_json": ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n', r"line 2: not valid JSON"),
    "unknown_format": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}\n\n{"foo": 1, "bar": 2}\n', r"line 3: unknown row format with keys \['bar', 'foo'\]"),
    "missing_role": ('{"messages": [{"content": "hi"}, {"role": "assistant", "content": "ho"}]}\n', r"line 1: message 0 has no 'role'"),
    "missing_content": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n', r"line 1: message 1 \(role 'assistant'\) has no 'content'"),
    "empty": ("", r"the dataset is empty"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_names_file_and_line(tmp_path, name):
    text, message = BAD_INPUTS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=f"{name}.jsonl" + (", " + message if "line" in message else ": " + message)):
        build([str(path)])


def test_strict_false_skips_and_counts_bad_rows(tmp_path):
    good = [json.dumps(r) for r in rows()[:10]]
    text = "\n".join(good[:4] + ['{"messages": [', '{"foo": 1}'] + good[4:] + ['{"messages": [{"content": "x"}]}']) + "\n"
    path = tmp_path / "mixed.jsonl"
    path.write_text(text)
    pipe = build([str(path)], strict=False, batch_size=1)
    assert pipe.stats["bad_rows_skipped"] == 3 and pipe.stats["num_train_samples"] == 10
    assert len(list(pipe.train_iterator(num_epochs=1))) == 10


def test_missing_dataset_and_bad_spec(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file or folder"):
        build([str(tmp_path / "nope.jsonl")])
    with pytest.raises(DataError, match="positive sample count"):
        build([str(tmp_path / "a.jsonl#x")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="folder holds no data files"):
        build([str(tmp_path / "empty_dir")])


def test_streaming_reads_every_row_and_resumes(jsonl):
    pipe = build([jsonl], streaming=True, shuffle_buffer_size=16, batch_size=1)
    assert pipe.stats["streaming"] and 40 <= pipe.steps_per_epoch <= 80  # estimated from bytes per row
    assert sorted(user_texts(pipe, list(pipe.train_iterator(num_epochs=1)))) == sorted(f"reverse {w}" for w in WORDS)
    packed = build([jsonl], streaming=True, packing=True, batch_size=2)
    it = packed.train_iterator()
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(6)]
    again = build([jsonl], streaming=True, packing=True, batch_size=2).train_iterator()
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["input_ids"], w["input_ids"])


def test_streaming_sample_counts_repeat_a_small_dataset(jsonl):
    pipe = build([f"{jsonl}#150"], streaming=True, dataset_shuffle=False, batch_size=1)
    texts = user_texts(pipe, list(pipe.train_iterator(num_epochs=1)))
    assert len(texts) == 150 and pipe.steps_per_epoch == 150
    assert texts == [f"reverse {w}" for w in WORDS * 3][:150]  # two full passes, then the first 30 rows


def test_bad_rows_found_while_training_name_their_line(tmp_path, monkeypatch):
    import swift_jax.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "PROBE_ROWS", 5)  # the probe misses the bad row; the stream finds it
    path = write_jsonl(tmp_path / "late.jsonl", rows()[:40] + [{"foo": 1}] + rows()[40:])
    pipe = build([path], dataset_shuffle=False, dataset_num_proc=2)
    with pytest.raises(DataError, match=r"late.jsonl, line 41: unknown row format"):
        list(pipe.train_iterator(num_epochs=1))


def test_inspect_shows_trained_part_and_statistics(capsys):
    import os

    from swift_jax.data.inspect import main

    config = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.yaml")
    stats = main(["--config", config, "--num_samples", "2", "--packing", "true"])
    out = capsys.readouterr().out
    assert out.count("--- sample ") == 2 + 1  # two samples, then the "sample lengths" header
    assert "<|im_start|>assistant\n[[" in out and "<|im_end|>\n]]" in out
    assert "sample lengths" in out and f"packing_efficiency: {stats['packing_efficiency']}" in out


def test_packing_length_sets_the_row_length_and_max_length_the_sample_length(jsonl):
    pipe = build([jsonl], batch_size=2, max_length=40, packing=True, packing_length=160)
    batch = next(pipe.train_iterator())
    assert batch["input_ids"].shape == (2, 160) and batch["segment_ids"].max() >= 3  # several samples per row
    for row in batch["segment_ids"]:
        assert max(int((row == s).sum()) for s in range(1, row.max() + 1)) <= 40
