"""`python -m swift_jax.rlhf` end to end on the tiny model and the bundled preference data: the reward margin on
held-out pairs grows (LoRA, packed pairs); full fine-tuning starts at log 2 against its frozen reference copy, and its
precomputed reference values give the same run; QLoRA's reference is the quantized base with its adapters off."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest

from swift_jax.rlhf.__main__ import run_command

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "golden", "rlhf_tiny", "base")
DATA = os.path.join(os.path.dirname(HERE), "swift_jax", "assets", "preference")


def run(tmp_path, *flags: str, data: str = "train.jsonl") -> tuple[dict, list[dict]]:
    final = run_command([
        "--model", BASE, "--dataset", os.path.join(DATA, data), "--val_dataset", os.path.join(DATA, "val.jsonl#8"),
        "--max_length", "32", "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1",  # x 8 devices
        "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--report_to", "none", "--dtype", "float32",
        "--output_dir", str(tmp_path), *flags,
    ])
    with open(os.path.join(final["run_dir"], "logging.jsonl")) as f:
        return final, [json.loads(line) for line in f]


def test_dpo_lora_packed_grows_the_held_out_margin(tmp_path):
    final, log = run(tmp_path, "--rlhf_type", "dpo", "--packing", "true", "--max_steps", "12", "--learning_rate", "3e-2",
                     "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0", "--save_steps", "12",
                     "--eval_steps", "12", "--warmup_ratio", "0")
    steps = [r for r in log if "loss" in r and "rewards/margins" in r]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # fresh LoRA (B = 0): policy = reference
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logits/chosen"):
        assert key in steps[-1]
    # 12 steps of a 55k-parameter model: the held-out margin starts at 0 and must come out clearly positive
    assert final["eval_rewards/margins"] > 0.02 and final["eval_rewards/accuracies"] >= 0.75, final
    assert final["eval_loss"] < math.log(2) - 0.01


def test_full_fine_tuning_dpo_uses_a_frozen_reference_copy_or_its_precomputed_values(tmp_path):
    flags = ("--rlhf_type", "dpo", "--tuner_type", "full", "--max_steps", "2", "--learning_rate", "1e-3",
             "--save_steps", "100", "--eval_steps", "2")
    copy, log = run(tmp_path / "copy", *flags, data="train.jsonl#16")
    steps = [r for r in log if "loss" in r and "rewards/margins" in r]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and steps[0]["rewards/margins"] == 0.0
    assert steps[1]["rewards/margins"] != 0.0  # the policy moved, the reference did not
    # the reference computed once before training (no frozen copy in the step) gives the same numbers
    precomputed, log = run(tmp_path / "precomputed", *flags, "--precompute_ref_log_probs", "true", data="train.jsonl#16")
    for ours, theirs in zip([r for r in log if "loss" in r and "rewards/margins" in r], steps):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), key
    for key in ("eval_loss", "eval_rewards/margins"):
        assert precomputed[key] == pytest.approx(copy[key], rel=1e-6, abs=1e-7), key


def test_qlora_dpo_reference_is_the_quantized_base_with_adapters_off(tmp_path):
    _, log = run(tmp_path, "--rlhf_type", "dpo", "--tuner_type", "qlora", "--max_steps", "2", "--learning_rate", "1e-2",
                 "--lora_dropout", "0", "--save_steps", "2", "--eval_steps", "100", data="train.jsonl#16")
    steps = [r for r in log if "loss" in r and "rewards/margins" in r]
    # fresh adapters (B = 0): the policy is the quantized base, and so is the reference (not the float one)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and steps[0]["rewards/margins"] == 0.0
    assert steps[1]["rewards/margins"] != 0.0
    (run_dir,) = {os.path.dirname(p) for p in glob.glob(os.path.join(str(tmp_path), "v*", "logging.jsonl"))}
    assert os.path.isfile(os.path.join(run_dir, "checkpoint-2", "adapter_model.safetensors"))  # a PEFT adapter


def test_arguments_follow_ms_swift_defaults_and_name_the_flag():
    from swift_jax.cli import parse_config
    from swift_jax.config import ALIASES
    from swift_jax.rlhf.__main__ import RLHFArguments

    def parse(*flags):
        return parse_config(RLHFArguments, ["--model", "m", *flags], aliases=ALIASES).validate().rlhf

    dpo = parse()
    assert (dpo.rlhf_type, dpo.beta, dpo.loss_type, dpo.rpo_alpha) == ("dpo", 0.1, ["sigmoid"], None)
    simpo = parse("--rlhf_type", "simpo")  # ms-swift: SimPO runs as CPO with loss_type simpo and beta 2.0
    assert (simpo.rlhf_type, simpo.beta, simpo.loss_type, simpo.cpo_alpha, simpo.simpo_gamma) == ("cpo", 2.0, ["simpo"], 1.0, 1.0)
    assert parse("--rlhf_type", "kto").loss_type == ["kto"]
    mpo = parse("--loss_type", "sigmoid", "bco_pair", "sft", "--loss_weights", "0.8", "0.2", "1.0")
    assert mpo.loss_type == ["sigmoid", "bco_pair", "sft"] and mpo.loss_weights == [0.8, 0.2, 1.0]
    for flags, message in [(("--loss_type", "sigmoidd"), "--loss_type"),
                           (("--loss_type", "sigmoid", "sft", "--loss_weights", "1"), "--loss_weights"),
                           (("--rlhf_type", "cpo", "--loss_type", "sigmoid", "hinge"), "only supported for dpo"),
                           (("--rlhf_type", "orpo", "--loss_type", "sigmoid"), "orpo takes no --loss_type"),
                           (("--ref_model", "m"), "--ref_model"),
                           (("--rlhf_type", "orpo", "--precompute_ref_log_probs", "true"), "no reference model")]:
        with pytest.raises(ValueError, match=message):
            parse(*flags)
