"""ms-swift 4.6's embedding losses (`swift/loss/embedding.py`) on pooled, L2-normalised vectors.

Vectors come as `[m, embed]` with, per vector, its group (one dataset row), its role (1 anchor, 2 positive,
3.. hard negatives) and validity, so one formula serves padded and packed batches and any number of negatives:

- infonce: each anchor's positive against the documents (positives and negatives) of every group in the batch
  (`INFONCE_USE_BATCH`, default true) or of its own group, scaled by 1 / `INFONCE_TEMPERATURE` (default 0.1);
  cross-entropy with the positive as the target, mean over anchors;
- cosine_similarity: MSE between cos(anchor, positive) and the row's `label`;
- contrastive: 0.5 (l d^2 + (1 - l) relu(0.5 - d)^2), d = 1 - cos, mean over pairs;
- online_contrastive: the same terms over the hard pairs only (positives farther than the nearest negative,
  negatives nearer than the farthest positive), summed (as sentence-transformers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_TYPES = ("infonce", "cosine_similarity", "contrastive", "online_contrastive")
MARGIN = 0.5


def infonce(vectors, group, role, valid, *, temperature: float = 0.1, use_batch: bool = True):
    """`(loss_sum, anchors, correct)`: summed InfoNCE over the anchors, their count, and how many rank their own
    positive first (the `acc` metric). vectors `[m, embed]`; group/role/valid `[m]`."""
    sim = vectors @ vectors.T / temperature  # [m, m]
    anchor = valid & (role == 1)
    doc = valid & (role >= 2)
    same = group[:, None] == group[None, :]
    columns = doc[None, :] & (True if use_batch else same)
    target = same & (role[None, :] == 2) & valid[None, :]  # each anchor's positive (the first, as ms-swift)
    masked = jnp.where(columns, sim, -jnp.inf)
    positive = jnp.max(jnp.where(target, sim, -jnp.inf), axis=1)
    losses = jax.nn.logsumexp(masked, axis=1) - positive
    correct = positive >= jnp.max(masked, axis=1)
    return jnp.where(anchor, losses, 0).sum(), anchor.sum().astype(jnp.float32), jnp.where(anchor, correct, False).sum()


def pair_cosines(vectors, group, role, valid, labels):
    """`(cos [m], label [m], pair [m])`: for each anchor, cos(anchor, its positive) and its row's label."""
    same = (group[:, None] == group[None, :]) & (role[None, :] == 2) & valid[None, :]
    cos = jnp.sum(jnp.where(same, vectors @ vectors.T, 0.0), axis=1)
    pair = valid & (role == 1) & same.any(1)
    return cos, labels, pair


def pair_loss(loss_type: str, cos, labels, pair):
    """`(loss_sum, count)` of a pair loss over the anchors marked in `pair` (see the module)."""
    n = pair.sum().astype(jnp.float32)
    if loss_type == "cosine_similarity":
        return jnp.where(pair, (cos - labels) ** 2, 0).sum(), n
    d = 1.0 - cos
    if loss_type == "contrastive":
        terms = 0.5 * (labels * d**2 + (1 - labels) * jax.nn.relu(MARGIN - d) ** 2)
        return jnp.where(pair, terms, 0).sum(), n
    pos, neg = pair & (labels == 1), pair & (labels == 0)
    n_pos, n_neg = pos.sum(), neg.sum()
    mean = lambda m: jnp.where(m, d, 0).sum() / jnp.maximum(m.sum(), 1)
    pos_max = jnp.where(n_pos > 1, jnp.max(jnp.where(pos, d, -jnp.inf)), mean(neg))
    neg_min = jnp.where(n_neg > 1, jnp.min(jnp.where(neg, d, jnp.inf)), mean(pos))
    hard_neg = neg & (d < pos_max)
    hard_pos = pos & (d > neg_min)
    loss = jnp.where(hard_pos, d**2, 0).sum() + jnp.where(hard_neg, jax.nn.relu(MARGIN - d) ** 2, 0).sum()
    return loss, jnp.asarray(1.0, jnp.float32)
