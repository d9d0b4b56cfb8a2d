"""Record ms-swift 4.6's GRPO numbers on fixed inputs: tests/golden/grpo_ms_swift.json (tests/test_grpo_parity.py).

Run with ms-swift's interpreter (CI never installs ms-swift):

    /opt/msswift/bin/python scripts/record_grpo_golden.py

It calls ms-swift's own code: `swift.rl_core.advantage.compute_advantages` / `compute_reward_metrics`, the
trainer's `GRPOTrainer._compute_loss_and_metrics` (on a stand-in `self` whose log-prob forward returns the
fixed log-probs), and the built-in reward functions of `swift.rewards.orm`. ms-swift's `accuracy` needs
math_verify, which ms-swift's venv may lack; its cases are recorded when it imports, e.g. with
`pip install --target /tmp/mvlib math-verify` and `PYTHONPATH=/tmp/mvlib`.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import torch
from swift.rewards.orm import CosineReward, Format, RepetitionPenalty, SoftOverlong
from swift.rl_core.advantage import compute_advantages, compute_reward_metrics
from swift.rlhf_trainers.grpo_trainer import GRPOTrainer

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "grpo_ms_swift.json")
K = 4


def inputs() -> dict:
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 3, (12, 2)).astype(np.float64)
    rewards[4:8] = 1.0  # one prompt whose completions all score the same
    rewards[9, 1] = np.nan  # a reward function returned None
    rows, length = 4, 6
    logps = -rng.uniform(0.1, 3.0, (rows, length))
    return {
        "rewards_per_func": rewards.tolist(),
        "reward_weights": [1.0, 0.5],
        "kl_values": rng.uniform(0, 2, 12).tolist(),
        "logps": logps.tolist(),
        "old_logps": (logps + rng.normal(0, 0.3, logps.shape)).tolist(),
        "ref_logps": (logps + rng.normal(0, 0.5, logps.shape)).tolist(),
        "mask": [[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 2 + [0] * 4],
        "advantages": [1.0, -0.7, -1.2, 0.4],
        "truncated": [False, False, True, False],
        "max_completion_length": 8,
    }


def advantage_cases(x: dict) -> list[dict]:
    cases = []
    rpf, w = torch.tensor(x["rewards_per_func"], dtype=torch.float32), torch.tensor(x["reward_weights"])
    for estimator in ("grpo", "rloo", "reinforce_plus_plus"):
        for scale in ("group", "batch", "none"):
            for kl_in_reward in (False, True):
                kw = dict(kl_in_reward=kl_in_reward, beta=0.1, kl_values=torch.tensor(x["kl_values"], dtype=torch.float32))
                adv, rewards = compute_advantages(rpf, w, K, advantage_estimator=estimator, scale_rewards=scale, **kw)
                m = compute_reward_metrics(rewards, rpf, ["a", "b"], K, scale)
                metrics = {"reward": m.reward_mean, "reward_std": m.reward_std, "frac_reward_zero_std": m.frac_reward_zero_std}
                metrics.update({f"rewards/{n}/mean": v for n, v in m.per_func_mean.items()})
                metrics.update({f"rewards/{n}/std": v for n, v in m.per_func_std.items()})
                cases.append(dict(estimator=estimator, scale=scale, kl_in_reward=kl_in_reward, advantages=adv.tolist(), rewards=rewards.tolist(), metrics=metrics))
    return cases


LOSS_VARIANTS = {
    "plain": dict(beta=0.0),
    "clip_higher": dict(beta=0.0, epsilon_high=0.28),
    "delta": dict(beta=0.0, delta=1.25),
    "kl": dict(beta=0.04),
    "kl_in_reward": dict(beta=0.04, kl_in_reward=True),
    "overlong_filter": dict(beta=0.04, overlong_filter=True),
}


def loss_case(x: dict, loss_type: str, level: str, variant: dict) -> dict:
    logps = torch.tensor(x["logps"], dtype=torch.float32)
    mask = torch.tensor(x["mask"], dtype=torch.bool)
    batch = types.SimpleNamespace(
        completion_mask=mask,
        truncated_mask=torch.tensor(x["truncated"]),
        old_per_token_logps=torch.tensor(x["old_logps"], dtype=torch.float32),
        ref_per_token_logps=torch.tensor(x["ref_logps"], dtype=torch.float32),
        rollout_per_token_logps=None,
        teacher_per_token_logps=None,
        advantages=torch.tensor(x["advantages"], dtype=torch.float32)[:, None].expand_as(logps).clone(),
        num_items_in_batch=mask.sum().float(),
    )
    eps_high = variant.get("epsilon_high")
    me = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        compute_entropy=False,
        overlong_filter=variant.get("overlong_filter", False),
        beta=variant["beta"],
        kl_in_reward=variant.get("kl_in_reward", False),
        rollout_importance_sampling_mode=None,
        log_rollout_offpolicy_metrics=False,
        disable_rollout_importance_sampling=True,
        importance_sampling_level=level,
        _has_teacher=False,
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=0.2 if eps_high is None else eps_high,
        args=types.SimpleNamespace(delta=variant.get("delta"), log_entropy=False, top_entropy_quantile=1.0),
        off_policy_sequence_mask_delta=None,
        max_completion_length=x["max_completion_length"],
        num_generations=K,
        accelerator=types.SimpleNamespace(gather_for_metrics=lambda t: t, num_processes=1),
        sdar_loss_coef=0.0,
        chord_sft_iterator=None,
        _get_per_token_logps_and_entropies=lambda model, inputs, batch, compute_entropy=False: (logps, None),
        _undo_gradient_accumulation_scaling=lambda loss: loss,
    )
    loss, data = GRPOTrainer._compute_loss_and_metrics(me, None, {}, batch)
    metrics = {}
    if "kl" in data:
        metrics["kl"] = data["kl"]
    clip = data["clipping"]
    metrics.update({"clip_ratio/low_mean": clip["low_clip_mean"], "clip_ratio/high_mean": clip["high_clip_mean"], "clip_ratio/region_mean": clip["region_clip_mean"]})
    return dict(loss_type=loss_type, level=level, variant=variant, loss=float(loss), metrics=metrics)


def reward_cases() -> dict:
    args = types.SimpleNamespace(
        cosine_min_len_value_wrong=-0.5, cosine_max_len_value_wrong=0.0, cosine_min_len_value_correct=1.0,
        cosine_max_len_value_correct=0.5, cosine_max_len=20, repetition_n_grams=3, repetition_max_penalty=-1.0,
        soft_max_length=20, soft_cache_length=8,
    )
    completions = ["<think>x</think>\n<answer>4</answer>", "the the the the cat", "4", "<answer>4</answer>", "a b c d e f a b c"]
    ids = [[1] * n for n in (3, 13, 17, 20, 0)]

    class FixedAccuracy:  # cosine's accuracy input, fixed (ms-swift's needs math_verify)
        def __call__(self, completions, solution, **kwargs):
            return [1.0, 0.0, 1.0, 0.0, 1.0]

    cosine = CosineReward.__new__(CosineReward)
    CosineReward.__init__(cosine, args, accuracy_orm=FixedAccuracy())
    return {
        "completions": completions,
        "response_token_ids": ids,
        "accuracy": [1.0, 0.0, 1.0, 0.0, 1.0],
        "format": Format()(completions),
        "repetition": RepetitionPenalty(args)(completions),
        "soft_overlong": SoftOverlong(args)(completions, response_token_ids=ids),
        "cosine": cosine(completions, solution=["4"] * 5, response_token_ids=ids),
        "args": vars(args),
    }


ACCURACY_CASES = [  # (completion, solution)
    ("so the result is \\boxed{\\frac{1}{2}}", "0.5"),
    ("<answer>0.5</answer>", "$\\frac{1}{2}$"),
    ("<think>2+2</think><answer>4</answer>", "4"),
    ("The answer is \\boxed{1+x}", "$x+1$"),
    ("<answer>x+1</answer>", "<answer>$1+x$</answer>"),
    ("it is $0.5$", "$\\frac{1}{2}$"),
    ("\\boxed{3}", "$4$"),
    ("the answer is $\\sqrt{2}/2$", "$\\frac{\\sqrt{2}}{2}$"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{5}", "no number here"),
    ("\\boxed{\\{1,2\\}}", "$\\{2, 1\\}$"),
    ("", "7"),
]


def accuracy_cases() -> dict | None:
    """ms-swift's MathAccuracy on ACCURACY_CASES, or None without math_verify."""
    try:
        from swift.rewards.orm import MathAccuracy

        accuracy = MathAccuracy()
    except (AssertionError, ImportError):
        return None
    completions, solutions = zip(*ACCURACY_CASES)
    return {"completions": list(completions), "solution": list(solutions), "rewards": accuracy(list(completions), list(solutions))}


def main() -> None:
    x = inputs()
    golden = {
        "inputs": x,
        "advantages": advantage_cases(x),
        "losses": [
            loss_case(x, loss_type, level, variant) | {"name": name}
            for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo")
            for level in ("token", "sequence", "sequence_token")
            for name, variant in LOSS_VARIANTS.items()
        ],
        "rewards": reward_cases(),
    }
    math_accuracy = accuracy_cases()
    if math_accuracy is None and os.path.exists(OUT):  # keep the recorded cases
        with open(OUT) as f:
            math_accuracy = json.load(f).get("math_accuracy")
    if math_accuracy is not None:
        golden["math_accuracy"] = math_accuracy
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(golden, f, indent=1)
    print(f"wrote {OUT}: {len(golden['advantages'])} advantage cases, {len(golden['losses'])} loss cases")


if __name__ == "__main__":
    main()
