"""GRPO on the CPU: a partly trained SFT model of the quickstart task gets better on held-out words with an
exact-match reward.

    python scripts/grpo_demo.py [--sft_steps 100] [--grpo_steps 40] [--temperature 0.3] [--output_dir output/grpo_demo]

1. SFT: `configs/quickstart.yaml` (a ~0.9M-parameter model from scratch; reverse / upper-case a spelled-out
   word) with a constant learning rate after its warmup, stopped after `--sft_steps` (the full recipe runs 400
   cosine steps and reaches exact match 1.0). Greedy exact match on the first `--eval_rows` held-out prompts.
2. GRPO from that checkpoint (full fine-tuning, `num_generations` 8, `--prompts_per_step` prompts per step, beta
   0.04): the reward is 1 when the completion equals the row's `solution` (its reference answer) exactly, else
   0. Then greedy exact match on the same held-out prompts (words never seen in training).

Why a low rollout temperature: the partly trained model is right by small margins on each of the answer's
tokens, so at ms-swift's default 0.9 almost no sample is exactly right (sampled reward 0.003 for a checkpoint
at greedy exact match 0.27, and not one right sample for any of its 146 prompts whose greedy answer is wrong):
GRPO then only sharpens answers greedy decoding already gives. At 0.3 the samples are small perturbations of
the greedy answer, a third of the groups hold both right and wrong answers, and the right answers to prompts
that greedy decoding gets wrong are what the update reinforces. Prints one JSON line: both exact-match figures, the reward curve (mean
reward over each tenth of the run) and the rollout / update throughput.
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
from swift_jax.rlhf.grpo.args import GRPOArgs
from swift_jax.trainer.trainer import Trainer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
CONFIG = os.path.join(ROOT, "configs", "quickstart.yaml")
G = 8


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


def sft_checkpoint(steps: int, output_dir: str, common: list[str]) -> tuple[str, float | None]:
    """The quickstart recipe stopped after `steps` (constant learning rate after 20 warmup steps)."""
    args = parse_config(TrainArguments, [
        "--config", CONFIG, "--max_steps", str(steps), "--lr_scheduler_type", "constant_with_warmup", "--warmup_ratio", str(20 / steps),
        "--save_steps", str(steps), "--eval_steps", str(steps), "--logging_steps", "20", "--output_dir", output_dir, *common,
    ], aliases=ALIASES).validate()
    result = Trainer(args).train()
    (checkpoint,) = glob.glob(os.path.join(result["run_dir"], f"checkpoint-{steps}"))
    return checkpoint, result.get("exact_match")


def run_grpo(checkpoint: str, a: argparse.Namespace, common: list[str]) -> dict:
    """GRPO with the exact-match reward from `checkpoint`; the trainer's result (held-out exact match, run_dir)."""
    orms["exact_match"] = ExactMatch
    data = with_solutions(os.path.join(QUICK, "train.jsonl"), os.path.join(a.output_dir, "train_with_solution.jsonl"))
    args = parse_config(TrainArguments, [
        "--model", checkpoint, "--tuner_type", "full", "--dtype", "float32", "--dataset", data, "--max_length", "128",
        "--per_device_train_batch_size", str(a.prompts_per_step * G), "--gradient_accumulation_steps", "1",
        "--learning_rate", str(a.learning_rate), "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--weight_decay", "0",
        "--max_steps", str(a.grpo_steps), "--save_steps", str(a.save_steps or a.grpo_steps), "--save_total_limit", "100", "--logging_steps", "1",
        "--output_dir", os.path.join(a.output_dir, "grpo"), *common,
    ], aliases=ALIASES).validate()
    grpo = GRPOArgs(num_generations=G, max_completion_length=16, temperature=a.temperature, reward_funcs=["exact_match"], beta=a.beta,
                    log_completions=True)
    return Trainer(args, GRPO(grpo)).train()


def reward_curve(run_dir: str, parts: int = 10) -> tuple[list[float], dict]:
    """Mean reward over each `1/parts` of the run, and the last logged record."""
    with open(os.path.join(run_dir, "logging.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "reward" in r]
    rewards = [r["reward"] for r in records]
    size = max(1, len(rewards) // parts)
    return [round(sum(rewards[i : i + size]) / len(rewards[i : i + size]), 3) for i in range(0, len(rewards), size)], records[-1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft_steps", type=int, default=100)
    p.add_argument("--grpo_steps", type=int, default=40)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--temperature", type=float, default=0.3)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--prompts_per_step", type=int, default=8, help=f"prompts per step (x {G} completions each)")
    p.add_argument("--eval_rows", type=int, default=200, help="held-out prompts scored before and after (the same rows)")
    p.add_argument("--save_steps", type=int, default=0, help="GRPO checkpoints every this many steps (0: at the end)")
    p.add_argument("--sft_checkpoint", default=None, help="skip step 1 and start from this checkpoint")
    p.add_argument("--output_dir", default=os.path.join(ROOT, "output", "grpo_demo"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    os.makedirs(a.output_dir, exist_ok=True)
    common = ["--val_dataset", os.path.join(QUICK, "val.jsonl"), "--num_predict_samples", str(a.eval_rows), "--report_to", "none",
              "--fsdp_size", "1"]
    checkpoint, before = a.sft_checkpoint, None
    if checkpoint is None:
        checkpoint, before = sft_checkpoint(a.sft_steps, os.path.join(a.output_dir, "sft"), common)
    result = run_grpo(checkpoint, a, common)
    curve, last = reward_curve(result["run_dir"])
    summary = {
        "sft_checkpoint": checkpoint, "sft_steps": a.sft_steps, "held_out_exact_match_before": before,
        "held_out_exact_match_after": result.get("exact_match"), "eval_rows": a.eval_rows, "grpo_steps": a.grpo_steps,
        "temperature": a.temperature, "learning_rate": a.learning_rate, "beta": a.beta, "prompts_per_step": a.prompts_per_step,
        "reward_curve": curve, "rollout_tokens_per_sec": round(last.get("rollout_tokens_per_sec", 0.0), 1),
        "train_tokens_per_sec": round(last.get("train_tokens_per_sec", 0.0), 1), "grpo_seconds": result.get("elapsed"),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
