"""`--task_type reranker`: ms-swift 4.6's pointwise/listwise losses (golden), (query, document) scores equal
transformers' one-label *ForSequenceClassification, and a CPU run lowers the listwise loss."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.data import batching
from swift_jax.tasks.embedding import EmbeddingProcessor, last_states
from swift_jax.tasks.reranker import listwise, pointwise
from task_runs import TASKS, run_tiny
from tiny_models import build_hf_model, save_hf_model
from tokenizers_for_tests import bundled_tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = json.load(open(os.path.join(ROOT, "tests", "golden", "task_losses.json")))["reranker"]


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"{c['loss_type']}-{c['temperature']}")
def test_losses_equal_ms_swift(case):
    scores = jnp.asarray(case["scores"], jnp.float32)
    group = jnp.asarray([g for g, n in enumerate(case["sizes"]) for _ in range(n)])
    role = jnp.asarray([i + 1 for n in case["sizes"] for i in range(n)])
    valid = jnp.ones(len(case["scores"]), bool)
    if case["loss_type"] == "pointwise_reranker":
        total, n = pointwise(scores, role, valid)
    else:
        total, n, _ = listwise(scores, group, role, valid, temperature=case["temperature"])
    assert float(total / n) == pytest.approx(case["loss"], abs=1e-5)


def test_scores_equal_transformers(tmp_path):
    """Each (query, document) sequence of a row, padded, scores as transformers' one-label classifier scores it alone."""
    import transformers

    base = save_hf_model(build_hf_model("qwen2", vocab_size=1000, max_position_embeddings=256, tie_word_embeddings=False,
                                        pad_token_id=0), tmp_path / "base")
    torch.manual_seed(2)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32).eval()
    model = swift_jax.load_model(save_hf_model(hf, tmp_path / "cls"), dtype="float32")
    process = type("P", (EmbeddingProcessor,), {"reranker": True})(DataArgs(max_length=256), bundled_tokenizer())
    row = json.loads(open(os.path.join(TASKS, "reranker.jsonl")).readline())
    sample = process((row, "reranker.jsonl line 1"))
    want = []
    for role in np.unique(sample["emb_role"]):
        ids = sample["input_ids"][sample["emb_role"] == role]
        with torch.no_grad():
            want.append(float(hf(input_ids=torch.as_tensor(ids[None], dtype=torch.long)).logits[0, 0]))
    batch = batching.stack_rows([batching.pad_sample(sample, 256, 0)])
    states, _, role, _, valid = last_states(model, {k: jnp.asarray(v) for k, v in batch.items()})
    got = np.asarray(model.score(states))[np.asarray(valid)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.asarray(role)[np.asarray(valid)].tolist() == [1, 2, 3, 4]


def test_a_cpu_run_lowers_the_listwise_loss(tmp_path):
    records, run = run_tiny(tmp_path / "out", "reranker.jsonl", ["--task_type", "reranker", "--loss_type", "listwise_reranker",
                                                                 "--packing", "true"], steps=20, max_length=128, lr="3e-3")
    train = [r for r in records if "loss" in r]
    assert np.mean([r["loss"] for r in train[-5:]]) < 0.85 * np.mean([r["loss"] for r in train[:3]]), train
    config = json.load(open(os.path.join(run, "checkpoint-20", "config.json")))
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and len(config["id2label"]) == 1
