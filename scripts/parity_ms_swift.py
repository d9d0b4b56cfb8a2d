"""Side by side with ms-swift: the same LoRA run through `swift sft` and `python -m swift_jax.train`.

Both start from the same tiny random Qwen2 checkpoint (bundled byte-level tokenizer, ChatML), the same
PEFT adapter (`--adapters`, non-zero B, so the adapter matters from step 1), the same rows in file order
(no shuffling), the same hyperparameters (AdamW 0.9/0.95, weight decay 0.1, cosine with warmup, clipping
1.0, gradient accumulation) in float32, and compare the loss of every optimizer step. ms-swift logs losses
rounded to 4 decimals, so the tolerance is 1e-4 plus that rounding.

    python -m venv /opt/msswift && /opt/msswift/bin/pip install torch==2.13.0 ms-swift   # once
    python scripts/parity_ms_swift.py [--swift /opt/msswift/bin/swift] [--workdir /tmp/parity] [--steps 8]

Needs the `test` extra here (torch, transformers, peft build the checkpoint and the adapter). Exit status 1
when a step differs by more than the tolerance.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TOLERANCE = 1e-4 + 5e-5  # 1e-4, plus ms-swift's rounding of logged losses to 4 decimals


def hyperparameters(steps: int) -> list[str]:
    """Flags both CLIs understand with the same meaning (ms-swift names)."""
    return [
        "--tuner_type", "lora", "--max_length", "64", "--truncation_strategy", "delete",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.25",
        "--weight_decay", "0.1", "--adam_beta1", "0.9", "--adam_beta2", "0.95", "--max_grad_norm", "1.0",
        "--max_steps", str(steps), "--logging_steps", "1", "--save_steps", "100000", "--seed", "42",
        "--dataset_shuffle", "false", "--train_dataloader_shuffle", "false", "--split_dataset_ratio", "0",
        "--gradient_checkpointing", "false", "--report_to", "none",
    ]


def build_base_and_adapter(workdir: str) -> tuple[str, str]:
    """A tiny random Qwen2 checkpoint (float32) with the bundled tokenizer, and a PEFT LoRA adapter for it."""
    import peft
    import torch
    import transformers

    base, adapter = os.path.join(workdir, "base"), os.path.join(workdir, "adapter")
    torch.manual_seed(0)
    config = transformers.Qwen2Config.from_pretrained(QUICK)
    config.torch_dtype = "float32"
    model = transformers.Qwen2ForCausalLM(config).float()
    model.save_pretrained(base, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(QUICK, name), base)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    peft.get_peft_model(model, lora).save_pretrained(adapter)
    return base, adapter


def write_dataset(workdir: str, rows: int) -> str:
    path = os.path.join(workdir, "train.jsonl")
    with open(os.path.join(QUICK, "train.jsonl")) as src, open(path, "w") as dst:
        for _, line in zip(range(rows), src):
            dst.write(line)
    return path


def run(cmd: list[str], log_path: str, env: dict | None = None) -> None:
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}); log {log_path}:\n{tail}")


def read_losses(output_dir: str) -> dict[int, float]:
    """step -> loss from the newest run folder's logging.jsonl (ms-swift logs `global_step/max_steps`)."""
    (path,) = sorted(glob.glob(os.path.join(output_dir, "v*", "logging.jsonl")))[-1:]
    losses = {}
    with open(path) as f:
        for record in map(json.loads, f):
            if "loss" not in record:
                continue
            step = record.get("step") or int(str(record["global_step/max_steps"]).split("/")[0])
            losses[int(step)] = float(record["loss"])
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swift", default="/opt/msswift/bin/swift", help="the `swift` executable of an ms-swift install")
    parser.add_argument("--workdir", default="/tmp/parity_ms_swift")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    if not os.path.exists(args.swift):
        raise SystemExit(f"--swift {args.swift}: not found; install ms-swift into its own venv (see this script's docstring)")

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    base, adapter = build_base_and_adapter(args.workdir)
    dataset = write_dataset(args.workdir, rows=4 * args.steps)
    common = ["--model", base, "--adapters", adapter, "--dataset", dataset, *hyperparameters(args.steps)]

    theirs_dir, ours_dir = os.path.join(args.workdir, "ms_swift"), os.path.join(args.workdir, "swift_jax")
    swift_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    run([args.swift, "sft", *common, "--model_type", "qwen2", "--template", "chatml", "--check_model", "false",
         "--torch_dtype", "float32", "--lora_dropout", "0", "--output_dir", theirs_dir, "--dataloader_num_workers", "0",
         "--eval_strategy", "no", "--use_hf", "true"], os.path.join(args.workdir, "ms_swift.log"), env=swift_env)
    run([sys.executable, "-m", "swift_jax.train", *common, "--dtype", "float32", "--output_dir", ours_dir,
         "--fsdp_size", "1", "--data_parallel_size", "1"], os.path.join(args.workdir, "swift_jax.log"),
        env={**os.environ, "JAX_PLATFORMS": "cpu"})

    theirs, ours = read_losses(theirs_dir), read_losses(ours_dir)
    print(f"{'step':>4}  {'ms-swift':>10}  {'swift_jax':>10}  {'|diff|':>9}")
    worst = 0.0
    for step in sorted(theirs):
        diff = abs(theirs[step] - ours.get(step, float("nan")))
        worst = max(worst, diff) if diff == diff else float("inf")
        print(f"{step:>4}  {theirs[step]:>10.4f}  {ours.get(step, float('nan')):>10.6f}  {diff:>9.2e}")
    ok = sorted(theirs) == sorted(ours) and worst <= TOLERANCE
    print(f"worst |diff| {worst:.2e} over {len(theirs)} steps (tolerance {TOLERANCE:.1e}): {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
