"""GRPO through the trainer (`Trainer(args, GRPO(...)).train()`): ms-swift's log keys in logging.jsonl, the
memory report before step 1, no compilation after step 1, completions.jsonl, exact resume. (The refusal of a
configuration over the memory budget is tested on the compiled programs in test_grpo.py.)"""

import json
import os

import pytest

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments
from swift_jax.rewards import ORM, orms
from swift_jax.rlhf.grpo import GRPO
from swift_jax.rlhf.grpo.args import GRPOArgs
from swift_jax.trainer.trainer import Trainer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
BASE = [
    "--model", QUICK, "--init_from_scratch", "true", "--dtype", "float32", "--dataset", os.path.join(QUICK, "train.jsonl") + "#40",
    "--max_length", "64", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-2",
    "--logging_steps", "1", "--report_to", "none", "--lora_rank", "4", "--lora_dropout", "0", "--dataset_shuffle", "false",
    "--train_dataloader_shuffle", "false", "--compilation_cache_dir", "none",
]
KEYS = {"reward", "reward_std", "frac_reward_zero_std", "rewards/Uppercase/mean", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean",
        "clip_ratio/region_mean", "completions/mean_length", "completions/clipped_ratio", "rollout_tokens_per_sec", "loss", "compiles"}


class Uppercase(ORM):
    """The share of upper-case letters in the completion (dense, so the groups differ)."""

    def __call__(self, completions, **kwargs):
        return [sum(c.isupper() for c in text) / max(len(text), 1) for text in completions]


@pytest.fixture(autouse=True)
def uppercase_reward():
    orms["uppercase"] = Uppercase
    yield
    del orms["uppercase"]


def _train(tmp_path, *flags, **grpo):
    args = parse_config(TrainArguments, [*BASE, "--output_dir", str(tmp_path), *flags], aliases=ALIASES).validate()
    grpo_args = GRPOArgs(**{"num_generations": 4, "max_completion_length": 8, "reward_funcs": ["uppercase"], "log_completions": True, **grpo})
    trainer = Trainer(args, GRPO(grpo_args))
    return trainer, trainer.train()


def _lines(run_dir):
    with open(os.path.join(run_dir, "logging.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def test_grpo_runs_in_the_trainer_logs_ms_swift_keys_and_resumes_exactly(tmp_path, capsys):
    _, result = _train(tmp_path / "a", "--max_steps", "3", "--save_steps", "2")
    run_dir = result["run_dir"]
    out = capsys.readouterr().out
    assert "device memory per program: rollout:" in out and "update:" in out  # reported before step 1
    records = _lines(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3] and all(KEYS <= set(r) for r in records)
    assert records[1]["compiles"] == 0  # rollout and update compiled once, before step 1 (step 3's window has a save)
    assert all(r["tokens_per_sec"] > 0 for r in records)
    # the update alone is faster than rollout + update: tokens over the time outside the rollout phase
    assert all(r["train_tokens_per_sec"] > r["tokens_per_sec"] for r in records)
    (first, *_) = [json.loads(line) for line in open(os.path.join(run_dir, "completions.jsonl"))]
    assert first["step"] == ["1"] * 8 and {"prompt", "completion", "Uppercase", "advantages"} <= set(first)
    assert "<|im_start|>assistant" in first["prompt"][0] and "= " not in first["prompt"][0]  # the answer is dropped

    _, resumed = _train(tmp_path / "b", "--max_steps", "3", "--resume_from_checkpoint", os.path.join(run_dir, "checkpoint-2"))
    (step3,) = _lines(resumed["run_dir"])
    assert step3["step"] == 3
    for key in ("loss", "reward", "kl", "completions/mean_length"):
        assert step3[key] == pytest.approx(records[2][key], abs=1e-6), key


def test_the_rlhf_command_runs_grpo_with_its_own_defaults(tmp_path):
    """`swift-jax rlhf --rlhf_type grpo` parses GRPO's group (its `--beta` default is 0.04, not DPO's 0.1)."""
    from swift_jax.rlhf.__main__ import GRPOArguments, requested_rlhf_type, run_command

    flags = [*BASE, "--output_dir", str(tmp_path), "--rlhf_type", "grpo", "--reward_funcs", "repetition",
             "--num_generations", "4", "--max_completion_length", "8", "--max_steps", "2"]
    assert requested_rlhf_type(flags) == "grpo"
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("rlhf_type: grpo\n")
    assert requested_rlhf_type([str(recipe)]) == "grpo" and requested_rlhf_type(["--config", str(recipe)]) == "grpo"
    assert GRPOArguments().grpo.beta == 0.04 and GRPOArguments().grpo.temperature == 0.9
    result = run_command(flags)
    with open(os.path.join(result["run_dir"], "logging.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2]
    assert all("rewards/RepetitionPenalty/mean" in r and "reward" in r and "kl" in r for r in lines if "loss" in r)
