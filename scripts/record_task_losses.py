"""Record ms-swift 4.6's task-type losses on fixed random batches -> tests/golden/task_losses.json.

Run with ms-swift's interpreter (CI never installs ms-swift):
    /work/msswift-venv/bin/python scripts/record_task_losses.py

- seq_cls: ms-swift's `transformers_seq_cls_forward` (its patched *ForSequenceClassification forward) on hidden
  states of right-padded rows, a `score` head and the labels as its collator builds them, per problem type;
- embedding: ms-swift's loss plugins (`swift.loss.embedding`) on pooled vectors: infonce (in-batch, hard
  negatives, temperature), cosine_similarity, contrastive, online_contrastive;
- reranker: `swift.loss.reranker`'s pointwise and listwise losses on document scores.
"""

from __future__ import annotations

import json
import os
import types

import torch
import transformers

from swift.loss.embedding import ContrastiveLoss, CosineSimilarityLoss, InfonceLoss, OnlineContrastiveLoss
from swift.loss.reranker import ListwiseRerankerLoss, PointwiseRerankerLoss
from swift.model.patcher import transformers_seq_cls_forward

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "task_losses.json")
PAD = 0


def seq_cls_case(problem_type: str, num_labels: int, labels, seed: int) -> dict:
    """Rows of lengths 5, 3, 7, 4 (right-padded with PAD), hidden [4, 8, 16], a score head, ms-swift's loss."""
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 3, 7, 4]
    ids = torch.full((4, 8), PAD, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(1, 50, (n,), generator=g)
    hidden = torch.randn(4, 8, 16, generator=g)
    weight = torch.randn(num_labels, 16, generator=g) * 0.5
    score = torch.nn.Linear(16, num_labels, bias=False)
    score.weight.data = weight
    config = transformers.PretrainedConfig(pad_token_id=PAD, problem_type=problem_type, num_labels=num_labels)
    model = types.SimpleNamespace(score=score, config=config, num_labels=num_labels)
    if problem_type == "regression":
        tensor = torch.tensor(labels, dtype=torch.float32)
    elif problem_type == "multi_label_classification":  # ms-swift's collator: class lists -> multi-hot
        tensor = torch.zeros(4, num_labels)
        for i, classes in enumerate(labels):
            tensor[i, classes] = 1
    else:
        tensor = torch.tensor(labels, dtype=torch.long)
    origin = lambda **kw: types.SimpleNamespace(logits=hidden, past_key_values=None, hidden_states=None, attentions=None)
    out = transformers_seq_cls_forward(model, origin_forward=origin, input_ids=ids, labels=tensor)
    return {"problem_type": problem_type, "num_labels": num_labels, "labels": labels, "lengths": lengths,
            "hidden": hidden.tolist(), "score_weight": weight.tolist(), "loss": float(out.loss),
            "logits": out.logits.tolist()}


def _loss(cls):
    trainer = types.SimpleNamespace()
    return cls(types.SimpleNamespace(), trainer)


def embedding_cases() -> list[dict]:
    g = torch.Generator().manual_seed(7)
    cases = []
    # infonce: 3 anchors with 1 positive and 2 hard negatives each, vectors L2-normalised as ms-swift's pooling does
    groups = 3
    vectors = torch.nn.functional.normalize(torch.randn(groups * 4, 16, generator=g), dim=-1)
    labels = torch.tensor([1.0, 0.0, 0.0] * groups)  # ms-swift's labels: per positive 1, per negative 0
    for temperature, use_batch in ((0.1, True), (0.05, True), (0.1, False)):
        os.environ["INFONCE_TEMPERATURE"], os.environ["INFONCE_USE_BATCH"] = str(temperature), str(use_batch)
        loss = _loss(InfonceLoss)({"last_hidden_state": vectors}, labels)
        cases.append({"loss_type": "infonce", "temperature": temperature, "use_batch": use_batch, "groups": groups,
                      "negatives": 2, "vectors": vectors.tolist(), "loss": float(loss)})
    first = torch.randn(6, 16, generator=g)  # rows 2i, 2i+1: a pair, of cosine distances from ~0.05 to ~0.9
    second = first * torch.tensor([3.0, 1.5, 0.8, 1.0, 0.3, 2.0])[:, None] + torch.randn(6, 16, generator=g)
    pairs = torch.nn.functional.normalize(torch.stack([first, second], 1).reshape(12, 16), dim=-1)
    pair_labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    for name, cls in (("cosine_similarity", CosineSimilarityLoss), ("contrastive", ContrastiveLoss),
                      ("online_contrastive", OnlineContrastiveLoss)):
        loss = _loss(cls)({"last_hidden_state": pairs}, pair_labels)
        cases.append({"loss_type": name, "vectors": pairs.tolist(), "labels": pair_labels.tolist(), "loss": float(loss)})
    return cases


def reranker_cases() -> list[dict]:
    """Scores of 3 rows' documents (positive first, then 3, 1 and 2 negatives), ms-swift's labels [1, 0, ...]."""
    g = torch.Generator().manual_seed(11)
    sizes = [4, 2, 3]
    labels = torch.tensor([float(i == 0) for n in sizes for i in range(n)])
    scores = torch.randn(len(labels), 1, generator=g) * 2
    cases = []
    for name, cls, temperature in (("pointwise_reranker", PointwiseRerankerLoss, None),
                                   ("listwise_reranker", ListwiseRerankerLoss, 1.0),
                                   ("listwise_reranker", ListwiseRerankerLoss, 0.5)):
        if temperature is not None:
            os.environ["LISTWISE_RERANKER_TEMPERATURE"] = str(temperature)
        loss = _loss(cls)(types.SimpleNamespace(logits=scores), labels)
        cases.append({"loss_type": name, "temperature": temperature, "sizes": sizes, "scores": scores[:, 0].tolist(),
                      "loss": float(loss)})
    return cases


def main() -> None:
    record = {
        "seq_cls": [
            seq_cls_case("single_label_classification", 3, [0, 2, 1, 2], 1),
            seq_cls_case("multi_label_classification", 4, [[0, 3], [], [1], [1, 2, 3]], 2),
            seq_cls_case("regression", 1, [0.5, -1.0, 2.0, 0.25], 3),
        ],
        "embedding": embedding_cases(),
        "reranker": reranker_cases(),
    }
    with open(OUT, "w") as f:
        json.dump(record, f)
    print({k: [c["loss"] for c in v] for k, v in record.items()})


if __name__ == "__main__":
    main()
