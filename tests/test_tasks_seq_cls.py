"""`--task_type seq_cls`: logits equal transformers' *ForSequenceClassification (padded and packed), losses equal
ms-swift 4.6's (golden), rows as ms-swift reads them, and a CPU run lowers the loss and raises the accuracy."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.data.errors import DataError
from swift_jax.tasks.losses import per_sequence_loss
from swift_jax.tasks.seq_cls import SeqClsProcessor, segment_ends, target_of
from task_runs import TASKS, run_tiny
from tiny_models import build_hf_model, save_hf_model
from tokenizers_for_tests import bundled_tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = json.load(open(os.path.join(ROOT, "tests", "golden", "task_losses.json")))


@pytest.mark.parametrize("case", GOLDEN["seq_cls"], ids=lambda c: c["problem_type"])
def test_losses_equal_ms_swift(case):
    """ms-swift's seq_cls forward (last non-padding token, loss by problem type) on a recorded batch."""
    hidden, weight = np.asarray(case["hidden"], np.float32), np.asarray(case["score_weight"], np.float32)
    k = case["num_labels"]
    rows, seq = hidden.shape[:2]
    segment_ids = np.zeros((rows, seq), np.int32)
    targets = np.zeros((rows, seq, k), np.float32)
    for r, (n, label) in enumerate(zip(case["lengths"], case["labels"])):
        segment_ids[r, :n] = 1
        targets[r, n - 1] = target_of(label, case["problem_type"], k)
    logits = jnp.asarray(hidden) @ jnp.asarray(weight).T  # [rows, seq, labels]
    ends = segment_ends(jnp.asarray(segment_ids))
    losses = per_sequence_loss(case["problem_type"], logits, jnp.asarray(targets))
    loss = float(jnp.where(ends, losses, 0).sum() / ends.sum())
    assert loss == pytest.approx(case["loss"], abs=1e-5)
    pooled = np.asarray(logits)[np.asarray(ends)]
    np.testing.assert_allclose(pooled, np.asarray(case["logits"]).reshape(rows, k), atol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "gemma2"])
def test_logits_equal_transformers_padded_and_packed(model_type, tmp_path):
    """A transformers *ForSequenceClassification checkpoint loads with its head (and no LM head); its pooled
    logits equal ours on right-padded rows and on the same sequences packed into one row."""
    import transformers

    base = save_hf_model(build_hf_model(model_type, tie_word_embeddings=False, pad_token_id=0), tmp_path / "base")
    torch.manual_seed(1)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=3, dtype=torch.float32).eval()
    path = save_hf_model(hf, tmp_path / "cls")
    model = swift_jax.load_model(path, dtype="float32")
    assert model.score.num_labels == 3
    rng = np.random.default_rng(0)
    lengths = [7, 3, 11]
    seqs = [rng.integers(1, 128, n) for n in lengths]
    ids = np.zeros((3, 12), np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
    with torch.no_grad():
        expected = hf(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor((ids > 0).astype(np.int64))).logits.numpy()

    seg = (ids > 0).astype(np.int32)
    pos = np.where(seg > 0, np.arange(12), 0).astype(np.int32)
    hidden = model.hidden_states(jnp.asarray(ids, jnp.int32), positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg))
    padded = np.asarray(model.score.logits(hidden))[np.asarray(segment_ends(jnp.asarray(seg)))]
    np.testing.assert_allclose(padded, expected, atol=1e-4)

    packed_ids = np.concatenate(seqs + [np.zeros(3, np.int64)])[None]  # [1, 24]
    packed_seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(3)])[None].astype(np.int32)
    packed_pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(3)])[None].astype(np.int32)
    hidden = model.hidden_states(jnp.asarray(packed_ids, jnp.int32), positions=jnp.asarray(packed_pos),
                                 segment_ids=jnp.asarray(packed_seg))
    packed = np.asarray(model.score.logits(hidden))[np.asarray(segment_ends(jnp.asarray(packed_seg)))]
    np.testing.assert_allclose(packed, expected, atol=1e-4)


def test_rows_read_as_ms_swift_reads_them():
    """The `label` column: a class, a list of classes (multi-label) or a number (regression); the target sits at
    the sequence's last token; a wrong label names the row."""
    args = DataArgs(max_length=64)
    single = SeqClsProcessor.configured("single_label_classification", 3)(args, bundled_tokenizer())
    sample = single(({"messages": [{"role": "user", "content": "sort: a b"}], "label": 2}, "data.jsonl line 1"))
    assert (sample["labels"] == -100).all() and sample["cls_target"].shape == (len(sample["input_ids"]), 3)
    assert sample["cls_target"][-1].tolist() == [0, 0, 1] and not sample["cls_target"][:-1].any()
    prompt = bundled_tokenizer().apply_chat_template([{"role": "user", "content": "sort: a b"}], tokenize=False,
                                                     add_generation_prompt=True)
    assert bundled_tokenizer().decode(sample["input_ids"]) == prompt  # the assistant turn opened, as ms-swift
    assert target_of([0, 2], "multi_label_classification", 3).tolist() == [1, 0, 1]
    assert target_of(0.5, "regression", 1).tolist() == [0.5]
    with pytest.raises(DataError, match=r"data.jsonl line 4: .*outside \[0, 3\)"):
        single(({"messages": [{"role": "user", "content": "x"}], "label": 3}, "data.jsonl line 4"))
    with pytest.raises(DataError, match="multi_label_classification"):
        single(({"messages": [{"role": "user", "content": "x"}], "label": [1]}, "data.jsonl line 5"))


def _train(tmp_path, dataset: str, extra: list[str]):
    return run_tiny(tmp_path / "out", dataset, ["--task_type", "seq_cls", "--split_dataset_ratio", "0.2", *extra],
                    steps=20, max_length=32, batch=2)


def test_a_cpu_run_learns_the_bundled_classification_and_exports_it(tmp_path):
    """Packed single-label training lowers the loss and classifies held-out rows; the checkpoint is a
    *ForSequenceClassification that transformers loads and scores as we do."""
    import transformers

    records, run = _train(tmp_path, "seq_cls.jsonl", ["--num_labels", "3", "--packing", "true"])
    train = [r for r in records if "loss" in r]
    assert np.mean([r["loss"] for r in train[-5:]]) < 0.5 * np.mean([r["loss"] for r in train[:3]]), train
    (evaluation,) = [r for r in records if "eval_acc" in r]
    assert evaluation["eval_acc"] > 0.55, evaluation  # chance: 1/3
    ckpt = os.path.join(run, "checkpoint-20")
    config = json.load(open(os.path.join(ckpt, "config.json")))
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]
    assert config["problem_type"] == "single_label_classification" and len(config["id2label"]) == 3
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    ours = swift_jax.load_model(ckpt, dtype="float32")
    ids = np.asarray([[5, 9, 33, 17, 2]])
    with torch.no_grad():
        expected = hf(input_ids=torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours.score.logits(ours.hidden_states(jnp.asarray(ids))))[:, -1], expected, atol=1e-4)


@pytest.mark.parametrize("dataset,extra,metric", [
    ("seq_cls_multi.jsonl", ["--num_labels", "3", "--problem_type", "multi_label_classification"], "eval_f1"),
    ("seq_cls_regression.jsonl", ["--num_labels", "1", "--tuner_type", "lora", "--learning_rate", "1e-2"], None),
])
def test_multi_label_and_regression_runs_learn(tmp_path, dataset, extra, metric):
    """BCE (multi-label, F1 in eval) and MSE (regression: the default for one label) go down on the bundled rows."""
    records, run = _train(tmp_path, dataset, extra)
    train = [r for r in records if "loss" in r]
    assert np.mean([r["loss"] for r in train[-5:]]) < 0.85 * np.mean([r["loss"] for r in train[:3]]), train
    if metric:
        (evaluation,) = [r for r in records if metric in r]
        assert evaluation[metric] > train[0][metric.removeprefix("eval_")] + 0.1, (evaluation, train[0])
    if "lora" in extra:  # the head trains beside the adapters and is saved as PEFT's modules_to_save
        adapter = json.load(open(os.path.join(run, "checkpoint-20", "adapter_config.json")))
        assert adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"] == ["score"]
