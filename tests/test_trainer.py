"""The trainer's contract with ms-swift users: run folders, logs, rotation, resume semantics, argument errors."""

import json
import os

import numpy as np
import pytest

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments
from swift_jax.trainer.checkpoint import steps_to_delete
from swift_jax.trainer.trainer import Trainer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
BASE = [
    "--model", QUICK, "--init_from_scratch", "true", "--dtype", "float32", "--dataset", os.path.join(QUICK, "train.jsonl") + "#400",
    "--max_length", "32", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--learning_rate", "3e-3",
    "--logging_steps", "1", "--report_to", "none", "--lora_rank", "4", "--lora_dropout", "0", "--dataset_shuffle", "false",
    "--train_dataloader_shuffle", "false", "--compilation_cache_dir", "none",
]
MS_SWIFT_KEYS = {"global_step/max_steps", "percentage", "elapsed_time", "remaining_time", "memory(GiB)", "train_speed(s/it)"}


def args_of(*flags):
    return parse_config(TrainArguments, [*BASE, *flags], aliases=ALIASES).validate()


def run(*flags):
    trainer = Trainer(args_of(*flags))
    return trainer, trainer.train()


def lines(run_dir):
    with open(os.path.join(run_dir, "logging.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in lines(run_dir) if "loss" in r}


def test_run_folder_logs_rotation_and_symlinks(tmp_path):
    # gradient ascent makes the eval loss rise, so the best checkpoint (step 2) is the oldest one
    trainer, result = run("--output_dir", str(tmp_path), "--max_steps", "6", "--save_steps", "2", "--eval_steps", "2",
                          "--save_total_limit", "1", "--learning_rate", "-3e-3", "--split_dataset_ratio", "0.05",
                          "--create_checkpoint_symlink", "true", "--per_device_eval_batch_size", "3")
    run_dir = result["run_dir"]
    assert os.path.basename(run_dir).startswith("v0-") and os.path.dirname(run_dir) == str(tmp_path)
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-6"]
    for checkpoint in ("checkpoint-2", "checkpoint-6"):
        assert {"args.json", "adapter_config.json", "adapter_model.safetensors", "state", "data"} <= set(os.listdir(os.path.join(run_dir, checkpoint)))
    args = json.load(open(os.path.join(run_dir, "args.json")))
    assert args["lora_rank"] == 4 and args["save_total_limit"] == 1 and args["model"] == QUICK  # flat, ms-swift's names
    assert json.load(open(os.path.join(run_dir, "checkpoint-6", "args.json"))) == args

    records = lines(run_dir)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert all(MS_SWIFT_KEYS <= set(r) for r in train)
    assert train[2]["global_step/max_steps"] == "3/6" and train[2]["percentage"] == "50.00%"
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6] and evals[0]["eval_loss"] < evals[-1]["eval_loss"]
    summary = records[-1]
    assert "step" not in summary and summary["global_step"] == 6
    assert summary["last_model_checkpoint"] == os.path.join(run_dir, "last")
    assert summary["best_model_checkpoint"] == os.path.join(run_dir, "best")
    assert os.readlink(os.path.join(run_dir, "last")) == "checkpoint-6" and os.readlink(os.path.join(run_dir, "best")) == "checkpoint-2"
    assert summary["best_metric"] == pytest.approx(min(r["eval_loss"] for r in evals))

    val_rows = [json.loads(line) for line in open(os.path.join(run_dir, "val_dataset.jsonl"))]
    assert len(val_rows) == trainer.pipe.stats["num_val_samples"] == 20 and "messages" in val_rows[0]
    batch_devices = trainer.batch_devices
    assert {b["input_ids"].shape[0] for b in trainer.pipe.val_batches()} == {3 * batch_devices}  # --per_device_eval_batch_size


def test_rotation_keeps_the_newest_and_the_best():
    assert steps_to_delete([2, 4, 6, 8], 2) == [2, 4]
    assert steps_to_delete([2, 4, 6, 8], 1, keep=[2]) == [4, 6]
    assert steps_to_delete([2, 4, 6, 8], 1, keep=[8]) == [2, 4, 6]
    assert steps_to_delete([2, 4], None, keep=[2]) == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 4-step run that saves at step 2."""
    _, result = run("--output_dir", str(tmp_path_factory.mktemp("ref")), "--max_steps", "4", "--save_steps", "2")
    return result["run_dir"]


def test_resume_opens_a_new_version_folder_and_continues_exactly(reference, tmp_path):
    checkpoint = os.path.join(reference, "checkpoint-2")
    _, result = run("--output_dir", os.path.dirname(reference), "--max_steps", "4", "--save_steps", "2",
                    "--resume_from_checkpoint", checkpoint)
    resumed = result["run_dir"]
    assert resumed != reference and os.path.basename(resumed).startswith("v1-")
    after = losses(resumed)
    assert sorted(after) == [3, 4]  # the new log begins at the next step
    for step in after:
        assert after[step] == pytest.approx(losses(reference)[step], abs=1e-6)
    assert json.load(open(os.path.join(resumed, "args.json")))["resume_from_checkpoint"] == checkpoint


def test_resume_only_model_restarts_the_optimizer(reference, tmp_path):
    checkpoint = os.path.join(reference, "checkpoint-2")
    _, result = run("--output_dir", str(tmp_path / "a"), "--max_steps", "4", "--resume_from_checkpoint", checkpoint,
                    "--resume_only_model", "true")
    after, expected = losses(result["run_dir"]), losses(reference)
    assert sorted(after) == [3, 4]  # the step and the data position continue ...
    assert after[3] == pytest.approx(expected[3], abs=1e-6)  # ... with the restored weights
    assert abs(after[4] - expected[4]) > 1e-6  # but a fresh Adam state moves them differently
    _, result = run("--output_dir", str(tmp_path / "b"), "--max_steps", "4", "--resume_from_checkpoint", checkpoint,
                    "--resume_only_model", "true", "--ignore_data_skip", "true", "--add_version", "false")
    assert result["run_dir"] == str(tmp_path / "b")  # --add_version false: no vN- folder
    weights_only = losses(result["run_dir"])
    assert sorted(weights_only) == [1, 2, 3, 4]  # weights only: the count and the data start over
    assert weights_only[1] < expected[1] - 1e-3  # the trained weights fit the first batch better than step 1's did


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--save_steps", "0"], "--save_steps must be >= 1, got 0"),
        (["--logging_steps", "0"], "--logging_steps must be >= 1, got 0"),
        (["--eval_steps", "0"], "--eval_steps must be >= 1, got 0"),
        (["--streaming", "true"], "--streaming true needs --max_steps"),
        (["--resume_only_model", "true"], "--resume_only_model needs --resume_from_checkpoint"),
    ],
)
def test_argument_errors_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        args_of(*flags)


def test_an_explicit_flag_that_conflicts_with_the_adapter_is_an_error(reference, tmp_path):
    adapter = os.path.join(reference, "checkpoint-4")
    with pytest.raises(ValueError, match=r"--lora_rank 8 conflicts with --adapters .*checkpoint-4, whose adapter_config.json has r=4"):
        Trainer(args_of("--output_dir", str(tmp_path), "--max_steps", "1", "--adapters", adapter, "--lora_rank", "8")).setup()
    with pytest.raises(ValueError, match=r"--lora_dropout 0.2 conflicts with --adapters .*lora_dropout=0.0"):
        Trainer(args_of("--output_dir", str(tmp_path), "--max_steps", "1", "--adapters", adapter, "--lora_dropout", "0.2")).setup()
    # flags that agree with the adapter (BASE's --lora_rank 4, --lora_dropout 0) are fine
    trainer = Trainer(args_of("--output_dir", str(tmp_path), "--max_steps", "1", "--adapters", adapter))
    trainer.setup()
    assert trainer.model.model.layer(0).self_attn.q_proj.lora.lora_a.shape[-1] == 4  # the adapter's rank


def test_pt_trains_every_token_of_plain_text(tmp_path):
    from swift_jax.pt import PT_DEFAULTS
    from swift_jax.train import run_command

    data = tmp_path / "pt.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "abc "},
                                             {"role": "assistant", "content": "def"}]}) + "\n")
    flags = [*BASE, "--dataset", str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    trainer_args = parse_config(TrainArguments, flags, aliases=ALIASES, defaults=PT_DEFAULTS).validate()
    assert trainer_args.data.use_chat_template is False
    from swift_jax.data import build_data
    from swift_jax.modeling import load_tokenizer

    tokenizer = load_tokenizer(QUICK)
    batch = next(build_data(trainer_args.data, tokenizer, batch_size=1).train_iterator())
    n = int((batch["segment_ids"][0] > 0).sum())
    expected = list(tokenizer("abc def").input_ids) + [tokenizer.eos_token_id]
    assert batch["input_ids"][0, :n].tolist() == expected  # no chat markup, no system prompt
    assert (batch["labels"][0, 1:n] == batch["input_ids"][0, 1:n]).all()  # every token trained
    assert np.isfinite(run_command(flags, PT_DEFAULTS)["loss"])


def test_the_compilation_cache_is_never_inside_the_output_dir(tmp_path, monkeypatch):
    from swift_jax.trainer.setup import enable_compilation_cache

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    with pytest.raises(ValueError, match=r"--compilation_cache_dir .*xla is inside --output_dir"):
        enable_compilation_cache(str(tmp_path / "out" / "xla"), str(tmp_path / "out"))
    assert enable_compilation_cache("none", str(tmp_path / "out")) is None  # `none` disables it
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))  # the environment wins
    assert enable_compilation_cache(str(tmp_path / "out" / "xla"), str(tmp_path / "out")) == str(tmp_path / "env")
