"""Advantages for online RL (GRPO, RLOO, REINFORCE++) and the reward statistics ms-swift logs.

Pure functions of the whole generation batch's rewards, computed on the host once per rollout (as
ms-swift's `swift/rl_core/advantage.py` does after gathering). Rows are grouped by prompt:
`num_generations` consecutive rows share one prompt. Standard deviations are torch's default, the
unbiased one (`ddof=1`), and the scale adds 1e-4, exactly as ms-swift 4.6.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus")
SCALE_REWARDS = ("group", "batch", "none")

# ms-swift ties these defaults to the estimator (arguments/rlhf_args.py `_init_grpo`).
DEFAULT_SCALE_REWARDS = {"grpo": "group", "rloo": "none", "reinforce_plus_plus": "batch"}
DEFAULT_KL_IN_REWARD = {"grpo": False, "rloo": True, "reinforce_plus_plus": True}


def _std(x: jnp.ndarray, axis=None, keepdims=False) -> jnp.ndarray:
    """Unbiased standard deviation (torch's `Tensor.std`)."""
    return jnp.std(x, axis=axis, ddof=1, keepdims=keepdims)


def weighted_rewards(rewards_per_func: jnp.ndarray, reward_weights: jnp.ndarray) -> jnp.ndarray:
    """`[N]` total reward: the weighted sum over reward functions, a None (NaN) reward counting 0 (nansum)."""
    return jnp.nansum(rewards_per_func * reward_weights[None, :], axis=1)


def compute_advantages(
    rewards_per_func: jnp.ndarray,
    reward_weights: jnp.ndarray,
    num_generations: int,
    *,
    advantage_estimator: str = "grpo",
    scale_rewards: str = "group",
    kl_in_reward: bool = False,
    beta: float = 0.0,
    kl_values: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`(advantages [N], rewards [N])` from per-function rewards `[N, n_funcs]`.

    - grpo: `r - mean_group(r)`; rloo: `(r - mean_group(r)) * K / (K - 1)` (leave-one-out baseline);
      reinforce_plus_plus: `r - mean_group(r)`, then scaled by the std of the *advantages*.
    - scale_rewards: divide by `std + 1e-4`, the std taken over the group, the whole batch, or not at all.
    - kl_in_reward: `r -= beta * kl_values` (per-sequence KL to the reference) before anything else.
    """
    if advantage_estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {advantage_estimator!r}")
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    rewards = weighted_rewards(jnp.asarray(rewards_per_func, jnp.float32), jnp.asarray(reward_weights, jnp.float32))
    if kl_in_reward and beta != 0.0 and kl_values is not None:
        rewards = rewards - beta * jnp.asarray(kl_values, jnp.float32)
    k = num_generations
    if rewards.shape[0] % k:
        raise ValueError(f"{rewards.shape[0]} completions do not split into groups of num_generations={k}")
    grouped = rewards.reshape(-1, k)  # [prompts, k]
    group_mean = jnp.repeat(grouped.mean(axis=1), k)
    advantages = rewards - group_mean
    if advantage_estimator == "rloo" and k > 1:
        advantages = advantages * k / (k - 1)

    # reinforce_plus_plus normalises the advantages; grpo / rloo normalise by the rewards' spread.
    spread = advantages if advantage_estimator == "reinforce_plus_plus" else rewards
    if scale_rewards == "none":
        return advantages, rewards
    if scale_rewards == "batch":
        std = _std(spread) if spread.size > 1 else jnp.zeros(())
    else:
        std = jnp.repeat(_std(spread.reshape(-1, k), axis=1), k) if k > 1 else jnp.zeros_like(spread)
    return advantages / (std + 1e-4), rewards


@dataclasses.dataclass
class RewardMetrics:
    """The reward statistics ms-swift logs per generation batch (`reward`, `reward_std`, ...)."""

    reward: float
    reward_std: float
    frac_reward_zero_std: float
    per_func_mean: dict[str, float]
    per_func_std: dict[str, float]

    def as_logs(self) -> dict[str, float]:
        """Under ms-swift's keys: `reward`, `reward_std`, `frac_reward_zero_std`, `rewards/{name}/mean|std`."""
        logs = {"reward": self.reward, "reward_std": self.reward_std, "frac_reward_zero_std": self.frac_reward_zero_std}
        for name in self.per_func_mean:
            logs[f"rewards/{name}/mean"] = self.per_func_mean[name]
            logs[f"rewards/{name}/std"] = self.per_func_std[name]
        return logs


def group_std(rewards: np.ndarray, num_generations: int) -> np.ndarray:
    """`[N]` the std of each row's group (0 when a group has one member): what dynamic sampling tests."""
    rewards = np.asarray(rewards, np.float64)
    if num_generations <= 1:
        return np.zeros_like(rewards)
    return np.repeat(rewards.reshape(-1, num_generations).std(axis=1, ddof=1), num_generations)


def reward_metrics(
    rewards: np.ndarray, rewards_per_func: np.ndarray, names: list[str], num_generations: int, scale_rewards: str
) -> RewardMetrics:
    """ms-swift's `compute_reward_metrics`: means over the batch, `reward_std` the mean group std (batch std
    with `scale_rewards=batch`), per-function statistics over the non-None rewards (a function that
    returned None for every row is left out)."""
    rewards = np.asarray(rewards, np.float64)
    grouped = rewards.reshape(-1, num_generations)
    group_stds = grouped.std(axis=1, ddof=1) if num_generations > 1 else np.zeros(grouped.shape[0])
    if scale_rewards == "batch":
        reward_std = float(rewards.std(ddof=1)) if rewards.size > 1 else 0.0
    else:
        reward_std = float(group_stds.mean())
    zero_std = np.isclose(group_stds, 0.0, rtol=1e-5, atol=1e-8) if num_generations > 1 else np.ones(grouped.shape[0], bool)
    means, stds = {}, {}
    for i, name in enumerate(names):
        column = np.asarray(rewards_per_func, np.float64)[:, i]
        valid = column[~np.isnan(column)]
        if valid.size == 0:
            continue
        means[name] = float(valid.mean())
        stds[name] = float(valid.std(ddof=1)) if valid.size > 1 else 0.0
    return RewardMetrics(float(grouped.mean(axis=1).mean()), reward_std, float(zero_std.mean()), means, stds)
