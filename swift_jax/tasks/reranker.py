"""`--task_type reranker`: a one-label `score` head read at the last token of each (query, document) sequence,
trained with ms-swift 4.6's reranker losses (`swift/loss/reranker.py`, `--loss_type`):

- pointwise_reranker (default): BCE-with-logits of each document's score against 1 (positive) / 0 (negative),
  mean over documents;
- listwise_reranker: per row, cross-entropy of the positive among the row's documents with scores divided by
  `LISTWISE_RERANKER_TEMPERATURE` (1.0); rows with fewer than `LISTWISE_RERANKER_MIN_GROUP_SIZE` (2)
  documents are skipped; mean over rows.

Rows are ms-swift's reranker rows: `messages` (the query), `positive_messages` (the first is used) and
`negative_messages` (the first `MAX_NEGATIVE_SAMPLES`, default 7; ms-swift samples them at random); each
document is the query's messages followed by the document's, laid out as `swift_jax.tasks.embedding` lays out a row.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from swift_jax.tasks.embedding import LABEL, POSITION, ROLE, EmbeddingProcessor, last_states
from swift_jax.trainer.method import LossOutput, Method

LOSS_TYPES = ("pointwise_reranker", "listwise_reranker")


def pointwise(scores, role, valid):
    """`(loss_sum, count)`: BCE-with-logits of every valid document (role 1: positive) -> mean over documents."""
    y = (role == 1).astype(jnp.float32)
    terms = jnp.maximum(scores, 0) - scores * y + jnp.log1p(jnp.exp(-jnp.abs(scores)))
    return jnp.where(valid, terms, 0).sum(), valid.sum().astype(jnp.float32)


def listwise(scores, group, role, valid, *, temperature: float = 1.0, min_group_size: int = 2):
    """`(loss_sum, rows, correct)`: per row, -log softmax(scores / temperature)[positive] over its documents."""
    same = (group[:, None] == group[None, :]) & valid[:, None] & valid[None, :]  # [m, m]
    head = valid & (role == 1) & (same.sum(1) >= min_group_size)  # one per kept row: its positive
    scaled = scores / temperature
    losses = jax.nn.logsumexp(jnp.where(same, scaled[None, :], -jnp.inf), axis=1) - scaled
    correct = scaled >= jnp.max(jnp.where(same, scaled[None, :], -jnp.inf), axis=1)
    return jnp.where(head, losses, 0).sum(), head.sum().astype(jnp.float32), jnp.where(head, correct, False).sum()


class Reranker(Method):
    """`--task_type reranker --loss_type pointwise_reranker|listwise_reranker`; logs `acc` (listwise: rows whose
    positive scores highest; pointwise: documents on the right side of 0)."""

    name = "reranker"
    batch_keys = ("input_ids", "segment_ids", ROLE, POSITION, LABEL)

    def __init__(self, loss_type: str | None = None):
        self.loss_type = loss_type or "pointwise_reranker"
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"--loss_type {self.loss_type!r} with --task_type reranker: expected one of {LOSS_TYPES}")
        self.temperature = float(os.environ.get("LISTWISE_RERANKER_TEMPERATURE", "1.0"))
        self.min_group_size = int(os.environ.get("LISTWISE_RERANKER_MIN_GROUP_SIZE", "2"))
        self.negatives = int(os.environ.get("MAX_NEGATIVE_SAMPLES", "7"))

    def build_data(self, args, tokenizer, **kwargs):
        from swift_jax.data import build_data

        processor = type("RerankerProcessor", (EmbeddingProcessor,), {"hard_negatives": self.negatives, "reranker": True})
        return build_data(args, tokenizer, processor=processor, **kwargs)

    def prepare_model(self, model) -> None:
        from swift_jax.tuners.value_head import attach_value_head

        attach_value_head(model, num_labels=1)

    def loss(self, model, batch, extra) -> LossOutput:
        states, group, role, _, valid = last_states(model, batch)
        scores = model.score(states)  # [m]
        if self.loss_type == "listwise_reranker":
            total, n, correct = listwise(scores, group, role, valid, temperature=self.temperature,
                                         min_group_size=self.min_group_size)
            return LossOutput(total, n, {"acc": (correct.astype(jnp.float32), n)})
        total, n = pointwise(scores, role, valid)
        right = jnp.where(valid, (scores > 0) == (role == 1), False).sum().astype(jnp.float32)
        return LossOutput(total, n, {"acc": (right, n)})

    def describe(self) -> str:
        return f"reranker ({self.loss_type})"
