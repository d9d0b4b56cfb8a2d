"""Preference losses (swift_jax.rlhf.preference.losses) against ms-swift 4.6's own loss code on fixed log-probs.

The golden file is written by `scripts/record_ms_swift_rlhf.py losses`, which calls ms-swift's
`DPOTrainer.get_batch_loss_metrics` (every loss type, MPO weights, rpo_alpha), TRL's CPO/ORPO losses as
ms-swift wraps them, `KTOTrainer.kto_loss` and the reward-model loss. A few values are also checked by hand.
"""

from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from swift_jax.rlhf.preference import losses as L

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "rlhf_losses.json")))
INPUTS = GOLDEN["inputs"]
VALID = jnp.ones(4, bool)


def pairs(chosen, rejected, pad: int = 0) -> L.PairLogps:
    """The golden inputs as PairLogps, with `pad` padding pairs of junk values appended."""
    junk = [123.0] * pad
    return L.PairLogps(
        jnp.asarray(chosen + junk), jnp.asarray(rejected + junk),
        jnp.asarray(INPUTS["chosen_tokens"] + [0] * pad, jnp.float32),
        jnp.asarray(INPUTS["rejected_tokens"] + [0] * pad, jnp.float32),
    )


POLICY = pairs(INPUTS["policy_chosen"], INPUTS["policy_rejected"])
REF = pairs(INPUTS["ref_chosen"], INPUTS["ref_rejected"])


def metrics_of(out: L.PreferenceOut, valid=VALID) -> dict[str, float]:
    n = valid.sum()
    c, r = out.chosen_rewards, out.rejected_rewards
    return {
        "loss": float(out.losses.sum() / n),
        "rewards/chosen": float(c.sum() / n),
        "rewards/rejected": float(r.sum() / n),
        "rewards/accuracies": float(jnp.where(valid, c > r, False).sum() / n),
        "rewards/margins": float((c - r).sum() / n),
    }


@pytest.mark.parametrize("case", GOLDEN["dpo"], ids=lambda c: "+".join(c["loss_type"]) + f"-b{c['beta']}-ls{c['label_smoothing']}-rpo{c['rpo_alpha']}")
def test_dpo_loss_types_equal_ms_swift(case):
    hyper = L.DPOHyper(case["beta"], case["label_smoothing"], case["discopop_tau"])
    out = L.dpo_losses(POLICY, REF, VALID, loss_types=case["loss_type"], loss_weights=case["loss_weights"],
                       hyper=hyper, nll=INPUTS["nll"], rpo_alpha=case["rpo_alpha"])
    got = metrics_of(out)
    for key, value in got.items():
        assert value == pytest.approx(case[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("loss_type", ["sigmoid", "aot", "aot_unpaired", "bco_pair", "ipo"])
@pytest.mark.parametrize("padding_first", [False, True])
def test_padding_pairs_change_nothing(loss_type, padding_first):
    """Junk in padding pairs (valid = False), at the end or in front, must not move the loss: batch-level
    sorts and means skip them (packed batches interleave real and padding pairs)."""
    ref = L.dpo_losses(POLICY, REF, VALID, loss_types=[loss_type])
    order = np.r_[4:6, 0:4] if padding_first else np.arange(6)
    take = lambda p: L.PairLogps(*(x[order] for x in p))
    valid = jnp.asarray([True] * 4 + [False] * 2)[order]
    padded = L.dpo_losses(take(pairs(INPUTS["policy_chosen"], INPUTS["policy_rejected"], 2)),
                          take(pairs(INPUTS["ref_chosen"], INPUTS["ref_rejected"], 2)), valid, loss_types=[loss_type])
    np.testing.assert_allclose(float(padded.losses.sum()), float(ref.losses.sum()), rtol=1e-6)
    assert float(jnp.abs(jnp.where(valid, 0.0, padded.losses)).sum()) == 0.0
    if loss_type not in ("aot", "aot_unpaired"):  # the sorted ones pair up differently, only the sum is kept
        np.testing.assert_allclose(padded.losses[valid], ref.losses, rtol=1e-6)


def test_sigmoid_by_hand():
    """-log sigmoid(beta * ((pc - rc) - (pr - rr))) on the first pair: logits = 0.5 - (-0.5) = 1.0."""
    out = L.dpo_losses(POLICY, REF, VALID, hyper=L.DPOHyper(beta=0.1))
    assert float(out.losses[0]) == pytest.approx(math.log1p(math.exp(-0.1)), rel=1e-6)
    assert float(out.chosen_rewards[0]) == pytest.approx(0.05, rel=1e-6)
    assert float(out.rejected_rewards[0]) == pytest.approx(-0.05, rel=1e-6)


def test_unknown_loss_type_and_weight_count_are_errors():
    with pytest.raises(ValueError, match="loss_type"):
        L.dpo_losses(POLICY, REF, VALID, loss_types=["sigmoidd"])
    with pytest.raises(ValueError, match="loss_weights"):
        L.dpo_losses(POLICY, REF, VALID, loss_types=["sigmoid", "sft"], loss_weights=[1.0])


@pytest.mark.parametrize("case", [c for c in GOLDEN["cpo_orpo"] if c["rlhf_type"] == "cpo"],
                         ids=lambda c: f"{c['loss_type']}-b{c['beta']}-ls{c['label_smoothing']}-g{c['simpo_gamma']}")
def test_cpo_simpo_equal_trl(case):
    out = L.cpo_losses(POLICY, VALID, loss_type=case["loss_type"], beta=case["beta"],
                       label_smoothing=case["label_smoothing"], simpo_gamma=case["simpo_gamma"])
    np.testing.assert_allclose(out.losses, case["losses"], rtol=1e-5)
    np.testing.assert_allclose(out.chosen_rewards, case["chosen_rewards"], rtol=1e-5)
    np.testing.assert_allclose(out.rejected_rewards, case["rejected_rewards"], rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in GOLDEN["cpo_orpo"] if c["rlhf_type"] == "orpo"], ids=lambda c: f"b{c['beta']}")
def test_orpo_equals_trl(case):
    out, log_odds = L.orpo_losses(POLICY, VALID, beta=case["beta"])
    assert float(out.losses.mean()) == pytest.approx(case["loss_without_nll"], rel=1e-5)
    assert float(log_odds.mean()) == pytest.approx(case["log_odds_chosen"], rel=1e-5)
    np.testing.assert_allclose(out.chosen_rewards, case["chosen_rewards"], rtol=1e-5)


@pytest.mark.parametrize("case", GOLDEN["kto"], ids=lambda c: f"{c['loss_type']}-b{c['beta']}-w{c['desirable_weight']}")
def test_kto_equals_ms_swift(case):
    labels = jnp.asarray(case["labels"])
    kl = L.kto_kl(jnp.asarray(case["policy_kl"]), jnp.asarray(case["ref_kl"]), VALID)
    if case["loss_type"] != "kto":
        kl = jnp.zeros(())
    losses, rewards = L.kto_losses(POLICY.chosen, REF.chosen, labels, kl, VALID, beta=case["beta"],
                                   desirable_weight=case["desirable_weight"],
                                   undesirable_weight=case["undesirable_weight"], loss_type=case["loss_type"])
    assert float(kl) == pytest.approx(case["kl"], abs=1e-6)
    assert float(losses.mean()) == pytest.approx(case["loss"], rel=1e-5)
    np.testing.assert_allclose(rewards[labels], case["chosen_rewards"], rtol=1e-5)
    np.testing.assert_allclose(rewards[~labels], case["rejected_rewards"], rtol=1e-5)


@pytest.mark.parametrize("case", GOLDEN["rm"], ids=lambda c: f"margin{c['margin'] is not None}-c{c['center_rewards_coefficient']}")
def test_reward_model_loss_equals_ms_swift(case):
    margin = None if case["margin"] is None else jnp.asarray(case["margin"])
    losses = L.reward_model_losses(jnp.asarray(case["chosen"]), jnp.asarray(case["rejected"]), VALID, margin=margin,
                                   center_rewards_coefficient=case["center_rewards_coefficient"])
    assert float(losses.mean()) == pytest.approx(case["loss"], rel=1e-6)


def test_running_mean_is_trls_running_moments_mean():
    """TRL's RunningMoments (count starting at ~0, one update per micro-batch) = the mean of the updates so far;
    a micro-batch without pairs does not count."""
    state = L.RunningMean.zeros()
    values = [0.25, -1.5, 0.75, 3.0]
    for i, v in enumerate(values):
        state = state.update(jnp.float32(v), jnp.bool_(True))
        state = state.update(jnp.float32(100.0), jnp.bool_(False))
        assert float(state.mean) == pytest.approx(np.mean(values[: i + 1]), abs=1e-6)
    assert float(state.count) == len(values)
