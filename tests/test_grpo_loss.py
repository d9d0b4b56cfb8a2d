"""GRPO-family loss, advantages and dynamic sampling against hand-computed values of ms-swift 4.6's formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swift_jax.rlhf.grpo.advantages import compute_advantages, reward_metrics
from swift_jax.rlhf.grpo.dynamic_sampling import dynamic_sample
from swift_jax.rlhf.grpo.loss import PolicyLossConfig, k3_kl, policy_loss

# Two completions of 3 tokens; the second has 2 real tokens. Ratios chosen so that clipping shows.
RATIOS = np.array([[1.5, 0.5, 1.0], [1.1, 0.7, 2.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0]])
ADV = np.array([1.0, -2.0])
LOGPS = np.array([[-1.0, -2.0, -0.5], [-0.3, -0.2, -1.0]])
OLD = LOGPS - np.log(RATIOS)


def _loss(cfg, logps=LOGPS, **kw):
    loss_sum, count, metrics = policy_loss(jnp.asarray(logps), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(MASK), cfg, **kw)
    return float(loss_sum / count), {k: float(s / c) for k, (s, c) in metrics.items()}


# Per-token losses (token level, epsilon 0.2): row 0 (A=1): -min(1.5, 1.2), -min(0.5, 0.8), -1 = -1.2, -0.5, -1.0;
# row 1 (A=-2): -min(-2.2, -2.2), -min(-1.4, -1.6) = 2.2, 1.6 (the third token is padding).
@pytest.mark.parametrize(
    "loss_type,expected",
    [
        ("grpo", ((-1.2 - 0.5 - 1.0) / 3 + (2.2 + 1.6) / 2) / 2),  # mean over rows of row means = 0.5
        ("bnpo", (-2.7 + 3.8) / 5),  # token mean
        ("dr_grpo", (-2.7 + 3.8) / (2 * 4)),  # rows x max_completion_length
        ("dapo", (-2.7 + 3.8) / 5),  # token sum / completion tokens of the whole step
    ],
)
def test_loss_types_token_level(loss_type, expected):
    loss, metrics = _loss(PolicyLossConfig(loss_type=loss_type, beta=0.0, max_completion_length=4))
    assert loss == pytest.approx(expected, abs=1e-6)
    # low: ratio < 0.8 with A < 0 (row 1 token 1); high: ratio > 1.2 with A > 0 (row 0 token 0); of 5 tokens
    assert metrics == pytest.approx({"clip_ratio/low_mean": 0.2, "clip_ratio/high_mean": 0.2, "clip_ratio/region_mean": 0.4})


def test_epsilon_high_and_delta():
    # clip-higher: row 0 token 0 is clipped at 1.28 instead of 1.2
    loss, _ = _loss(PolicyLossConfig(loss_type="bnpo", beta=0.0, epsilon_high=0.28))
    assert loss == pytest.approx((-1.28 - 0.5 - 1.0 + 3.8) / 5, abs=1e-6)
    # delta caps the unclipped ratio of a negative advantage: -min(-3, -1.2) = 3 becomes -min(-2, -1.2) = 2
    args = (jnp.log(jnp.array([[3.0]])), jnp.zeros((1, 1)), jnp.array([-1.0]), jnp.ones((1, 1)))
    plain = policy_loss(*args, PolicyLossConfig(beta=0.0))[0]
    capped = policy_loss(*args, PolicyLossConfig(beta=0.0, delta=2.0))[0]
    assert (float(plain), float(capped)) == pytest.approx((3.0, 2.0))


def test_sequence_level_is_gspo():
    r0, r1 = 0.75 ** (1 / 3), 0.77**0.5  # geometric-mean ratios over each row's real tokens
    expected = (-r0 + 2 * r1) / 2  # both inside [0.8, 1.2]: no clipping; grpo reduction
    cfg = dict(loss_type="grpo", beta=0.0)
    for level in ("sequence", "sequence_token"):
        loss, metrics = _loss(PolicyLossConfig(importance_sampling_level=level, **cfg))
        assert loss == pytest.approx(expected, abs=1e-6)
        assert metrics["clip_ratio/region_mean"] == 0.0

    def grad(level):
        f = lambda lp: policy_loss(lp, jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(MASK), PolicyLossConfig(importance_sampling_level=level, **cfg))[0]
        return np.asarray(jax.grad(f)(jnp.asarray(LOGPS)))

    # d(loss_sum)/dlogp_t = -A r / |y| for every real token; GSPO-token (stop-gradient on the sequence mean,
    # the token's own logp live) has the same gradient when the advantage is one per sequence (the paper's claim)
    expected_grad = np.array([[-r0 / 3] * 3, [2 * r1 / 2] * 2 + [0.0]])
    np.testing.assert_allclose(grad("sequence"), expected_grad, rtol=1e-5)
    np.testing.assert_allclose(grad("sequence_token"), expected_grad, rtol=1e-5)
    token = grad("token")  # token level: each token's own ratio, no 1/|y| coupling
    np.testing.assert_allclose(token[0], [0.0, -0.5 / 3, -1.0 / 3], rtol=1e-5)  # token 0 clipped: no gradient


def test_k3_kl_in_loss_and_metric():
    d = 0.5
    k3 = math.exp(d) - d - 1
    assert float(k3_kl(jnp.array(0.0), jnp.array(d))) == pytest.approx(k3)
    assert float(k3_kl(jnp.array(0.0), jnp.array(100.0))) == 10.0  # ms-swift's clamps
    ref = LOGPS + d
    loss, metrics = _loss(PolicyLossConfig(loss_type="bnpo", beta=0.04), ref_logps=jnp.asarray(ref))
    assert loss == pytest.approx((-2.7 + 3.8) / 5 + 0.04 * k3, abs=1e-6)
    assert metrics["kl"] == pytest.approx(k3, abs=1e-6)
    # kl_in_reward: no KL term in the loss, no kl metric from the loss
    loss, metrics = _loss(PolicyLossConfig(loss_type="bnpo", beta=0.04, kl_in_reward=True))
    assert loss == pytest.approx(1.1 / 5) and "kl" not in metrics


def test_overlong_filter_drops_truncated_completions():
    truncated = jnp.array([False, True])
    kw = dict(truncated=truncated, overlong_filter=True)
    grpo, metrics = _loss(PolicyLossConfig(loss_type="grpo", beta=0.0), **kw)
    assert grpo == pytest.approx(-0.9 / 2)  # the truncated row still counts as a row (loss 0), as in ms-swift
    assert metrics["clip_ratio/low_mean"] == 0.0 and metrics["clip_ratio/high_mean"] == pytest.approx(1 / 3)
    assert _loss(PolicyLossConfig(loss_type="bnpo", beta=0.0), **kw)[0] == pytest.approx(-2.7 / 3)
    # dapo divides by the completion tokens counted before the filter (ms-swift's num_items_in_batch)
    assert _loss(PolicyLossConfig(loss_type="dapo", beta=0.0), **kw)[0] == pytest.approx(-2.7 / 5)
    assert _loss(PolicyLossConfig(loss_type="grpo", beta=0.0), truncated=truncated)[0] == pytest.approx(0.5)


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="loss_type"):
        PolicyLossConfig(loss_type="ppo")
    with pytest.raises(ValueError, match="importance_sampling_level"):
        PolicyLossConfig(importance_sampling_level="seq")


# Weighted rewards [1, 0, 2, 2]: two prompts x K=2 (weights 1 and 0.5 over two functions).
REWARDS_PER_FUNC = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 2.0], [2.0, 0.0]])
WEIGHTS = np.array([1.0, 0.5])
BATCH_STD = math.sqrt(((1 - 1.25) ** 2 + 1.25**2 + 2 * 0.75**2) / 3)  # unbiased, as torch.std
ADV_STD = math.sqrt(0.5 / 3)


@pytest.mark.parametrize(
    "estimator,scale,expected",
    [
        ("grpo", "group", [0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4), 0, 0]),
        ("grpo", "batch", [0.5 / (BATCH_STD + 1e-4), -0.5 / (BATCH_STD + 1e-4), 0, 0]),
        ("grpo", "none", [0.5, -0.5, 0, 0]),
        ("rloo", "none", [1.0, -1.0, 0, 0]),  # (r - mean) K / (K - 1)
        ("reinforce_plus_plus", "batch", [0.5 / (ADV_STD + 1e-4), -0.5 / (ADV_STD + 1e-4), 0, 0]),
    ],
)
def test_advantages(estimator, scale, expected):
    adv, rewards = compute_advantages(REWARDS_PER_FUNC, WEIGHTS, 2, advantage_estimator=estimator, scale_rewards=scale)
    np.testing.assert_allclose(rewards, [1, 0, 2, 2])
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-7)


def test_kl_in_reward_and_none_rewards():
    adv, rewards = compute_advantages(
        REWARDS_PER_FUNC, WEIGHTS, 2, scale_rewards="none", kl_in_reward=True, beta=0.1, kl_values=np.array([1.0, 0, 0, 0])
    )
    np.testing.assert_allclose(rewards, [0.9, 0, 2, 2], rtol=1e-6)
    np.testing.assert_allclose(adv, [0.45, -0.45, 0, 0], rtol=1e-5)
    with_none = REWARDS_PER_FUNC.copy()
    with_none[1, 1] = np.nan  # a reward function returned None: counts 0 in the total, left out of its mean
    m = reward_metrics(np.array([1, 0, 2, 2.0]), with_none, ["a", "b"], 2, "group")
    assert m.as_logs() == pytest.approx(
        {
            "reward": 1.25,
            "reward_std": (math.sqrt(0.5) + 0) / 2,
            "frac_reward_zero_std": 0.5,
            "rewards/a/mean": 1.0,
            "rewards/a/std": math.sqrt(2 / 3),
            "rewards/b/mean": 2 / 3,
            "rewards/b/std": math.sqrt(4 / 3),
        }
    )


def _round(rewards, tag):
    rewards = np.asarray(rewards, float)
    return {"rewards": rewards, "tag": np.full(rewards.shape, tag)}


def test_dynamic_sampling_keeps_groups_with_signal_and_resamples():
    rounds = iter([_round([1, 0, 0, 0], 1), _round([1, 1, 0, 1], 2)])
    first = _round([1, 1, 0, 1], 0)  # group 0 all equal (dropped), group 1 kept
    rows, resamples = dynamic_sample(first, lambda: next(rounds), num_generations=2, generation_batch_size=4, max_resample_times=3)
    assert resamples == 1
    np.testing.assert_array_equal(rows["rewards"], [0, 1, 1, 0])  # round 0's group 1, then round 1's group 0
    np.testing.assert_array_equal(rows["tag"], [0, 0, 1, 1])


def test_dynamic_sampling_gives_up_and_keeps_the_first_round():
    flat = lambda: _round([1, 1, 0, 0], 9)
    first = _round([1, 1, 0, 1], 0)
    rows, resamples = dynamic_sample(first, flat, num_generations=2, generation_batch_size=4, max_resample_times=3)
    assert resamples == 2  # three rounds inspected; ms-swift's never-inspected fourth rollout is skipped
    np.testing.assert_array_equal(rows["tag"], [0, 0, 0, 0])
    np.testing.assert_array_equal(rows["rewards"], [1, 1, 0, 1])
