"""GRPO's arguments under ms-swift 4.6's names and defaults (`GRPOArgumentsMixin`, `GRPOArguments`).

The estimator-tied defaults (`scale_rewards`, `kl_in_reward`) are resolved in `__post_init__` exactly as
ms-swift's `_init_grpo`. Only what swift_jax implements is here (no vLLM, multi-turn, teacher options).
"""

from __future__ import annotations

import dataclasses

from swift_jax.arguments import SamplingArgs

from .advantages import ADVANTAGE_ESTIMATORS, DEFAULT_KL_IN_REWARD, DEFAULT_SCALE_REWARDS, SCALE_REWARDS
from .loss import PolicyLossConfig


@dataclasses.dataclass
class GRPOArgs(SamplingArgs):
    """Online RL (GRPO, DAPO, GSPO, Dr. GRPO, RLOO, REINFORCE++) settings; the rollouts sample with the shared
    sampling group under GRPO's defaults (ms-swift's GRPOArgumentsMixin: temperature 0.9, top_k off)."""

    # rollout
    num_generations: int = 8  # G: completions per prompt
    max_completion_length: int = 512
    temperature: float = 0.9
    top_k: int = -1  # -1 = off
    # loss
    beta: float = 0.04  # KL to the reference; 0 = no reference kept
    epsilon: float = 0.2
    epsilon_high: float | None = None  # DAPO clip-higher
    delta: float | None = None  # two-sided clipping
    loss_type: str = "grpo"  # grpo | bnpo | dr_grpo | dapo
    importance_sampling_level: str = "token"  # token | sequence (GSPO) | sequence_token
    num_iterations: int = 1  # updates per rollout (old log-probs stored)
    # advantages
    advantage_estimator: str = "grpo"  # grpo | rloo | reinforce_plus_plus
    scale_rewards: str | None = None  # group | batch | none; None = the estimator's default
    kl_in_reward: bool | None = None  # None = the estimator's default
    # DAPO
    dynamic_sample: bool = False
    max_resample_times: int = 3
    overlong_filter: bool = False
    soft_max_length: int | None = None  # None = max_completion_length
    soft_cache_length: int | None = None
    # rewards
    reward_funcs: list[str] = dataclasses.field(default_factory=list)
    reward_weights: list[float] | None = None  # one per reward function, then one per reward model
    reward_model: list[str] = dataclasses.field(default_factory=list)  # value-head checkpoints (--rlhf_type rm)
    external_plugins: list[str] = dataclasses.field(default_factory=list)
    cosine_min_len_value_wrong: float = -0.5
    cosine_max_len_value_wrong: float = 0.0
    cosine_min_len_value_correct: float = 1.0
    cosine_max_len_value_correct: float = 0.5
    cosine_max_len: int | None = None  # None = max_completion_length
    repetition_n_grams: int = 3
    repetition_max_penalty: float = -1.0
    log_completions: bool = False
    # memory
    max_device_memory_gib: float | None = None  # a per-device budget (CPU devices report none)

    def __post_init__(self):
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"--advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}")
        if self.scale_rewards is None:
            self.scale_rewards = DEFAULT_SCALE_REWARDS[self.advantage_estimator]
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"--scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.kl_in_reward is None:
            self.kl_in_reward = DEFAULT_KL_IN_REWARD[self.advantage_estimator]
        if self.soft_max_length is None:
            self.soft_max_length = self.max_completion_length
        if self.cosine_max_len is None:
            self.cosine_max_len = self.max_completion_length
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0 for GRPO rollouts (sampling), got {self.temperature}")
        if self.num_generations < 2:
            raise ValueError(f"--num_generations must be at least 2 (advantages compare completions of one prompt), got {self.num_generations}")
        if isinstance(self.reward_model, str):
            self.reward_model = [self.reward_model]
        rewards = len(self.reward_funcs) + len(self.reward_model)
        if self.reward_weights is not None and len(self.reward_weights) != rewards:
            raise ValueError(
                f"--reward_weights has {len(self.reward_weights)} values for {rewards} rewards (--reward_funcs {self.reward_funcs}"
                f" then --reward_model {self.reward_model})"
            )
        self.loss_config()  # validates loss_type / importance_sampling_level

    def loss_config(self) -> PolicyLossConfig:
        """The static settings of the compiled policy loss."""
        return PolicyLossConfig(
            loss_type=self.loss_type,
            importance_sampling_level=self.importance_sampling_level,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            delta=self.delta,
            beta=self.beta,
            kl_in_reward=self.kl_in_reward,
            max_completion_length=self.max_completion_length,
        )

    def check_batch(self, completions_per_step: int) -> None:
        """ms-swift: the completions of one step (batch x accumulation x processes) split into whole groups."""
        if completions_per_step % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps x processes = {completions_per_step} completions "
                f"is not divisible by --num_generations {self.num_generations}; change one of them"
            )
