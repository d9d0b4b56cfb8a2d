"""A short CPU training run of a task type on the bundled quickstart model (from scratch) and tiny task data."""

from __future__ import annotations

import json
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TASKS = os.path.join(ROOT, "swift_jax", "assets", "tasks")


def run_tiny(out, dataset: str, args: list[str], *, steps: int, max_length: int, batch: int = 1, lr: str = "2e-3"):
    """Train `steps` steps (full fine-tuning unless `args` say otherwise, checkpoint and eval at the end) on
    `swift_jax/assets/tasks/<dataset>`; returns (logging.jsonl records, run folder)."""
    from swift_jax.train import run_command

    quick = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
    run_command(["--model", quick, "--init_from_scratch", "true", "--dtype", "float32", "--dataset", os.path.join(TASKS, dataset),
                 "--max_length", str(max_length), "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1",
                 "--learning_rate", lr, "--tuner_type", "full", "--max_steps", str(steps), "--eval_steps", str(steps),
                 "--save_steps", str(steps), "--logging_steps", "1", "--report_to", "none", "--fsdp_size", "1",
                 "--data_parallel_size", "-1", "--gradient_checkpointing", "false", "--warmup_ratio", "0",
                 "--weight_decay", "0", "--output_dir", str(out), *args])
    (run,) = os.listdir(out)
    return [json.loads(line) for line in open(os.path.join(out, run, "logging.jsonl"))], os.path.join(out, run)
