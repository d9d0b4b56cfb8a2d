"""`--task_type embedding`: the decoder's last-token hidden state, L2-normalised, trained with ms-swift's
embedding losses (`swift_jax.tasks.embedding_losses`, `--loss_type`).

Pooling is ms-swift 4.6's for decoder embedding models (Qwen3-Embedding, GTE-Qwen): the hidden state of each
sequence's last token (after the final norm), divided by its L2 norm. Rows are ms-swift's: `messages` (the
anchor), `positive_messages` (a list of message lists; the first is used) and `negative_messages` (hard
negatives, a list of message lists), and for the pair losses a `label` (default 1.0).

One dataset row is one sample: its sequences (anchor, positive, negatives) laid end to end, each with its own
positions and attention segment (per-token extras `emb_role` = 1, 2, 3.. and `emb_position`), so padding and
packing work as for SFT and every sequence is pooled on its own. `--max_length` bounds a row's sequences together.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from swift_jax.data.errors import DataError
from swift_jax.data.formats import normalize
from swift_jax.data.samples import SampleProcessor
from swift_jax.data.templates import IGNORE
from swift_jax.tasks import embedding_losses as L
from swift_jax.tasks.seq_cls import segment_ends
from swift_jax.trainer.method import LossOutput, Method

ROLE, POSITION, LABEL = "emb_role", "emb_position", "emb_label"
MAX_ROLES = 64  # sequences of one row (anchor, positive, negatives): segment ids are sample * 64 + role


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def pooled(model, batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """`(vectors [m, embed], group [m], role [m], label [m], valid [m])` of every sequence in the batch, L2-normalised."""
    states, group, role, label, valid = last_states(model, batch)
    vectors = states / jnp.maximum(jnp.linalg.norm(states, axis=-1, keepdims=True), 1e-12)  # F.normalize
    return vectors, group, role, label, valid


def last_states(model, batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """`(hidden [m, embed], group [m], role [m], label [m], valid [m])`: each sequence's last-token hidden state
    (float32), its row's group id, its role and label, m static (rows x seq / 4: a templated sequence has more
    than 4 tokens)."""
    seg = batch["segment_ids"] * MAX_ROLES + batch[ROLE].astype(jnp.int32) * (batch["segment_ids"] > 0)
    hidden = model.hidden_states(batch["input_ids"], positions=batch[POSITION].astype(jnp.int32), segment_ids=seg)
    ends = segment_ends(seg).reshape(-1)  # [rows * seq]
    rows, width = seg.shape
    m = max(1, rows * width // 4)
    (index,) = jnp.nonzero(ends, size=m, fill_value=0)
    valid = jnp.arange(m) < ends.sum()
    vectors = hidden.reshape(rows * width, -1)[index].astype(jnp.float32)
    group = (index // width) * MAX_ROLES * 1024 + seg.reshape(-1)[index] // MAX_ROLES  # row and sample in the row
    return vectors, group, batch[ROLE].reshape(-1)[index].astype(jnp.int32), batch[LABEL].reshape(-1)[index], valid


class EmbeddingProcessor(SampleProcessor):
    """A row -> its anchor, positive and negatives end to end (see the module), or None when dropped."""

    extra_features = {ROLE: (), POSITION: (), LABEL: ()}
    hard_negatives: int | None = None
    reranker = False
    """Reranker rows: the sequences are the query's messages followed by each document's (positive: role 1,
    negatives: 2..), as ms-swift's reranker template joins them."""

    def _ids(self, messages, ref, what: str) -> np.ndarray:
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{what}: expected a list of messages")
        sample = normalize({"messages": messages}, None)
        if sample["messages"][-1]["role"] == "assistant":
            ids = self.encoder.encode(sample).input_ids
        else:
            ids = self.encoder.prompt_ids(sample["messages"])
        ids = np.asarray(ids, np.int32)
        return ids[-self.args.max_length :] if self.args.truncation_strategy == "left" else ids[: self.args.max_length]

    def encode_pieces(self, row: dict, ref) -> list[dict[str, np.ndarray]]:
        """The row's one sample, or none when it is dropped (see the class)."""
        try:
            positives, negatives = row.get("positive_messages") or [], row.get("negative_messages") or []
            if not positives:
                raise DataError("no 'positive_messages' (an embedding row needs the anchor's positive)")
            if self.hard_negatives is not None:
                negatives = negatives[: self.hard_negatives]
            query = row.get("messages") if self.reranker else []
            docs = [(positives[0], "'positive_messages'")] + [(n, f"'negative_messages'[{i}]") for i, n in enumerate(negatives)]
            seqs = [] if self.reranker else [self._ids(row.get("messages"), ref, "'messages'")]
            seqs += [self._ids(list(query or []) + list(doc or []), ref, what) for doc, what in docs]
            if len(seqs) >= MAX_ROLES:
                raise DataError(f"{len(negatives)} negatives: at most {MAX_ROLES - 3} are supported")
            label = float(row["label"]) if row.get("label") is not None else 1.0
        except (DataError, ValueError, TypeError) as e:
            self.bad.handle(DataError(f"{ref}: {e}"))
            self.counters.add("bad_rows_skipped")
            return []
        if sum(map(len, seqs)) > self.args.max_length:
            self.counters.add("dropped_too_long")
            return []
        self.counters.add("kept")
        ids = np.concatenate(seqs).astype(np.int32)
        return [{"input_ids": ids, "labels": np.full(len(ids), IGNORE, np.int32),
                ROLE: np.concatenate([np.full(len(s), r + 1, np.float32) for r, s in enumerate(seqs)]),
                POSITION: np.concatenate([np.arange(len(s), dtype=np.float32) for s in seqs]),
                LABEL: np.full(len(ids), label, np.float32)}]


class Embedding(Method):
    """`--task_type embedding --loss_type infonce|cosine_similarity|contrastive|online_contrastive`. InfoNCE reads
    ms-swift's environment variables INFONCE_TEMPERATURE, INFONCE_USE_BATCH and INFONCE_HARD_NEGATIVES."""

    name = "embedding"
    batch_keys = ("input_ids", "segment_ids", ROLE, POSITION, LABEL)

    def __init__(self, loss_type: str | None = None):
        self.loss_type = loss_type or "infonce"
        if self.loss_type not in L.LOSS_TYPES:
            raise ValueError(f"--loss_type {self.loss_type!r} with --task_type embedding: expected one of {L.LOSS_TYPES}")
        self.temperature = float(os.environ.get("INFONCE_TEMPERATURE", "0.1"))
        self.use_batch = _env_flag("INFONCE_USE_BATCH", "true")
        hard = os.environ.get("INFONCE_HARD_NEGATIVES")
        self.hard_negatives = int(hard) if hard else None

    def build_data(self, args, tokenizer, **kwargs):
        from swift_jax.data import build_data

        processor = type("EmbeddingProcessor", (EmbeddingProcessor,), {"hard_negatives": self.hard_negatives})
        return build_data(args, tokenizer, processor=processor, **kwargs)

    def loss(self, model, batch, extra) -> LossOutput:
        vectors, group, role, label, valid = pooled(model, batch)
        if self.loss_type == "infonce":
            total, n, correct = L.infonce(vectors, group, role, valid, temperature=self.temperature, use_batch=self.use_batch)
            return LossOutput(total, n, {"acc": (correct.astype(jnp.float32), n)})
        cos, labels, pair = L.pair_cosines(vectors, group, role, valid, label)
        total, n = L.pair_loss(self.loss_type, cos, labels, pair)
        return LossOutput(total, n, {"cos_sim": (jnp.where(pair, cos, 0).sum(), pair.sum().astype(jnp.float32))})

    def describe(self) -> str:
        return f"embedding ({self.loss_type})"


def write_sentence_transformers(folder: str, hidden_size: int, max_length: int) -> None:
    """Next to an HF model folder, the files that make it a sentence-transformers model with our pooling: the
    transformer, last-token pooling, L2 normalisation (Qwen3-Embedding's layout)."""
    import json

    modules = [("sentence_transformers.models.Transformer", ""), ("sentence_transformers.models.Pooling", "1_Pooling"),
               ("sentence_transformers.models.Normalize", "2_Normalize")]
    files = {
        "modules.json": [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (kind, path) in enumerate(modules)],
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False,
                                  "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                                  "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                                  "pooling_mode_lasttoken": True, "include_prompt": True},
    }
    os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f, indent=2)
