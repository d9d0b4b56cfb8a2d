"""Agent training and loss_scale through the pipeline: tool rows, token weights in batches and in the loss,
padding to length buckets, and fields the run cannot use."""

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import BASE
from tokenizers_for_tests import bundled_tokenizer, qwen25_tokenizer

import swift_jax
from swift_jax.data import DataArgs, DataError, build_data
from swift_jax.data.samples import SampleProcessor
from swift_jax.data.templates import IGNORE, ChatEncoder
from swift_jax.trainer.loss import chunked_cross_entropy
from swift_jax.trainer.method import LanguageModeling

TOOLS = [{"name": "get_weather", "description": "Weather of a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
AGENT_ROW = {"tools": json.dumps(TOOLS), "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "tool_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"role": "tool_response", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."}]}


def _trained_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])


def test_weighted_loss_is_sum_of_scaled_token_losses_over_targets():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 11, 8)).astype(np.float32)
    kernel = rng.normal(size=(8, 13)).astype(np.float32)
    labels = rng.integers(0, 13, size=(2, 11)).astype(np.int32)
    labels[:, :3] = IGNORE
    labels[1, 7:] = IGNORE
    weights = rng.choice([0.0, 0.5, 1.0, 2.0], size=(2, 11)).astype(np.float32)
    loss, count, _ = chunked_cross_entropy(jnp.asarray(hidden), jnp.asarray(labels), lambda h: h @ kernel, chunk_size=4,
                                           weights=jnp.asarray(weights))
    # ms-swift: per-token loss x loss_scale rolled by one, summed, over the number of labels != -100
    logits = torch.from_numpy(hidden @ kernel)[:, :-1]
    token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 13), torch.from_numpy(labels[:, 1:]).long().reshape(-1),
                                                   ignore_index=IGNORE, reduction="none")
    expected = (token_loss * torch.from_numpy(weights[:, 1:]).reshape(-1)).sum() / (labels[:, 1:] != IGNORE).sum()
    np.testing.assert_allclose(float(loss) / int(count), float(expected), rtol=1e-5)
    plain, _, _ = chunked_cross_entropy(jnp.asarray(hidden), jnp.asarray(labels), lambda h: h @ kernel, chunk_size=4)
    ones, _, _ = chunked_cross_entropy(jnp.asarray(hidden), jnp.asarray(labels), lambda h: h @ kernel, chunk_size=4,
                                       weights=jnp.ones((2, 11)))
    np.testing.assert_allclose(float(plain), float(ones), rtol=1e-6)


def test_agent_rows_train_tool_calls_with_weights_and_never_tool_responses(tmp_path):
    path = tmp_path / "agent.jsonl"
    path.write_text((json.dumps(AGENT_ROW) + "\n") * 4)
    tokenizer = bundled_tokenizer()
    args = DataArgs(dataset=[str(path)], template="qwen2_5", loss_scale="hermes", max_length=1024, dataset_shuffle=False)
    method = LanguageModeling()
    pipe = method.build_data(args, tokenizer, batch_size=2, seed=0, shuffle=False, process_index=0, process_count=1)
    assert pipe.weighted and method.batch_keys[-1] == "loss_scale"
    batch = next(pipe.train_iterator())
    assert batch["loss_scale"].dtype == np.float32 and batch["loss_scale"].shape == batch["labels"].shape
    row_ids, row_labels, row_scale = batch["input_ids"][0], batch["labels"][0], batch["loss_scale"][0]
    trained = _trained_text(tokenizer, row_ids, row_labels)
    assert "sunny" not in trained.replace("It is sunny.", "")  # the tool response is never trained
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in trained
    call = tokenizer.decode(row_ids[row_scale == 2.0])
    assert call.startswith("<tool_call>") and call.endswith("</tool_call>")  # hermes: weight 2 on the call
    assert set(np.unique(row_scale[row_labels == IGNORE])) == {0.0}
    assert (row_scale[batch["segment_ids"][0] == 0] == 0).all()  # padding carries no weight

    config = {**BASE, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": len(tokenizer),
              "max_position_embeddings": 1024}
    model = swift_jax.init_model(config, dtype="float32", seed=0)
    out = method.loss(model, {k: jnp.asarray(v) for k, v in batch.items()}, None)
    hidden = model.hidden_states(jnp.asarray(batch["input_ids"]), positions=jnp.asarray(batch["positions"]),
                                 segment_ids=jnp.asarray(batch["segment_ids"]))
    unweighted, count, _ = chunked_cross_entropy(hidden, jnp.asarray(batch["labels"]), model.logits)
    assert int(out.count) == int(count) == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert float(out.loss_sum) > float(unweighted)  # the calls count twice


def test_binary_strategies_carry_no_weights_and_last_round_trains_only_the_end():
    tokenizer = bundled_tokenizer()
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                        {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]}
    sample = SampleProcessor(DataArgs(template="qwen", loss_scale="last_round"), tokenizer)((row, "f.jsonl"))
    assert "loss_scale" not in sample
    assert _trained_text(tokenizer, sample["input_ids"], sample["labels"]) == "second<|im_end|>\n"
    # per-message `loss` wins over the strategy, on the Jinja path too
    row["messages"][1]["loss"] = True
    for template in ("qwen", None):
        sample = SampleProcessor(DataArgs(template=template, loss_scale="last_round"), tokenizer)((row, "f.jsonl"))
        assert _trained_text(tokenizer, sample["input_ids"], sample["labels"]) == "first<|im_end|>\nsecond<|im_end|>\n"


def test_jinja_template_renders_tool_call_messages_as_tool_calls():
    tokenizer = qwen25_tokenizer()  # Qwen2.5's own Jinja template (no --template)
    enc = ChatEncoder(tokenizer).encode({"messages": [{**m, "role": "tool" if m["role"] == "tool_response" else m["role"]}
                                                      for m in AGENT_ROW["messages"]], "tools": TOOLS})
    trained = _trained_text(tokenizer, enc.input_ids, enc.labels)
    assert trained == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
                       "It is sunny.<|im_end|>\n")
    with pytest.raises(DataError, match="needs an ms-swift template"):
        ChatEncoder(tokenizer, loss_scale="hermes")


def test_unpacked_batches_pad_to_128_buckets_shared_by_a_step(tmp_path):
    tokenizer = bundled_tokenizer()
    rows = [{"messages": [{"role": "user", "content": "reverse " + "hello " * n},
                          {"role": "assistant", "content": "olleh " * n}]} for n in (2, 3, 40, 5, 90, 4, 6, 7)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [len(SampleProcessor(DataArgs(), tokenizer)((r, "f"))["input_ids"]) for r in rows]
    args = DataArgs(dataset=[str(path)], max_length=2048, dataset_shuffle=False)
    batches = [b for _, b in zip(range(4), build_data(args, tokenizer, batch_size=2, shuffle=False).train_iterator())]
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == [-(-max(lengths[i : i + 2]) // 128) * 128 for i in range(0, 8, 2)]
    assert set(widths) <= {128, 256, 384, 512} and widths[0] == 128
    grouped = build_data(args, tokenizer, batch_size=2, shuffle=False, batches_per_step=2).train_iterator()
    widths = [next(grouped)["input_ids"].shape[1] for _ in range(4)]
    assert widths[0] == widths[1] and widths[2] == widths[3]  # one step's micro-batches stack
    capped = build_data(DataArgs(dataset=[str(path)], max_length=200, truncation_strategy="right"), tokenizer, batch_size=8)
    assert next(capped.train_iterator())["input_ids"].shape == (8, 200)  # never beyond max_length


def test_fields_the_run_cannot_use_are_never_dropped_silently(tmp_path, caplog):
    path = tmp_path / "mm.jsonl"
    row = {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}]}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "images": ["cat.png"]}) + "\n")
    with pytest.raises(DataError, match=r"mm.jsonl, line 2: field 'images' holds media.*text-only"):
        build_data(DataArgs(dataset=[str(path)]), bundled_tokenizer(), batch_size=1)
    pref = tmp_path / "pref.jsonl"
    pref.write_text((json.dumps({**row, "rejected_response": "A dog.", "label": 1}) + "\n") * 3)
    with caplog.at_level(logging.WARNING, logger="swift_jax.data"):
        build_data(DataArgs(dataset=[str(pref)]), bundled_tokenizer(), batch_size=1)
    notes = [r.getMessage() for r in caplog.records if "not used by SFT" in r.getMessage()]
    assert len([n for n in notes if "'rejected_response'" in n]) <= 1 and len([n for n in notes if "'label'" in n]) <= 1
    assert any("'rejected_response'" in n for n in notes) and any("'label'" in n for n in notes)


def test_inspect_dump_writes_what_training_sees_per_row(tmp_path):
    import os
    import subprocess
    import sys

    from swift_jax.data import BUNDLED_TOKENIZER_DIR

    rows = [AGENT_ROW, {"foo": 1}, {"messages": [{"role": "user", "content": "q " * 2000}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dump = tmp_path / "dump.jsonl"
    cmd = [sys.executable, "-m", "swift_jax.data.inspect", "--model", BUNDLED_TOKENIZER_DIR, "--dataset", str(data),
           "--template", "qwen2_5", "--loss_scale", "hermes", "--max_length", "1024", "--dataset_shuffle", "false",
           "--dump", str(dump)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(lines) == 4
    assert "rows.jsonl, line 2: unknown row format" in lines[1]["error"]
    assert "line 3: dropped: longer than --max_length 1024" in lines[2]["error"]
    tokenizer = bundled_tokenizer()
    expected = SampleProcessor(DataArgs(template="qwen2_5", loss_scale="hermes", max_length=1024), tokenizer)((AGENT_ROW, "f"))
    for i in (0, 3):
        assert len(lines[i]["input_ids"]) == len(lines[i]["labels"]) == len(lines[i]["loss_scale"])
    assert lines[0]["input_ids"] == expected["input_ids"].tolist() and lines[0]["labels"] == expected["labels"].tolist()
    assert lines[0]["loss_scale"] == expected["loss_scale"].tolist() and 2.0 in lines[0]["loss_scale"]


def test_packed_batches_carry_the_weights_of_their_samples(tmp_path):
    path = tmp_path / "agent.jsonl"
    path.write_text((json.dumps(AGENT_ROW) + "\n") * 6)
    args = DataArgs(dataset=[str(path)], template="qwen2_5", loss_scale="hermes", max_length=2048, packing=True)
    batch = next(build_data(args, bundled_tokenizer(), batch_size=1).train_iterator())
    assert batch["loss_scale"].shape == (1, 2048) and batch["segment_ids"].max() >= 2
    assert ((batch["loss_scale"] > 0) == (batch["labels"] != IGNORE)).all()
    assert set(np.unique(batch["loss_scale"])) == {0.0, 1.0, 2.0}


def test_jinja_template_reads_enable_thinking():
    from swift_jax.data.swift_template import ThinkingArgs
    from tokenizers_for_tests import qwen3_tokenizer

    tokenizer = qwen3_tokenizer()
    messages = [{"role": "user", "content": "hi"}]
    off = ChatEncoder(tokenizer, thinking=ThinkingArgs(enable_thinking=False)).prompt_ids(messages)
    default = ChatEncoder(tokenizer).prompt_ids(messages)
    assert tokenizer.decode(off).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tokenizer.decode(default).endswith("<|im_start|>assistant\n")
