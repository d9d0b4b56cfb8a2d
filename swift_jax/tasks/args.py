"""`--task_type` and its options (ms-swift's names): what the model is trained to output.

`causal_lm` (default) is next-token prediction; `seq_cls` puts a classification head (`score`) on the decoder
and reads each sequence's last token (`swift_jax.tasks.seq_cls`); `embedding` trains the last token's normalised
hidden state with ms-swift's embedding losses (`swift_jax.tasks.embedding`); `reranker` scores (query, document)
sequences with a one-label head (`swift_jax.tasks.reranker`).
"""

from __future__ import annotations

import dataclasses

TASK_TYPES = ("causal_lm", "seq_cls", "embedding", "reranker")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass
class TaskArgs:
    task_type: str | None = None
    """causal_lm (default) or seq_cls (a `score` head at the last token, as transformers' *ForSequenceClassification)."""
    num_labels: int | None = None
    """seq_cls: the head's outputs (default: the checkpoint's `score` head, if it has one)."""
    problem_type: str | None = None
    """seq_cls: regression (MSE), single_label_classification (cross-entropy) or multi_label_classification
    (BCE); default: the checkpoint config's, else regression for one label and single-label otherwise."""
    task_loss_type: str | None = None
    """sft's `--loss_type` (the flag's name there): for --task_type embedding infonce (default), cosine_similarity,
    contrastive or online_contrastive; for reranker pointwise_reranker (default) or listwise_reranker (ms-swift's loss
    plugins); rlhf's --loss_type is its own (DPO's)."""

    def validate(self) -> "TaskArgs":
        """Check the names; fill `task_type`'s default."""
        self.task_type = self.task_type or "causal_lm"
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"--task_type {self.task_type!r}: expected one of {TASK_TYPES}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"--problem_type {self.problem_type!r}: expected one of {PROBLEM_TYPES}")
        if self.num_labels is not None and self.num_labels < 1:
            raise ValueError(f"--num_labels must be >= 1, got {self.num_labels}")
        if self.task_type != "seq_cls" and (self.num_labels or self.problem_type):
            raise ValueError("--num_labels / --problem_type need --task_type seq_cls")
        if self.task_loss_type is not None and self.task_type not in ("embedding", "reranker"):
            raise ValueError(f"--loss_type {self.task_loss_type}: sft's loss is the cross-entropy; --loss_type picks an "
                             "embedding loss (--task_type embedding)")
        return self
