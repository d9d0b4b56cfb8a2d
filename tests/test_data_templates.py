"""Formats -> messages, chat templates -> loss masks (token by token), truncation, --system, --template."""

import json

import numpy as np
import pytest
from tokenizers_for_tests import base_tokenizer, bundled_tokenizer, llama3_tokenizer, qwen3_tokenizer, qwen25_tokenizer

from swift_jax.data import DataArgs, DataError, normalize
from swift_jax.data.samples import SampleProcessor
from swift_jax.data.templates import IGNORE, ChatEncoder

EXPECTED = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "reverse hello"},
    {"role": "assistant", "content": "olleh"},
]
HISTORY = [["What is the capital of France?", "Paris."]]

SAME_CONVERSATION = {
    "messages": {"messages": EXPECTED},
    "sharegpt": {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "What is the capital of France?"},
            {"from": "gpt", "value": "Paris."},
            {"from": "human", "value": "reverse hello"},
            {"from": "gpt", "value": "olleh"},
        ],
    },
    "alpaca": {"system": "Be brief.", "history": HISTORY, "instruction": "reverse", "input": "hello", "output": "olleh"},
    "query_response": {"system": "Be brief.", "history": HISTORY, "query": "reverse hello", "response": "olleh"},
    "prompt_completion": {"system": "Be brief.", "history": HISTORY, "prompt": "reverse hello", "completion": "olleh"},
}


@pytest.mark.parametrize("name", sorted(SAME_CONVERSATION))
def test_every_format_gives_the_same_messages(name):
    row = SAME_CONVERSATION[name]
    if name == "alpaca":  # alpaca joins instruction and input with a newline
        expected = EXPECTED[:3] + [{"role": "user", "content": "reverse\nhello"}, EXPECTED[4]]
    else:
        expected = EXPECTED
    assert normalize(row)["messages"] == expected


def test_text_and_column_mapping():
    assert normalize({"text": "plain words"}) == {"text": "plain words"}
    assert normalize({"q": "hi", "a": "ho"}, columns={"q": "query", "a": "response"})["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ho"},
    ]


def _runs(tokenizer, ids, labels):
    """Decoded text of each maximal run of trained / untrained tokens, in order, as (trained, text)."""
    runs, current, trained = [], [], None
    for tok, lab in zip(ids.tolist(), labels.tolist()):
        flag = lab != IGNORE
        if flag != trained and current:
            runs.append((trained, tokenizer.decode(current)))
            current = []
        trained = flag
        current.append(tok)
    runs.append((trained, tokenizer.decode(current)))
    return runs


TEMPLATE_CASES = {
    # tokenizer -> (trained parts, in order; the full rendering)
    "chatml": (bundled_tokenizer, ["Paris.<|im_end|>\n", "olleh<|im_end|>\n"]),
    "qwen2.5": (qwen25_tokenizer, ["Paris.<|im_end|>\n", "olleh<|im_end|>\n"]),
    "llama3": (llama3_tokenizer, ["Paris.<|eot_id|>", "olleh<|eot_id|>"]),
}


@pytest.mark.parametrize("name", sorted(TEMPLATE_CASES))
@pytest.mark.parametrize("with_system", [True, False])
def test_mask_is_exactly_the_assistant_turns(name, with_system):
    make, trained_parts = TEMPLATE_CASES[name]
    tokenizer = make()
    messages = EXPECTED if with_system else EXPECTED[1:]
    enc = ChatEncoder(tokenizer).encode({"messages": messages})
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    # the ids are the tokenisation of the template's own rendering (what inference sees)
    assert tokenizer.decode(enc.input_ids) == full
    assert enc.input_ids.tolist() == tokenizer(full, add_special_tokens=False).input_ids
    runs = _runs(tokenizer, enc.input_ids, enc.labels)
    assert [text for trained, text in runs if trained] == trained_parts
    # everything else (system, user, headers) is not trained, and labels equal ids where trained
    assert "".join(text for _, text in runs) == full
    trained = enc.labels != IGNORE
    np.testing.assert_array_equal(enc.labels[trained], enc.input_ids[trained])
    if name == "qwen2.5" and not with_system:  # the template's default system prompt is present, untrained
        assert runs[0][1].startswith("<|im_start|>system\nYou are Qwen") and runs[0][0] is False


def test_mask_for_a_template_that_rewrites_earlier_turns():
    """Qwen3 drops the reasoning of assistant turns before the last user message: the earlier turn is not a
    prefix of the whole rendering, so its span is found in the rendering (content + `<|im_end|>\\n`)."""
    tokenizer = qwen3_tokenizer()
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "<think>\nrecall it\n</think>\n\nParis."},
        {"role": "user", "content": "reverse hello"},
        {"role": "assistant", "content": "<think>\nreverse it\n</think>\n\nolleh"},
    ]
    enc = ChatEncoder(tokenizer).encode({"messages": messages})
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "recall it" not in full and "reverse it" in full  # the template rewrote the first turn
    runs = _runs(tokenizer, enc.input_ids, enc.labels)
    assert "".join(text for _, text in runs) == full
    assert [text for trained, text in runs if trained] == [
        "Paris.<|im_end|>\n",
        "<think>\nreverse it\n</think>\n\nolleh<|im_end|>\n",
    ]


def test_a_template_that_hides_an_earlier_turn_gives_a_clear_error():
    hiding = (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' }}"
        "{%- if m.role == 'assistant' and not loop.last %}[hidden]{% else %}{{ m.content }}{% endif %}"
        "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    encoder = ChatEncoder(base_tokenizer(), template=None)
    encoder._template = hiding
    with pytest.raises(DataError, match="rewrites assistant message 2.*--template"):
        encoder.encode({"messages": EXPECTED})


def test_tool_turns_are_not_trained_but_tool_calls_are():
    tokenizer = qwen25_tokenizer()
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    enc = ChatEncoder(tokenizer).encode(normalize({"messages": messages, "tools": tools}))
    # ms-swift datasets often store `tools` as a JSON string: the same sample
    as_string = ChatEncoder(tokenizer).encode(normalize({"messages": messages, "tools": json.dumps(tools)}))
    np.testing.assert_array_equal(as_string.input_ids, enc.input_ids)
    trained = [t for ok, t in _runs(tokenizer, enc.input_ids, enc.labels) if ok]
    # the generation prompt '<|im_start|>assistant\n' is the prompt; the call after it is trained
    assert trained == [
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n',
        "It is sunny.<|im_end|>\n",
    ]


def test_default_system_argument_and_builtin_templates(tmp_path):
    row = {"messages": EXPECTED[1:3]}
    args = DataArgs(system="Answer in French.", template="chatml", max_length=512)
    sample = SampleProcessor(args, base_tokenizer())(({**row}, "f.jsonl"))
    text = base_tokenizer().decode(sample["input_ids"])
    assert text.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\n")
    # a row's own system prompt wins over --system
    own = SampleProcessor(args, base_tokenizer())(({"messages": EXPECTED[:3]}, "f.jsonl"))
    assert "Be brief." in base_tokenizer().decode(own["input_ids"])
    # --template names are ms-swift's templates: llama3 opens with <|begin_of_text|>, qwen adds its default system
    llama = ChatEncoder(base_tokenizer(), template="llama3").encode({"messages": EXPECTED[1:3]})
    assert base_tokenizer().decode(llama.input_ids).startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    qwen = ChatEncoder(base_tokenizer(), template="qwen").encode({"messages": EXPECTED[1:3]})
    assert base_tokenizer().decode(qwen.input_ids).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    with pytest.raises(DataError, match="no chat template.*--template"):
        ChatEncoder(base_tokenizer()).encode({"messages": EXPECTED[1:3]})
    jinja = tmp_path / "plain.jinja"  # a template file
    jinja.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                     "{% if add_generation_prompt %}assistant: {% endif %}")
    own_file = ChatEncoder(base_tokenizer(), template=str(jinja)).encode({"messages": EXPECTED[1:3]})
    # the prompt ends with a space that the tokenizer merges into " Paris": that token is trained
    assert [t for ok, t in _runs(base_tokenizer(), own_file.input_ids, own_file.labels) if ok] == [" Paris.\n"]
    with pytest.raises(DataError, match="neither an ms-swift template"):
        ChatEncoder(base_tokenizer(), template="nosuch").encode({"messages": EXPECTED[1:3]})


def test_text_rows_train_every_token_and_end_with_eos():
    tokenizer = base_tokenizer()
    sample = SampleProcessor(DataArgs(max_length=512), tokenizer)(({"text": "The quick brown fox"}, "f.jsonl"))
    ids, labels = sample["input_ids"], sample["labels"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[:-1]) == "The quick brown fox"
    assert labels[0] == IGNORE  # first token of every sample: no prediction crosses samples
    np.testing.assert_array_equal(labels[1:], ids[1:])


@pytest.mark.parametrize("strategy", ["delete", "left", "right"])
def test_truncation_strategies(strategy):
    tokenizer = bundled_tokenizer()
    row = {"messages": [{"role": "user", "content": "reverse hello there"}, {"role": "assistant", "content": "ereht olleh"}]}
    full = SampleProcessor(DataArgs(max_length=4096), tokenizer)((row, "f.jsonl"))
    n = len(full["input_ids"])
    process = SampleProcessor(DataArgs(max_length=n - 5, truncation_strategy=strategy), tokenizer)
    cut = process((row, "f.jsonl"))
    if strategy == "delete":
        assert cut is None and process.counters.as_dict()["dropped_too_long"] == 1
        return
    keep = slice(5, None) if strategy == "left" else slice(0, n - 5)
    np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][keep])
    expected = full["labels"][keep].copy()
    expected[0] = IGNORE
    np.testing.assert_array_equal(cut["labels"], expected)


def test_rows_without_a_trainable_token_are_dropped_and_counted():
    tokenizer = bundled_tokenizer()
    process = SampleProcessor(DataArgs(max_length=14, truncation_strategy="right"), tokenizer)
    row = {"messages": [{"role": "user", "content": "a long question that fills the window"}, {"role": "assistant", "content": "yes"}]}
    assert process((row, "f.jsonl")) is None
    assert process((EXPECTED[1:2] and {"messages": EXPECTED[1:2]}, "f.jsonl")) is None  # no assistant turn
    assert process.counters.as_dict()["dropped_no_target"] == 2


def test_truncation_strategy_split_cuts_long_rows_into_max_length_samples(tmp_path):
    # ms-swift's template: pieces ids[i:i + max_length], each with its first label ignored
    from swift_jax.data import build_data

    tokenizer = bundled_tokenizer()
    text = " ".join(f"word{i}" for i in range(40))
    full = SampleProcessor(DataArgs(max_length=4096, use_chat_template=False), tokenizer)(({"text": text}, "f.jsonl"))
    n = len(full["input_ids"])
    process = SampleProcessor(DataArgs(max_length=16, truncation_strategy="split", use_chat_template=False), tokenizer)
    pieces = process.samples_of(({"text": text}, "f.jsonl"))
    assert len(pieces) == -(-n // 16) > 2 and [len(p["input_ids"]) for p in pieces[:-1]] == [16] * (len(pieces) - 1)
    np.testing.assert_array_equal(np.concatenate([p["input_ids"] for p in pieces]), full["input_ids"])
    for i, piece in enumerate(pieces):
        expected = full["input_ids"][16 * i : 16 * (i + 1)].copy()
        expected[0] = IGNORE
        np.testing.assert_array_equal(piece["labels"], expected)
    data = tmp_path / "pt.jsonl"
    data.write_text(json.dumps({"text": text}) + "\n")
    pipe = build_data(DataArgs(dataset=[str(data)], max_length=16, truncation_strategy="split", use_chat_template=False),
                      tokenizer, batch_size=1)
    assert pipe.steps_per_epoch == len(pieces)  # an epoch counts the pieces
    stream = list(pipe.samples(num_epochs=1))
    assert [s["input_ids"].tolist() for s in stream] == [p["input_ids"].tolist() for p in pieces]  # every piece is trained
    with pytest.raises(DataError, match="--truncation_strategy 'middle': expected delete, left, right or split"):
        SampleProcessor(DataArgs(truncation_strategy="middle"), tokenizer)
