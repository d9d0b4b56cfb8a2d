"""`--task_type embedding`: vectors equal transformers' last-token, L2-normalised hidden state (padded and packed),
ms-swift 4.6's embedding losses (golden), its row format, and a CPU run that lowers the loss."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.tasks import embedding_losses as L
from swift_jax.tasks.embedding import EmbeddingProcessor, pooled
from task_runs import TASKS, run_tiny
from tiny_models import build_hf_model, save_hf_model
from tokenizers_for_tests import bundled_tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = json.load(open(os.path.join(ROOT, "tests", "golden", "task_losses.json")))["embedding"]


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"{c['loss_type']}-{c.get('temperature', '')}-{c.get('use_batch', '')}")
def test_losses_equal_ms_swift(case):
    vectors = jnp.asarray(case["vectors"], jnp.float32)
    m = vectors.shape[0]
    valid = jnp.ones(m, bool)
    if case["loss_type"] == "infonce":  # groups of anchor, positive, 2 hard negatives
        size = 2 + case["negatives"]
        group, role = jnp.arange(m) // size, jnp.arange(m) % size + 1
        total, n, _ = L.infonce(vectors, group, role, valid, temperature=case["temperature"], use_batch=case["use_batch"])
        assert float(total / n) == pytest.approx(case["loss"], abs=1e-5)
        return
    group, role = jnp.arange(m) // 2, jnp.arange(m) % 2 + 1  # pairs: anchor, positive
    labels = jnp.repeat(jnp.asarray(case["labels"], jnp.float32), 2)
    total, n = L.pair_loss(case["loss_type"], *L.pair_cosines(vectors, group, role, valid, labels))
    assert float(total / n) == pytest.approx(case["loss"], abs=1e-5)


def _rows():
    return [json.loads(line) for line in open(os.path.join(TASKS, "embedding.jsonl"))]


def test_vectors_equal_transformers_padded_and_packed(tmp_path):
    """Each sequence of a row (anchor, positive, negatives) is pooled on its own: the vectors equal the
    transformers base model's last hidden state at each sequence's last token, L2-normalised, one sequence per
    call; so do those of two rows packed into one."""
    import transformers

    from swift_jax.data import batching

    path = save_hf_model(build_hf_model("qwen2", vocab_size=1000, max_position_embeddings=256), tmp_path / "m")
    hf = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    model = swift_jax.load_model(path, dtype="float32")
    process = EmbeddingProcessor(DataArgs(max_length=256), bundled_tokenizer())
    samples = [process((row, f"embedding.jsonl line {i + 1}")) for i, row in enumerate(_rows()[:2])]

    def expected(sample):
        out = []
        for role in np.unique(sample["emb_role"]):
            ids = sample["input_ids"][sample["emb_role"] == role]
            with torch.no_grad():
                h = hf(input_ids=torch.as_tensor(ids[None], dtype=torch.long)).last_hidden_state[0, -1]
            out.append(torch.nn.functional.normalize(h, dim=-1).numpy())
        return out

    want = np.stack(expected(samples[0]) + expected(samples[1]))
    padded = batching.stack_rows([batching.pad_sample(s, 256, 0) for s in samples])
    packed = batching.stack_rows([batching.pad_sample({k: np.concatenate([s[k] for s in samples]) for k in samples[0]}, 256, 0)])
    packed["segment_ids"] = np.where(np.arange(256) < len(samples[0]["input_ids"]), 1, 2)[None] * packed["segment_ids"]
    for batch in (padded, packed):
        vectors, group, role, _, valid = pooled(model, {k: jnp.asarray(v) for k, v in batch.items()})
        got = np.asarray(vectors)[np.asarray(valid)]
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert np.asarray(role)[np.asarray(valid)].tolist() == [1, 2, 3, 4, 1, 2, 3, 4]
        assert len(set(np.asarray(group)[np.asarray(valid)].tolist())) == 2


def test_a_cpu_run_lowers_the_infonce_loss(tmp_path):
    """InfoNCE with in-batch and hard negatives on the bundled rows: the loss falls and more anchors rank their
    positive first; the checkpoint is a sentence-transformers folder (last-token pooling, normalised) that gives our
    vectors."""
    records, run = run_tiny(tmp_path / "out", "embedding.jsonl", ["--task_type", "embedding", "--loss_type", "infonce",
                                                                  "--packing", "true"], steps=15, max_length=96)
    train = [r for r in records if "loss" in r]
    assert np.mean([r["loss"] for r in train[-4:]]) < 0.8 * np.mean([r["loss"] for r in train[:3]]), train
    assert np.mean([r["acc"] for r in train[-4:]]) > np.mean([r["acc"] for r in train[:3]]), train

    from sentence_transformers import SentenceTransformer

    ckpt = os.path.join(run, "checkpoint-15")
    text = "a b c"
    theirs = SentenceTransformer(ckpt, device="cpu").encode([text], convert_to_numpy=True)[0]
    ids = np.asarray(swift_jax.load_tokenizer(ckpt)(text).input_ids, np.int32)[None]
    model = swift_jax.load_model(ckpt, dtype="float32")
    batch = {"input_ids": ids, "segment_ids": np.ones_like(ids), "emb_role": np.ones(ids.shape, np.float32),
             "emb_position": np.arange(ids.shape[1], dtype=np.float32)[None], "emb_label": np.ones(ids.shape, np.float32)}
    vectors, *_ = pooled(model, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(vectors[0]), theirs, atol=1e-4)
