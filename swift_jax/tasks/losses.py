"""Sequence-classification losses as transformers' `*ForSequenceClassification` (and ms-swift 4.6's patched
forward) computes them, per sequence, so a packed row's segments each contribute one term.

    regression                  MSE(logits, target)           logits/targets [n, num_labels] (one label: [n])
    single_label_classification cross-entropy(logits, class)  targets one-hot [n, num_labels]
    multi_label_classification  BCE-with-logits(logits, y)    targets multi-hot [n, num_labels], mean over labels

Each returns per-sequence losses `[n]`; the mean over sequences is the loss transformers reports.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def per_sequence_loss(problem_type: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`[n, labels]` logits and targets (float32) -> `[n]` losses whose mean is transformers' loss."""
    logits, targets = logits.astype(jnp.float32), targets.astype(jnp.float32)
    if problem_type == "regression":
        return jnp.mean((logits - targets) ** 2, axis=-1)
    if problem_type == "single_label_classification":
        return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    if problem_type == "multi_label_classification":  # BCEWithLogitsLoss: max(x, 0) - x y + log(1 + e^-|x|)
        terms = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        return jnp.mean(terms, axis=-1)
    raise ValueError(f"problem_type {problem_type!r}")


def prediction_counts(problem_type: str, logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Per-sequence `[n]` counts the metrics are made of: `correct` (ms-swift's `acc`: the argmax class; multi-label:
    every label right at sigmoid > 0.5) and, for F1, true positives, false positives and false negatives (binary
    single-label: of class 1; multi-label: summed over labels). Regression has none."""
    if problem_type == "regression":
        return {}
    if problem_type == "single_label_classification":
        pred, gold = jnp.argmax(logits, -1), jnp.argmax(targets, -1)
        out = {"correct": (pred == gold).astype(jnp.float32)}
        if logits.shape[-1] == 2:
            p, g = pred == 1, gold == 1
            out |= {"tp": (p & g).astype(jnp.float32), "fp": (p & ~g).astype(jnp.float32), "fn": (~p & g).astype(jnp.float32)}
        return out
    pred, gold = logits > 0, targets > 0.5  # sigmoid(x) > 0.5 <=> x > 0
    return {"correct": jnp.all(pred == gold, -1).astype(jnp.float32),
            "tp": (pred & gold).sum(-1).astype(jnp.float32), "fp": (pred & ~gold).sum(-1).astype(jnp.float32),
            "fn": (~pred & gold).sum(-1).astype(jnp.float32)}
