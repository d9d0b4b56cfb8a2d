"""`--task_type seq_cls`: a classification head (`score`) on the decoder, read at each sequence's last token.

As transformers' `*ForSequenceClassification` (and ms-swift 4.6, which builds one for `--task_type seq_cls`):
logits = `score(hidden)` at the last non-padding token; a packed row's segments are each pooled at their own
last token. Rows are ms-swift's: a chat (`messages`, or any format SFT reads) plus a `label` column: an
integer class (single-label), a list of classes (multi-label) or a number (regression). A chat whose last
message is the user's is encoded as a generation prompt (the assistant turn opened), as ms-swift's template
encodes a row without a response.

Targets travel with the tokens: each sample carries `cls_target` `[n, num_labels]` whose row at the last
token holds the one-hot / multi-hot / regression target (zeros elsewhere), so padding and packing need no
special case; the loss reads the positions where a segment ends.
"""

from __future__ import annotations

import json
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from swift_jax.data.errors import DataError
from swift_jax.data.formats import normalize
from swift_jax.data.samples import SampleProcessor, truncate
from swift_jax.data.templates import IGNORE
from swift_jax.tasks.losses import per_sequence_loss, prediction_counts
from swift_jax.trainer.method import LossOutput, Method

TARGET = "cls_target"


def segment_ends(segment_ids: jax.Array) -> jax.Array:
    """`[rows, seq]` bool: the last token of each segment (segment_ids > 0), padded or packed rows alike."""
    following = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
    return (segment_ids > 0) & (segment_ids != following)


def target_of(label, problem_type: str, num_labels: int) -> np.ndarray:
    """ms-swift's `label` value -> the `[num_labels]` float32 target; raises DataError saying what was expected."""
    if problem_type == "regression":
        values = label if isinstance(label, (list, tuple)) else [label]
        if len(values) != num_labels or not all(isinstance(v, numbers.Real) for v in values):
            raise DataError(f"'label' {label!r}: expected {num_labels} number(s) for regression")
        return np.asarray(values, np.float32)
    classes = label if problem_type == "multi_label_classification" else [label]
    if not isinstance(classes, (list, tuple)):
        raise DataError(f"'label' {label!r}: expected a list of class indices for multi_label_classification")
    target = np.zeros(num_labels, np.float32)
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) and not (isinstance(c, float) and c.is_integer()):
            hint = " (pass --problem_type multi_label_classification for lists)" if isinstance(c, (list, tuple)) else ""
            raise DataError(f"'label' {label!r}: expected a class index in [0, {num_labels}){hint}")
        if not 0 <= int(c) < num_labels:
            raise DataError(f"'label' {label!r}: class {c} is outside [0, {num_labels}) (--num_labels {num_labels})")
        target[int(c)] = 1.0
    return target


class SeqClsProcessor(SampleProcessor):
    """Rows -> `{"input_ids": [n], "labels": [n] (all ignored), "cls_target": [n, num_labels]}`; see the module."""

    problem_type = "single_label_classification"
    num_labels = 2

    @property
    def extra_features(self) -> dict[str, tuple[int, ...]]:
        return {TARGET: (self.num_labels,)}

    @classmethod
    def configured(cls, problem_type: str, num_labels: int):
        """A subclass bound to the run's labels (the pipeline builds processors from a class)."""
        return type(cls.__name__, (cls,), {"problem_type": problem_type, "num_labels": num_labels})

    def encode_pieces(self, row: dict, ref) -> list[dict[str, np.ndarray]]:
        """The row's one sample, or none when it is dropped (see the class)."""
        try:
            columns = self.args.columns or {}
            label = {columns.get(k, k): v for k, v in row.items()}.get("label")
            if label is None:
                raise DataError(f"no 'label' (a seq_cls row needs one; fields: {sorted(row)})")
            if isinstance(label, str):  # a CSV column holds text
                label = json.loads(label)
            target = target_of(label, self.problem_type, self.num_labels)
            sample = normalize({k: v for k, v in row.items() if k != "label"}, self.args.columns)
            if "text" in sample or sample["messages"][-1]["role"] == "assistant":
                ids = self.encoder.encode(sample).input_ids
            else:
                ids = self.encoder.prompt_ids(sample["messages"], sample.get("tools"), sample.get("chat_template_kwargs"))
        except (DataError, ValueError) as e:
            message = str(e)
            self.bad.handle(DataError(message) if message.startswith(str(ref)) else DataError(f"{ref}: {message}"))
            self.counters.add("bad_rows_skipped")
            return []
        ids = np.asarray(ids, np.int32)
        cut = truncate(ids, ids, self.args.max_length, self.args.truncation_strategy)
        if cut is None or not len(cut[0]):
            self.counters.add("dropped_too_long")
            return []
        ids = np.ascontiguousarray(cut[0], np.int32)
        targets = np.zeros((len(ids), self.num_labels), np.float32)
        targets[-1] = target
        self.counters.add("kept")
        return [{"input_ids": ids, "labels": np.full(len(ids), IGNORE, np.int32), TARGET: targets}]


class SequenceClassification(Method):
    """`--task_type seq_cls`: the head's loss per sequence (see `swift_jax.tasks.losses`), mean over sequences;
    logs ms-swift's `acc` (not for regression) and `f1` (binary: of class 1; multi-label: micro)."""

    name = "seq_cls"
    batch_keys = ("input_ids", "segment_ids", "positions", TARGET)

    def __init__(self, problem_type: str, num_labels: int):
        self.problem_type, self.num_labels = problem_type, num_labels

    def build_data(self, args, tokenizer, **kwargs):
        from swift_jax.data import build_data

        return build_data(args, tokenizer, processor=SeqClsProcessor.configured(self.problem_type, self.num_labels), **kwargs)

    def prepare_model(self, model) -> None:
        """Attach the `score` head (kept when the checkpoint has one of this size); the exported config names the
        problem type, as ms-swift's does."""
        from swift_jax.tuners.value_head import attach_value_head

        head = getattr(model, "score", None)
        if head is not None and head.num_labels != self.num_labels:
            raise ValueError(f"--num_labels {self.num_labels}: the checkpoint's score head has {head.num_labels} outputs")
        attach_value_head(model, num_labels=self.num_labels)
        hf = {**model.config.hf_config, "problem_type": self.problem_type}
        model.config = model.config.replace(hf_config_json=json.dumps(hf))

    def loss(self, model, batch, extra) -> LossOutput:
        seg = batch["segment_ids"]
        hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"], segment_ids=seg)
        logits = model.score.logits(hidden)  # [rows, seq, labels]: cheap beside the decoder, and any segment count
        ends = segment_ends(seg)  # [rows, seq]
        losses = per_sequence_loss(self.problem_type, logits, batch[TARGET])
        n = ends.sum().astype(jnp.float32)
        metrics = {}
        counts = prediction_counts(self.problem_type, logits, batch[TARGET])
        if "correct" in counts:
            metrics["acc"] = (jnp.where(ends, counts["correct"], 0).sum(), n)
        if "tp" in counts:
            tp, fp, fn = (jnp.where(ends, counts[k], 0).sum() for k in ("tp", "fp", "fn"))
            metrics["f1"] = (2 * tp, 2 * tp + fp + fn)
        return LossOutput(jnp.where(ends, losses, 0).sum(), n, metrics)

    def describe(self) -> str:
        return f"seq_cls ({self.problem_type}, {self.num_labels} labels)"


def make_method(task, model_config) -> SequenceClassification:
    """The seq_cls method of `task` (`TaskArgs`), defaults from the checkpoint's config as ms-swift takes them:
    num_labels from a trained head, problem_type from `problem_type`, else by the number of labels."""
    hf = model_config.hf_config
    num_labels = task.num_labels
    if num_labels is None and hf.get("architectures") and "ForSequenceClassification" in hf["architectures"][0]:
        num_labels = len(hf.get("id2label") or {}) or None
    if num_labels is None:
        raise ValueError("--task_type seq_cls needs --num_labels (the number of classes; 1 for regression)")
    problem_type = task.problem_type or hf.get("problem_type") or ("regression" if num_labels == 1 else "single_label_classification")
    return SequenceClassification(problem_type, num_labels)
