"""Preference data: row shapes, errors naming row and field, pair rows (padded and packed), KTO's KL examples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swift_jax.data import DataArgs, DataError
from swift_jax.rlhf.preference.data import MAX_PAIRS_PER_ROW, PairProcessor, build_preference_data, rlhf_data_args
from swift_jax.rlhf.preference.rows import preference_of
from tokenizers_for_tests import bundled_tokenizer

ASK = [{"role": "user", "content": "2+2?"}]


def answers(pref):
    return pref.chosen["messages"][-1]["content"], pref.rejected["messages"][-1]["content"]


@pytest.mark.parametrize("row", [
    {"messages": ASK + [{"role": "assistant", "content": "4"}], "rejected_response": "5"},
    {"messages": ASK + [{"role": "assistant", "content": "4"}], "rejected_messages": ASK + [{"role": "assistant", "content": "5"}]},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": ASK, "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]},
    {"chosen": ASK + [{"role": "assistant", "content": "4"}], "rejected": ASK + [{"role": "assistant", "content": "5"}]},
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "rejected_response": "5"},
], ids=["rejected_response", "rejected_messages", "prompt_strings", "prompt_lists", "implicit_prompt", "sharegpt"])
def test_preference_row_shapes(row):
    pref = preference_of({**row, "system": "be brief"}, "dpo")
    assert answers(pref) == ("4", "5")
    for sample in (pref.chosen, pref.rejected):
        assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant"]
        assert sample["messages"][1]["content"] == "2+2?"


def test_margin_and_kto_label():
    assert preference_of({"prompt": "a", "chosen": "b", "rejected": "c", "margin": 2}, "rm").margin == 2.0
    kto = preference_of({"messages": ASK + [{"role": "assistant", "content": "4"}], "label": False}, "kto")
    assert kto.label is False and kto.rejected is None
    assert preference_of({"prompt": "2+2?", "completion": "4", "label": True}, "kto").label is True


@pytest.mark.parametrize("rlhf_type,row,field", [
    ("dpo", {"messages": ASK + [{"role": "assistant", "content": "4"}]}, "rejected_response"),
    ("dpo", {"prompt": "2+2?", "chosen": "4"}, "rejected"),
    ("orpo", {"messages": ASK, "rejected_response": "5"}, "rejected_response"),
    ("kto", {"messages": ASK + [{"role": "assistant", "content": "4"}]}, "label"),
    ("rm", {"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}, "margin"),
])
def test_a_row_missing_what_its_type_needs_names_row_and_field(tmp_path, rlhf_type, row, field):
    path = tmp_path / "data.jsonl"
    good = {"messages": ASK + [{"role": "assistant", "content": "4"}], "rejected_response": "5", "label": True}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        build_preference_data(DataArgs(dataset=[str(path)], max_length=64), bundled_tokenizer(), rlhf_type, batch_size=2)
    assert f"{path}, line 2" in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("rlhf_type,trained", [("dpo", ["4"]), ("orpo", ["1", "4"])])
def test_only_the_final_answer_is_trained_except_for_orpo(rlhf_type, trained):
    """ms-swift's RLHF loss_scale: last_round (earlier turns are context); ORPO keeps `default` (every turn)."""
    tok = bundled_tokenizer()
    row = {"messages": [{"role": "user", "content": "0+1?"}, {"role": "assistant", "content": "1"}, *ASK,
                        {"role": "assistant", "content": "4"}], "rejected_response": "5"}
    process = PairProcessor(rlhf_data_args(DataArgs(max_length=64), rlhf_type), tok, rlhf_type)
    sample = process((row, "row 0"))
    chosen = sample["labels"][sample["part"] == 0]
    answers = tok.decode(chosen[chosen != -100]).replace("<|im_end|>", "|").split("|")
    assert [a.strip() for a in answers if a.strip()] == trained


def _pairs_of_row(row):
    """[(chosen tokens, rejected tokens)] of one row from its segment ids (odd = chosen, next = rejected)."""
    seg = row["segment_ids"]
    return [(row["input_ids"][seg == k], row["input_ids"][seg == k + 1]) for k in range(1, seg.max() + 1, 2)]


@pytest.mark.parametrize("packing", [False, True])
def test_rows_hold_whole_pairs(packing):
    args = DataArgs(dataset=["swift_jax/assets/preference/train.jsonl#24"], max_length=32, packing=packing, dataset_shuffle=False)
    tok = bundled_tokenizer()
    pipe = build_preference_data(args, tok, "dpo", batch_size=2, seed=0, shuffle=False)
    assert pipe.pairs_per_row == (MAX_PAIRS_PER_ROW if packing else 1)
    batches = list(pipe.train_iterator(num_epochs=1))
    seen = []
    for batch in batches:
        assert batch["input_ids"].shape == (2, 64)
        for r in range(2):
            row = {k: v[r] for k, v in batch.items()}
            pos, seg = row["positions"], row["segment_ids"]
            for k in range(1, seg.max() + 1):  # positions restart in every answer; segments alternate c, r
                np.testing.assert_array_equal(pos[seg == k], np.arange((seg == k).sum()))
            for chosen, rejected in _pairs_of_row(row):
                assert tok.decode(chosen).split("user\n")[1].split("<|im_end|>")[0] == tok.decode(rejected).split("user\n")[1].split("<|im_end|>")[0]
                seen.append(tok.decode(chosen))
    assert len(seen) == 24 and len(set(seen)) == 24  # every pair once, never split
    assert pipe.stats["num_train_pairs"] == 24


@pytest.mark.parametrize("streaming", [False, True])
def test_kto_kl_example_borrows_the_previous_answer_in_its_group(streaming):
    args = DataArgs(dataset=["swift_jax/assets/preference/kto.jsonl#8"], max_length=32, dataset_shuffle=False, streaming=streaming)
    tok = bundled_tokenizer()
    pipe = build_preference_data(args, tok, "kto", batch_size=4, seed=0, shuffle=False)
    assert pipe.streaming == streaming
    batch = next(pipe.train_iterator())
    answer = lambda ids: tok.decode(ids).split("assistant\n")[-1]
    prompt = lambda ids: tok.decode(ids).split("assistant\n")[0]
    rows = [_pairs_of_row({k: v[r] for k, v in batch.items()})[0] for r in range(4)]
    for r, (example, kl) in enumerate(rows):
        assert prompt(kl) == prompt(example)
        assert answer(kl) == answer(rows[(r - 1) % 4][0])
    for r, (example, _) in enumerate(rows):  # the label rides on the pair: false = the copied-letters mistake
        word = tok.decode(example).split(": ")[1].split("<|im_end|>")[0]
        assert batch["pair_value"][r, 0] == float(answer(example).split("<|im_end|>")[0] != "= " + word)


@pytest.mark.parametrize("streaming", [False, True])
def test_validation_batches_pad_with_empty_rows_and_the_iterator_resumes(streaming):
    args = DataArgs(dataset=["swift_jax/assets/preference/train.jsonl#12"], val_dataset=["swift_jax/assets/preference/val.jsonl#3"],
                    max_length=32, streaming=streaming, packing=streaming)
    pipe = build_preference_data(args, bundled_tokenizer(), "dpo", batch_size=2, seed=0)
    val = pipe.val_batches()
    assert len(val) == 2 and (val[1]["segment_ids"][1] == 0).all()
    it = pipe.train_iterator()
    next(it)
    state = it.get_state()
    expected = next(it)
    again = pipe.train_iterator()
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["input_ids"], expected["input_ids"])
