"""The `swift-jax` command as a ms-swift user types it (subprocesses): subcommands, positional YAML, ignored
ms-swift flags, the bundled self-cognition set with --model_name/--model_author, and ms-swift's README command."""

import json
import os
import subprocess
import sys

import pytest

from infer_fixtures import build_chat_model
from swift_jax.data.frontend import read_rows
from swift_jax.data.resolve import LoadOptions

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def swift_jax(*args, devices=1, timeout=600):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, "-c", "from swift_jax.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_chat_model(tmp_path_factory.mktemp("model"))


def self_cognition_rows(entry: str = "swift/self-cognition", **names) -> list[dict]:
    """The registered self-cognition set as training reads it (bundled file, ms-swift's preprocessor)."""
    return read_rows(entry, options=LoadOptions(model_name=names.get("name"), model_author=names.get("author")))


def test_self_cognition_fills_name_and_author_by_language():
    rows = self_cognition_rows(name=("小黄", "Xiao Huang"), author=("魔搭", "ModelScope"))
    texts = [" ".join(m["content"] for m in r["messages"]) for r in rows]
    assert rows and all("{{" not in t for t in texts)
    assert any("Xiao Huang" in t and "ModelScope" in t for t in texts)
    assert any("小黄" in t for t in texts) and not any("Xiao Huang" in t and "魔搭" in t for t in texts)
    one = self_cognition_rows(name=("swift-robot",), author=("swift",))  # one value serves zh and en
    unfilled = self_cognition_rows()
    assert sum("swift-robot" in r["messages"][-1]["content"] for r in one) == sum("{{NAME}}" in r["messages"][-1]["content"] for r in unfilled)
    qwen3 = self_cognition_rows("self-cognition:qwen3")
    assert qwen3[0]["messages"][0]["content"].endswith(" /no_think")
    assert qwen3[0]["messages"][1]["content"].startswith("<think>\n\n</think>\n\n")
    assert len(self_cognition_rows("swift/self-cognition#500")) == 500


def test_unknown_subcommand_and_help():
    out = swift_jax("trian")
    assert out.returncode == 2 and "unknown command 'trian'; expected one of sft, pt, rlhf" in out.stderr
    assert swift_jax("--help").returncode == 0


def test_ms_swift_readme_command_runs_unchanged(model, tmp_path):
    """ms-swift's README quick start, with the model and the hub datasets made local paths (swift/self-cognition
    is bundled), under `swift-jax sft`; `--train_type` (3.x) works as `--tuner_type`."""
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("one", "two", "three", "four")]
    for name in ("alpaca-gpt4-data-zh.jsonl", "alpaca-gpt4-data-en.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = swift_jax(
        "sft", "--model", model, "--train_type", "lora",
        "--dataset", f"{tmp_path}/alpaca-gpt4-data-zh.jsonl#500", f"{tmp_path}/alpaca-gpt4-data-en.jsonl#500", "swift/self-cognition#500",
        "--torch_dtype", "bfloat16", "--num_train_epochs", "1", "--per_device_train_batch_size", "1",
        "--per_device_eval_batch_size", "1", "--learning_rate", "1e-4", "--lora_rank", "8", "--lora_alpha", "32",
        "--target_modules", "all-linear", "--gradient_accumulation_steps", "16", "--eval_steps", "50", "--save_steps", "50",
        "--save_total_limit", "2", "--logging_steps", "5", "--max_length", "2048", "--output_dir", str(tmp_path / "output"),
        "--system", "You are a helpful assistant.", "--warmup_ratio", "0.05", "--dataloader_num_workers", "4",
        "--model_author", "swift", "--model_name", "swift-robot",
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "ignoring --dataloader_num_workers: grain reads" in out.stderr
    (run_dir,) = [os.path.join(tmp_path / "output", d) for d in os.listdir(tmp_path / "output")]
    args = json.load(open(os.path.join(run_dir, "args.json")))
    assert args["tuner_type"] == "lora" and args["model_name"] == ["swift-robot"] and args["dataset"][2] == "swift/self-cognition#500"
    summary = [json.loads(line) for line in open(os.path.join(run_dir, "logging.jsonl"))][-1]
    assert summary["global_step"] == 94  # 1500 samples / 16 per step, rounded up as an epoch
    assert summary["last_model_checkpoint"].endswith("checkpoint-94")


def test_positional_yaml_and_merge_lora(model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one two"}]}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {model}\ndataset: [{data}]\nmax_steps: 2\nsave_steps: 2\nlora_rank: 4\nmax_length: 64\n"
                      f"report_to: [none]\ndeepspeed: zero3\noutput_dir: {tmp_path / 'out'}\nsystem: Be brief.\n")
    out = swift_jax("sft", str(recipe), "--lora_rank", "2")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert f"{recipe}: ignoring --deepspeed: sharding comes from the mesh: --fsdp_size" in out.stderr
    (run_dir,) = [os.path.join(tmp_path / "out", d) for d in os.listdir(tmp_path / "out")]
    assert json.load(open(os.path.join(run_dir, "args.json")))["lora_rank"] == 2  # the flag overrides the YAML
    merged = tmp_path / "merged"
    out = swift_jax("merge-lora", "--adapters", os.path.join(run_dir, "checkpoint-2"), "--output_dir", str(merged))
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(merged))
    assert json.load(open(merged / "args.json")) == {"data": {"system": "Be brief."}}  # the trained system prompt travels
    infer_recipe = tmp_path / "infer.yaml"  # every command takes ms-swift 4's positional YAML
    infer_recipe.write_text(f"model: {merged}\nval_dataset: [{data}]\nmax_new_tokens: 4\nresult_path: {tmp_path / 'r.jsonl'}\n")
    out = swift_jax("infer", str(infer_recipe), "--temperature", "0")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "response" in json.loads((tmp_path / "r.jsonl").read_text())
