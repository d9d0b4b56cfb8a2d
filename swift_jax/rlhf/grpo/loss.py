"""The clipped policy-gradient loss of GRPO and its variants (DAPO, Dr. GRPO, BNPO, GSPO), as ms-swift 4.6.

Pure functions of per-token log-probabilities `[rows, completion_len]` (the policy's, the sampling
policy's = "old", the reference's), per-row advantages and the completion mask; traced inside the
training step. They follow `GRPOTrainer._compute_loss_and_metrics` in ms-swift 4.6
(`swift/rlhf_trainers/grpo_trainer.py`); where TRL differs, ms-swift's formula is the one here:

- ratio `r = exp(log_w)`; `log_w` per token (`token`), the masked mean over the sequence (`sequence`, GSPO)
  or GSPO-token's `logp - sg(logp) + sg(seq mean)` (`sequence_token`);
- per-token loss `-min(r' A, clip(r, 1 - epsilon, 1 + epsilon_high) A)`, with `r' = min(r, delta)` when
  `delta` is set (two-sided clipping), plus `beta * k3` with `k3 = exp(d) - d - 1`, `d = ref - logp`
  (both clamped as ms-swift does) unless the KL went into the reward;
- reduction by `loss_type` (see `reduce_loss`).

Every reduction is returned as `(sum, count)` so that the trainer's accumulation (sum of sums over sum of
counts) reproduces ms-swift's accumulated value exactly; see `reduce_loss`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence", "sequence_token")

Metric = tuple[jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """The loss's hyper-parameters under ms-swift's argument names (static: part of the compiled step)."""

    loss_type: str = "grpo"
    importance_sampling_level: str = "token"
    epsilon: float = 0.2
    epsilon_high: float | None = None  # DAPO clip-higher; None = epsilon
    delta: float | None = None  # two-sided GRPO: cap the unclipped ratio at delta
    beta: float = 0.04
    kl_in_reward: bool = False
    max_completion_length: int = 512  # Dr. GRPO's constant normaliser

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(
                f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {self.importance_sampling_level!r}"
            )

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def kl_in_loss(self) -> bool:
        return self.beta != 0.0 and not self.kl_in_reward


def k3_kl(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
    """Per-token k3 estimate of KL(policy || reference): `exp(d) - d - 1`, `d = ref - logp`.

    ms-swift clamps `d` to [-20, 20] and the result to [-10, 10] (overflow guards); so do we.
    """
    d = jnp.clip(ref_logps - logps, -20.0, 20.0)
    return jnp.clip(jnp.exp(d) - d - 1.0, -10.0, 10.0)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over `mask`'s true entries (0 when there are none, as ms-swift's clamp(min=1))."""
    return jnp.where(mask, x, 0.0).sum() / jnp.maximum(mask.sum(), 1).astype(jnp.float32)


def log_importance_weights(logps: jax.Array, old_logps: jax.Array, mask: jax.Array, level: str) -> jax.Array:
    """Log importance ratios: `[rows, len]` for `token` / `sequence_token`, `[rows, 1]` for `sequence`."""
    log_ratio = logps - old_logps  # [rows, len]
    if level == "token":
        return log_ratio
    maskf = mask.astype(log_ratio.dtype)
    seq = ((log_ratio * maskf).sum(-1) / jnp.maximum(maskf.sum(-1), 1.0))[:, None]  # [rows, 1]
    if level == "sequence":
        return seq
    return logps - jax.lax.stop_gradient(logps) + jax.lax.stop_gradient(seq)  # GSPO-token


def per_token_policy_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: PolicyLossConfig,
    ref_logps: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """`(per_token_loss [rows, len], ratio (after the delta cap), per_token_kl or None)`.

    advantages: `[rows]` (broadcast over tokens as ms-swift's `expand_advantage_to_per_token`).
    """
    ratio = jnp.exp(log_importance_weights(logps, old_logps, mask, cfg.importance_sampling_level))
    adv = advantages[:, None]  # [rows, 1]
    clipped = jnp.clip(ratio, 1.0 - cfg.epsilon, 1.0 + cfg.epsilon_upper)
    if cfg.delta is not None:
        ratio = jnp.minimum(ratio, cfg.delta)
    loss = -jnp.minimum(ratio * adv, clipped * adv)
    loss = jnp.broadcast_to(loss, logps.shape)
    kl = None
    if cfg.kl_in_loss:
        if ref_logps is None:
            raise ValueError("beta != 0 with the KL in the loss needs the reference log-probs (ref_logps)")
        kl = k3_kl(logps, ref_logps)
        loss = loss + cfg.beta * kl
    return loss, ratio, kl


def reduce_loss(per_token_loss: jax.Array, mask: jax.Array, unfiltered_mask: jax.Array, cfg: PolicyLossConfig) -> tuple[jax.Array, jax.Array]:
    """`(loss_sum, count)` of one micro-batch; the step's loss is the sum of sums over the sum of counts.

    - grpo: each sequence's token mean, averaged over sequences -> (sum of sequence means, rows);
    - bnpo: the micro-batch's token mean, averaged over micro-batches -> (micro-batch mean, 1);
    - dr_grpo: token sum over (rows x max_completion_length) -> (token sum / max_completion_length, rows);
    - dapo: token sum over the whole step's completion tokens -> (token sum, completion tokens). ms-swift
      counts the tokens before the overlong filter (`num_items_in_batch`), hence `unfiltered_mask`.
    `mask` is the completion mask after the overlong filter; rows left empty by it still count as rows.
    """
    maskf = mask.astype(per_token_loss.dtype)
    token_sum = (per_token_loss * maskf).sum()
    rows = jnp.asarray(mask.shape[0], jnp.float32)
    if cfg.loss_type == "grpo":
        seq_means = (per_token_loss * maskf).sum(-1) / jnp.maximum(maskf.sum(-1), 1.0)
        return seq_means.sum(), rows
    if cfg.loss_type == "bnpo":
        return token_sum / jnp.maximum(maskf.sum(), 1.0), jnp.ones((), jnp.float32)
    if cfg.loss_type == "dr_grpo":
        return token_sum / cfg.max_completion_length, rows
    return token_sum, unfiltered_mask.sum().astype(jnp.float32)


def clip_metrics(ratio: jax.Array, advantages: jax.Array, mask: jax.Array, cfg: PolicyLossConfig) -> dict[str, Metric]:
    """`clip_ratio/low_mean`, `high_mean`, `region_mean`: the share of completion tokens whose ratio is
    below `1 - epsilon` with a negative advantage / above `1 + epsilon_high` with a positive one / either.
    Each is a micro-batch token mean, averaged over micro-batches (ms-swift logs one value per micro-batch)."""
    adv = advantages[:, None]
    ratio = jnp.broadcast_to(ratio, mask.shape)
    low = (ratio < 1.0 - cfg.epsilon) & (adv < 0)
    high = (ratio > 1.0 + cfg.epsilon_upper) & (adv > 0)
    one = jnp.ones((), jnp.float32)
    return {
        "clip_ratio/low_mean": (_masked_mean(low.astype(jnp.float32), mask), one),
        "clip_ratio/high_mean": (_masked_mean(high.astype(jnp.float32), mask), one),
        "clip_ratio/region_mean": (_masked_mean((low | high).astype(jnp.float32), mask), one),
    }


def policy_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    advantages: jax.Array,
    completion_mask: jax.Array,
    cfg: PolicyLossConfig,
    *,
    ref_logps: jax.Array | None = None,
    truncated: jax.Array | None = None,
    overlong_filter: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, Metric]]:
    """`(loss_sum, count, metrics)` of one micro-batch of completions.

    logps / old_logps / ref_logps: `[rows, len]` per-token log-probs of the completion tokens;
    advantages: `[rows]`; completion_mask: `[rows, len]` (1 on completion tokens, eos included);
    truncated: `[rows]` bool, completions that hit max_completion_length (with `overlong_filter` they
    leave the loss and the metrics, as in DAPO). Metrics: `kl` (k3, when in the loss) and the clip ratios.
    """
    unfiltered = completion_mask.astype(bool)
    mask = unfiltered
    if overlong_filter and truncated is not None:
        mask = mask & ~truncated[:, None]
    per_token, ratio, kl = per_token_policy_loss(logps, old_logps, advantages, mask, cfg, ref_logps)
    loss_sum, count = reduce_loss(per_token, mask, unfiltered, cfg)
    metrics = clip_metrics(ratio, advantages, mask, cfg)
    if kl is not None:
        metrics["kl"] = (_masked_mean(kl, mask), jnp.ones((), jnp.float32))
    return loss_sum, count, metrics
