"""`python -m swift_jax.train` arguments: YAML + flag overrides, ms-swift names and aliases, clear errors."""

import glob
import os

import pytest

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments

ROOT = os.path.join(os.path.dirname(__file__), "..")


def parse(argv):
    return parse_config(TrainArguments, argv, aliases=ALIASES).validate()


def test_yaml_values_and_flag_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: some/model\ntrain_type: full\nlora_rank: 4\ndataset: [a.jsonl, b.jsonl]\npacking: true\n")
    args = parse(["--config", str(cfg), "--lora_rank", "16", "--learning_rate", "2e-4", "--packing", "false"])
    assert args.model_args.model == "some/model"
    assert args.tuner.tuner_type == "full"  # 3.x alias train_type
    assert args.tuner.lora_rank == 16  # the flag wins over the file
    assert args.data.dataset == ["a.jsonl", "b.jsonl"]
    assert args.data.packing is False  # ms-swift's lower-case booleans
    assert args.training.learning_rate == 2e-4


def test_ms_swift_defaults():
    args = parse(["--model", "m", "--dataset", "d.jsonl"])
    t = args.training
    assert (t.adam_beta1, t.adam_beta2, t.weight_decay, t.max_grad_norm, t.lr_scheduler_type) == (0.9, 0.95, 0.1, 1.0, "cosine")
    assert args.tuner.lora_dropout == 0.05 and args.tuner.target_modules == ["all-linear"]
    assert args.data.truncation_strategy == "delete"
    assert t.learning_rate == 1e-4  # lora default; full fine-tuning gets 1e-5
    assert parse(["--model", "m", "--tuner_type", "full"]).training.learning_rate == 1e-5
    assert args.accumulation_steps(batch_devices=1) == 16  # ms-swift: a global batch of 16 samples


def test_unknown_yaml_key_names_the_file_and_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: m\nlora_rnak: 8\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown key 'lora_rnak' \(did you mean 'lora_rank'\?\)"):
        parse(["--config", str(cfg)])


def test_bad_values_are_errors(tmp_path):
    with pytest.raises(SystemExit):  # tyro prints which flag and what it expected
        parse(["--model", "m", "--lora_rank", "eight"])
    with pytest.raises(ValueError, match="--tuner_type 'adapter'"):
        parse(["--model", "m", "--tuner_type", "adapter"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        parse(["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("recipe", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))), ids=os.path.basename)
def test_every_recipe_parses(recipe):
    from swift_jax.rlhf.__main__ import GRPOArguments, RLHFArguments, requested_rlhf_type

    kind = requested_rlhf_type(["--config", recipe])  # rlhf recipes carry rlhf_type & co.
    cls = GRPOArguments if kind == "grpo" else RLHFArguments if kind else TrainArguments
    args = parse_config(cls, ["--config", recipe], aliases=ALIASES).validate()
    assert args.model_args.model and args.data.dataset
