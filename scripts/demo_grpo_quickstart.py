"""GRPO on the CPU: an under-trained SFT model of the quickstart task gets better with an exact-match reward.

    python scripts/demo_grpo_quickstart.py [--sft_steps 120] [--grpo_steps 60] [--output_dir output/grpo_demo]

1. SFT: `configs/quickstart.yaml` (a ~0.9M-parameter model from scratch, reverse / upper-case a spelled-out word)
   stopped after `--sft_steps` instead of 400, then greedy exact match on 100 held-out prompts.
2. GRPO from that checkpoint (full fine-tuning, `num_generations` 8, 2 prompts per step, beta 0.04): the reward
   is 1 when the completion equals the row's `solution` (its reference answer) exactly, else 0. Then the same
   held-out exact match. Prints both figures and the reward curve (mean over each tenth of the run).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments
from swift_jax.rewards import ORM, orms
from swift_jax.rlhf.grpo import GRPO
from swift_jax.rlhf.grpo_args import GRPOArgs
from swift_jax.trainer.trainer import Trainer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
CONFIG = os.path.join(ROOT, "configs", "quickstart.yaml")


class ExactMatch(ORM):
    """1.0 when the completion is the reference answer exactly (after stripping), else 0.0."""

    def __call__(self, completions, solution, **kwargs):
        return [float(c.strip() == s.strip()) for c, s in zip(completions, solution)]


def with_solutions(src: str, dst: str) -> str:
    """The quickstart rows with their reference answer copied into a `solution` column (GRPO drops the answer)."""
    with open(src) as f, open(dst, "w") as out:
        for line in f:
            row = json.loads(line)
            out.write(json.dumps({**row, "solution": row["messages"][-1]["content"]}) + "\n")
    return dst


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sft_steps", type=int, default=120)
    p.add_argument("--grpo_steps", type=int, default=60)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--completions_per_step", type=int, default=16, help="per_device_train_batch_size: prompts x 8")
    p.add_argument("--sft_checkpoint", default=None, help="skip step 1 and start from this checkpoint")
    p.add_argument("--output_dir", default=os.path.join(ROOT, "output", "grpo_demo"))
    a = p.parse_args()
    os.makedirs(a.output_dir, exist_ok=True)
    val = os.path.join(QUICK, "val.jsonl")
    common = ["--val_dataset", val, "--num_predict_samples", "100", "--report_to", "none", "--fsdp_size", "1"]

    sft, checkpoint = {}, a.sft_checkpoint
    if checkpoint is None:
        sft_args = parse_config(TrainArguments, ["--config", CONFIG, "--max_steps", str(a.sft_steps), "--save_steps", str(a.sft_steps),
                                                 "--eval_steps", str(a.sft_steps), "--output_dir", os.path.join(a.output_dir, "sft"), *common],
                                aliases=ALIASES).validate()
        sft = Trainer(sft_args).train()
        (checkpoint,) = glob.glob(os.path.join(sft["run_dir"], f"checkpoint-{a.sft_steps}"))

    orms["exact_match"] = ExactMatch
    data = with_solutions(os.path.join(QUICK, "train.jsonl"), os.path.join(a.output_dir, "train_with_solution.jsonl"))
    grpo_args = parse_config(TrainArguments, [
        "--model", checkpoint, "--tuner_type", "full", "--dtype", "float32", "--dataset", data, "--max_length", "128",
        "--per_device_train_batch_size", str(a.completions_per_step), "--gradient_accumulation_steps", "1", "--learning_rate", str(a.learning_rate),
        "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--weight_decay", "0", "--max_steps", str(a.grpo_steps),
        "--save_steps", str(a.grpo_steps), "--logging_steps", "1", "--output_dir", os.path.join(a.output_dir, "grpo"), *common,
    ], aliases=ALIASES).validate()
    grpo = GRPOArgs(num_generations=8, max_completion_length=16, temperature=a.temperature, reward_funcs=["exact_match"], beta=0.04,
                    log_completions=True)
    result = Trainer(grpo_args, GRPO(grpo)).train()

    with open(os.path.join(result["run_dir"], "logging.jsonl")) as f:
        rewards = [r["reward"] for r in map(json.loads, f) if "reward" in r]
    tenth = max(1, len(rewards) // 10)
    curve = [round(sum(rewards[i : i + tenth]) / len(rewards[i : i + tenth]), 3) for i in range(0, len(rewards), tenth)]
    print(json.dumps({
        "sft_checkpoint": checkpoint, "sft_steps": a.sft_steps, "sft_exact_match": sft.get("exact_match"), "grpo_steps": a.grpo_steps, "temperature": a.temperature, "completions_per_step": a.completions_per_step, "learning_rate": a.learning_rate,
        "grpo_exact_match": result.get("exact_match"), "reward_curve": curve,
        "rollout_tokens_per_sec": result.get("rollout_tokens_per_sec"), "grpo_seconds": result.get("elapsed"),
    }))


if __name__ == "__main__":
    main()
