"""GRPO numbers against ms-swift 4.6's own code on fixed inputs (golden file from scripts/record_grpo_golden.py):
advantages and reward metrics for every estimator x scale_rewards x kl_in_reward, the policy loss and its
metrics for every loss_type x importance_sampling_level x {plain, epsilon_high, delta, KL, KL in reward,
overlong filter}, and the built-in rewards."""

import json
import os
import types

import jax.numpy as jnp
import numpy as np
import pytest

from swift_jax.rewards.orm import CosineReward, Format, RepetitionPenalty, SoftOverlong
from swift_jax.rlhf.grpo.advantages import compute_advantages, reward_metrics
from swift_jax.rlhf.grpo.loss import PolicyLossConfig, policy_loss

with open(os.path.join(os.path.dirname(__file__), "golden", "grpo_ms_swift.json")) as f:
    GOLDEN = json.load(f)
X = GOLDEN["inputs"]


@pytest.mark.parametrize("case", GOLDEN["advantages"], ids=lambda c: f"{c['estimator']}-{c['scale']}-kl{int(c['kl_in_reward'])}")
def test_advantages_match_ms_swift(case):
    rpf = np.asarray(X["rewards_per_func"], np.float32)
    adv, rewards = compute_advantages(
        rpf, np.asarray(X["reward_weights"]), 4, advantage_estimator=case["estimator"], scale_rewards=case["scale"],
        kl_in_reward=case["kl_in_reward"], beta=0.1, kl_values=np.asarray(X["kl_values"]),
    )
    np.testing.assert_allclose(adv, case["advantages"], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(rewards, case["rewards"], atol=1e-6)
    logs = reward_metrics(np.asarray(rewards), rpf, ["a", "b"], 4, case["scale"]).as_logs()
    assert logs == pytest.approx(case["metrics"], abs=1e-5)


@pytest.mark.parametrize("case", GOLDEN["losses"], ids=lambda c: f"{c['loss_type']}-{c['level']}-{c['name']}")
def test_policy_loss_matches_ms_swift(case):
    v = case["variant"]
    cfg = PolicyLossConfig(
        loss_type=case["loss_type"], importance_sampling_level=case["level"], epsilon_high=v.get("epsilon_high"),
        delta=v.get("delta"), beta=v["beta"], kl_in_reward=v.get("kl_in_reward", False), max_completion_length=X["max_completion_length"],
    )
    arr = lambda k: jnp.asarray(X[k], jnp.float32)
    loss_sum, count, metrics = policy_loss(
        arr("logps"), arr("old_logps"), arr("advantages"), jnp.asarray(X["mask"]), cfg, ref_logps=arr("ref_logps"),
        truncated=jnp.asarray(X["truncated"]), overlong_filter=v.get("overlong_filter", False),
    )
    assert float(loss_sum / count) == pytest.approx(case["loss"], abs=1e-5)
    assert {k: float(s / c) for k, (s, c) in metrics.items()} == pytest.approx(case["metrics"], abs=1e-5)


def test_builtin_rewards_match_ms_swift():
    r = GOLDEN["rewards"]
    args = types.SimpleNamespace(**r["args"], max_completion_length=20)
    completions, ids = r["completions"], r["response_token_ids"]

    class FixedAccuracy:
        def __call__(self, completions, solution, **kwargs):
            return r["accuracy"]

    assert Format(args)(completions) == r["format"]
    assert RepetitionPenalty(args)(completions) == pytest.approx(r["repetition"])
    assert SoftOverlong(args)(completions, response_token_ids=ids) == pytest.approx(r["soft_overlong"])
    cosine = CosineReward(args, accuracy_orm=FixedAccuracy())
    assert cosine(completions, solution=["4"] * 5, response_token_ids=ids) == pytest.approx(r["cosine"])
