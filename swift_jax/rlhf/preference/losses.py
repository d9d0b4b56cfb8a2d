"""Preference losses as pure functions of per-sequence log-probabilities (TRL's formulas, ms-swift's variants).

Every function takes `[pairs]` arrays and a `valid` mask `[pairs]` (False for the padding pairs a fixed-shape
batch carries) and returns per-pair losses (0 on padding) plus whatever rewards the trainer logs. The
formulas follow ms-swift 4.6's `DPOTrainer.dpo_loss` (which overrides TRL 0.29's), TRL's `CPOTrainer`,
`ORPOTrainer`, `KTOTrainer` and ms-swift's `RewardTrainer`; where they differ, ms-swift's are used:

- DPO rewards are always `beta * (logps - ref_logps)` (also for `sft`, `nca_pair`, ...), and with several
  `loss_type`s they are the `loss_weights`-weighted sum of each type's rewards (ms-swift's MPO);
- `ipo` divides every log-prob (policy and reference) by the answer's token count first;
- `exo_pair` uses `label_smoothing = 1e-3` when it is 0;
- `bco_pair` centres on a running mean of the micro-batches' mean rewards (TRL's `RunningMoments`, carried
  across steps by the method: `DPOHyper.bco_delta`); without one, on the micro-batch's own mean (= the first
  update of a fresh running mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

log_sigmoid = jax.nn.log_sigmoid


class PairLogps(NamedTuple):
    """Per-pair summed log-probs and token counts of the chosen and rejected answers, `[pairs]` each."""

    chosen: jax.Array
    rejected: jax.Array
    chosen_tokens: jax.Array
    rejected_tokens: jax.Array


class DPOHyper(NamedTuple):
    """The scalars the DPO-family losses read."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    bco_delta: jax.Array | None = None  # bco_pair's centre: the running mean reward (None: this batch's mean)


class RunningMean(NamedTuple):
    """TRL's `RunningMoments` mean: the average of every update's value so far (scalars)."""

    mean: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls) -> "RunningMean":
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def update(self, value: jax.Array, present: jax.Array) -> "RunningMean":
        """Fold in `value` (one update, as TRL's per micro-batch) unless `present` is false."""
        count = self.count + present.astype(jnp.float32)
        mean = self.mean + jnp.where(present, (value - self.mean) / jnp.maximum(count, 1), 0.0)
        return RunningMean(jax.lax.stop_gradient(mean), count)


def bco_batch_reward(x: "Logratios", valid: jax.Array, beta: float) -> jax.Array:
    """The mean of `beta * log-ratio` over the valid pairs' chosen and rejected answers (TRL's `rewards`)."""
    return jax.lax.stop_gradient(_masked_mean(beta * x.chosen, valid) + _masked_mean(beta * x.rejected, valid)) / 2


def _masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
    return jnp.where(valid, x, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def _sorted_valid_first(x: jax.Array, valid: jax.Array) -> jax.Array:
    """`x` sorted ascending over the valid entries, padding entries (+inf) at the end."""
    return jnp.sort(jnp.where(valid, x, jnp.inf))


def _smoothed_sigmoid(z: jax.Array, h: DPOHyper) -> jax.Array:
    return -log_sigmoid(z) * (1 - h.label_smoothing) - log_sigmoid(-z) * h.label_smoothing


class Logratios(NamedTuple):
    """Policy and reference log-probs of one pair batch, `[pairs]` each (length-normalised for `ipo`)."""

    policy_chosen: jax.Array
    policy_rejected: jax.Array
    ref_chosen: jax.Array
    ref_rejected: jax.Array

    @property
    def chosen(self) -> jax.Array:  # log pi(chosen) / pi_ref(chosen)
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected(self) -> jax.Array:
        return self.policy_rejected - self.ref_rejected


# Each DPO loss: (x: Logratios, valid, h, nll) -> per-pair losses; `nll` is the chosen answers' mean token NLL
# of the micro-batch (a scalar, for `sft`). Most read only the log-ratio difference `x.chosen - x.rejected`.
def _sigmoid(x, valid, h, nll):
    return _smoothed_sigmoid(h.beta * (x.chosen - x.rejected), h)


def _robust(x, valid, h, nll):
    z = h.beta * (x.chosen - x.rejected)
    return (-log_sigmoid(z) * (1 - h.label_smoothing) + log_sigmoid(-z) * h.label_smoothing) / (1 - 2 * h.label_smoothing)


def _exo_pair(x, valid, h, nll):
    eps = h.label_smoothing or 1e-3
    z = h.beta * (x.chosen - x.rejected)
    return jax.nn.sigmoid(z) * (log_sigmoid(z) - math.log(1 - eps)) + jax.nn.sigmoid(-z) * (log_sigmoid(-z) - math.log(eps))


def _hinge(x, valid, h, nll):
    return jax.nn.relu(1 - h.beta * (x.chosen - x.rejected))


def _ipo(x, valid, h, nll):
    return (x.chosen - x.rejected - 1 / (2 * h.beta)) ** 2


def _bco_pair(x, valid, h, nll):
    c, r = h.beta * x.chosen, h.beta * x.rejected
    delta = bco_batch_reward(x, valid, h.beta) if h.bco_delta is None else h.bco_delta
    return -log_sigmoid(c - delta) - log_sigmoid(-(r - delta))


def _sppo_hard(x, valid, h, nll):
    return (x.chosen - 0.5 / h.beta) ** 2 + (x.rejected + 0.5 / h.beta) ** 2


def _nca_pair(x, valid, h, nll):
    c, r = h.beta * x.chosen, h.beta * x.rejected
    return -log_sigmoid(c) - 0.5 * log_sigmoid(-c) - 0.5 * log_sigmoid(-r)


def _sorted_delta(a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
    """sort(a) - sort(b) over the valid pairs: AOT's optimal transport of the batch. The i-th sorted difference
    is placed at the i-th valid pair (padding pairs, wherever they sit in the batch, get 0)."""
    delta = _sorted_valid_first(a, valid) - _sorted_valid_first(b, valid)  # valid ones first
    delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
    valid_first = jnp.argsort(~valid, stable=True)  # indices of the valid pairs, then of the padding
    return jnp.zeros_like(delta).at[valid_first].set(delta)


def _aot(x, valid, h, nll):
    delta = _sorted_delta(x.policy_chosen - x.policy_rejected, x.ref_chosen - x.ref_rejected, valid)
    return _smoothed_sigmoid(h.beta * delta, h)


def _aot_unpaired(x, valid, h, nll):
    return _smoothed_sigmoid(h.beta * _sorted_delta(x.chosen, x.rejected, valid), h)


def _apo_zero(x, valid, h, nll):
    return (1 - jax.nn.sigmoid(h.beta * x.chosen)) + jax.nn.sigmoid(h.beta * x.rejected)


def _apo_down(x, valid, h, nll):
    return jax.nn.sigmoid(h.beta * x.chosen) + (1 - jax.nn.sigmoid(h.beta * (x.chosen - x.rejected)))


def _discopop(x, valid, h, nll):
    z = h.beta * (x.chosen - x.rejected)
    modulation = jax.nn.sigmoid(z / h.discopop_tau)
    return -log_sigmoid(z) * (1 - modulation) + jnp.exp(-z) * modulation


def _sft(x, valid, h, nll):
    return jnp.broadcast_to(nll, x.policy_chosen.shape)


DPO_LOSSES: dict[str, Callable] = {
    "sigmoid": _sigmoid,
    "robust": _robust,
    "exo_pair": _exo_pair,
    "hinge": _hinge,
    "ipo": _ipo,
    "bco_pair": _bco_pair,
    "sppo_hard": _sppo_hard,
    "nca_pair": _nca_pair,
    "aot": _aot,
    "aot_unpaired": _aot_unpaired,
    "apo_zero": _apo_zero,
    "apo_down": _apo_down,
    "discopop": _discopop,
    "sft": _sft,
}
"""ms-swift's DPO `--loss_type` choices -> per-pair loss."""


class PreferenceOut(NamedTuple):
    """Per-pair losses and the rewards the metrics report, `[pairs]` each (0 on padding pairs)."""

    losses: jax.Array
    chosen_rewards: jax.Array
    rejected_rewards: jax.Array


def dpo_losses(
    policy: PairLogps,
    ref: PairLogps,
    valid: jax.Array,
    *,
    loss_types: Sequence[str] = ("sigmoid",),
    loss_weights: Sequence[float] | None = None,
    hyper: DPOHyper = DPOHyper(),
    nll: jax.Array | float = 0.0,
    rpo_alpha: float | None = None,
) -> PreferenceOut:
    """DPO-family losses (one or a weighted sum of several, ms-swift's MPO) and rewards per pair.

    `policy`/`ref` hold summed answer log-probs (pass zeros as `ref` for a reference-free run); `nll` is the
    chosen answers' mean token NLL of the micro-batch (used by `sft`, and added times `rpo_alpha` to every
    pair's loss when given: RPO). The loss weights default to 1 each.
    """
    unknown = [t for t in loss_types if t not in DPO_LOSSES]
    if unknown:
        raise ValueError(f"--loss_type {unknown}: expected DPO loss types from {sorted(DPO_LOSSES)}")
    weights = list(loss_weights) if loss_weights else [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ValueError(f"--loss_weights has {len(weights)} values for {len(loss_types)} --loss_type values")
    losses = chosen_rewards = rejected_rewards = jnp.zeros_like(policy.chosen)
    for loss_type, weight in zip(loss_types, weights):
        x = Logratios(policy.chosen, policy.rejected, ref.chosen, ref.rejected)
        if loss_type == "ipo":  # per-token averages (ms-swift, TRL >= 0.22)
            nc, nr = jnp.maximum(policy.chosen_tokens, 1), jnp.maximum(policy.rejected_tokens, 1)
            x = Logratios(x.policy_chosen / nc, x.policy_rejected / nr, x.ref_chosen / nc, x.ref_rejected / nr)
        losses = losses + weight * DPO_LOSSES[loss_type](x, valid, hyper, nll)
        c, r = x.chosen, x.rejected
        chosen_rewards = chosen_rewards + weight * hyper.beta * jax.lax.stop_gradient(c)
        rejected_rewards = rejected_rewards + weight * hyper.beta * jax.lax.stop_gradient(r)
    if rpo_alpha is not None:
        losses = losses + rpo_alpha * nll
    zero = lambda x: jnp.where(valid, x, 0.0)
    return PreferenceOut(zero(losses), zero(chosen_rewards), zero(rejected_rewards))


CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo")
"""TRL CPOTrainer's loss types; `simpo` is ms-swift's `--rlhf_type simpo`."""


def cpo_losses(policy: PairLogps, valid: jax.Array, *, loss_type: str = "sigmoid", beta: float = 0.1,
               label_smoothing: float = 0.0, simpo_gamma: float = 1.0) -> PreferenceOut:
    """CPO / SimPO per-pair losses (without the `cpo_alpha * nll` term), rewards = beta * logps.

    `ipo` and `simpo` use per-token average log-probs, as TRL does; SimPO subtracts `gamma / beta` from the
    log-ratio (the target reward margin)."""
    if loss_type not in CPO_LOSS_TYPES:
        raise ValueError(f"--loss_type {loss_type!r}: CPO/SimPO expects one of {CPO_LOSS_TYPES}")
    pc, pr = policy.chosen, policy.rejected
    if loss_type in ("ipo", "simpo"):
        pc, pr = pc / jnp.maximum(policy.chosen_tokens, 1), pr / jnp.maximum(policy.rejected_tokens, 1)
    logits = pc - pr
    h = DPOHyper(beta, label_smoothing)
    if loss_type == "simpo":
        losses = _smoothed_sigmoid(beta * (logits - simpo_gamma / beta), h)
    elif loss_type == "sigmoid":
        losses = _smoothed_sigmoid(beta * logits, h)
    elif loss_type == "hinge":
        losses = jax.nn.relu(1 - beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    zero = lambda x: jnp.where(valid, x, 0.0)
    sg = jax.lax.stop_gradient
    return PreferenceOut(zero(losses), zero(beta * sg(pc)), zero(beta * sg(pr)))


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (as TRL's ORPO)."""
    return jnp.where(x < -math.log(2), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(jnp.minimum(x, -1e-30))))


def orpo_losses(policy: PairLogps, valid: jax.Array, *, beta: float = 0.1) -> tuple[PreferenceOut, jax.Array]:
    """ORPO's odds-ratio term per pair: `-beta * log sigmoid(log_odds)` on per-token average log-probs
    (the full loss adds the chosen answers' NLL), rewards = beta * average logps; also the `log_odds` `[pairs]`."""
    pc = policy.chosen / jnp.maximum(policy.chosen_tokens, 1)
    pr = policy.rejected / jnp.maximum(policy.rejected_tokens, 1)
    log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr))
    losses = -beta * log_sigmoid(log_odds)
    zero = lambda x: jnp.where(valid, x, 0.0)
    sg = jax.lax.stop_gradient
    return PreferenceOut(zero(losses), zero(beta * sg(pc)), zero(beta * sg(pr))), zero(log_odds)


def kto_kl(policy_kl_logps: jax.Array, ref_kl_logps: jax.Array, valid: jax.Array) -> jax.Array:
    """KTO's KL estimate: the mean of `policy - reference` log-probs of the mismatched (prompt, other answer)
    sequences, clamped at 0 and never differentiated."""
    return jax.lax.stop_gradient(jnp.maximum(_masked_mean(policy_kl_logps - ref_kl_logps, valid), 0.0))


def kto_losses(logps: jax.Array, ref_logps: jax.Array, desirable: jax.Array, kl: jax.Array, valid: jax.Array, *,
               beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
               loss_type: str = "kto") -> tuple[jax.Array, jax.Array]:
    """KTO per-example weighted losses and rewards `beta * (logps - ref_logps)` `[examples]`.

    Desirable: `1 - sigmoid(beta * (logratio - kl))`; undesirable: `1 - sigmoid(beta * (kl - logratio))`
    (`apo_zero_unpaired`: no KL, `1 - sigmoid(beta * logratio)` and `sigmoid(beta * logratio)`)."""
    logratio = logps - ref_logps
    if loss_type == "kto":
        good, bad = 1 - jax.nn.sigmoid(beta * (logratio - kl)), 1 - jax.nn.sigmoid(beta * (kl - logratio))
    elif loss_type == "apo_zero_unpaired":
        good, bad = 1 - jax.nn.sigmoid(beta * logratio), jax.nn.sigmoid(beta * logratio)
    else:
        raise ValueError(f"--loss_type {loss_type!r}: KTO expects kto or apo_zero_unpaired")
    losses = jnp.where(desirable, desirable_weight * good, undesirable_weight * bad)
    rewards = beta * jax.lax.stop_gradient(logratio)
    return jnp.where(valid, losses, 0.0), jnp.where(valid, rewards, 0.0)


def reward_model_losses(chosen: jax.Array, rejected: jax.Array, valid: jax.Array, *, margin: jax.Array | None = None,
                        center_rewards_coefficient: float | None = None) -> jax.Array:
    """Bradley-Terry loss of a reward model per pair: `-log sigmoid(r_chosen - r_rejected - margin)`, plus
    `coef * (r_chosen + r_rejected)^2` with `center_rewards_coefficient` (its batch mean is ms-swift's term)."""
    diff = chosen - rejected - (0.0 if margin is None else margin)
    losses = -log_sigmoid(diff)
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * (chosen + rejected) ** 2
    return jnp.where(valid, losses, 0.0)
