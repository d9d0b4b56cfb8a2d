"""Side by side, end to end: the same small LoRA job through `swift sft` (ms-swift, PyTorch) and
`python -m swift_jax.train`, wall time and peak memory of the whole command (start-up, data, compilation,
training, checkpoint), alternating the two, median of N pairs.

The job: a tiny random Qwen2 (~185k parameters, bundled byte-level tokenizer), 200 rows of the quickstart task,
50 optimizer steps of LoRA (rank 4), batch 2 x accumulation 2, float32, CPU, checkpoint at the end. The first
pair runs with swift_jax's compilation cache empty (`cold`); the later pairs find it warm, as a user's second
run of a job does.

    python -m venv /opt/msswift && /opt/msswift/bin/pip install torch==2.13.0 ms-swift   # once
    python scripts/bench_e2e_ms_swift.py [--swift /opt/msswift/bin/swift] [--pairs 3] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# Runs `cmd` (argv as JSON) and prints its wall time and the peak RSS of it and its children, in MiB.
MEASURE = """
import json, resource, subprocess, sys, time
cmd, log = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
with open(log, "w") as f:
    code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=json.loads(sys.argv[3]))
wall = time.perf_counter() - start
print(json.dumps({"code": code, "wall_s": wall, "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def build_model(workdir: str) -> tuple[str, int]:
    """A tiny random Qwen2 checkpoint (float32) with the bundled tokenizer; returns (folder, parameters)."""
    import torch
    import transformers

    torch.manual_seed(0)
    with open(os.path.join(QUICK, "config.json")) as f:
        quick = json.load(f)
    config = transformers.Qwen2Config(
        vocab_size=quick["vocab_size"], bos_token_id=quick.get("bos_token_id"), eos_token_id=quick.get("eos_token_id"),
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=True, dtype="float32",
    )
    model = transformers.Qwen2ForCausalLM(config).float()
    path = os.path.join(workdir, "base")
    model.save_pretrained(path, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(QUICK, name), path)
    return path, sum(p.numel() for p in model.parameters())


def write_rows(workdir: str, rows: int) -> str:
    path = os.path.join(workdir, "train.jsonl")
    with open(os.path.join(QUICK, "train.jsonl")) as src, open(path, "w") as dst:
        for _, line in zip(range(rows), src):
            dst.write(line)
    return path


def common_flags(model: str, dataset: str, steps: int) -> list[str]:
    """Flags both commands read with the same meaning (ms-swift names)."""
    return [
        "--model", model, "--dataset", dataset, "--tuner_type", "lora", "--lora_rank", "4", "--lora_alpha", "8",
        "--lora_dropout", "0", "--max_length", "64", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--learning_rate", "1e-3", "--max_steps", str(steps), "--logging_steps", "5", "--save_steps", str(steps),
        "--split_dataset_ratio", "0", "--report_to", "none", "--gradient_checkpointing", "false", "--seed", "42",
    ]


def measure(cmd: list[str], log: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(cmd), log, json.dumps(env)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["code"] != 0:
        with open(log) as f:
            raise SystemExit(f"{' '.join(cmd[:3])} failed (exit {result['code']}); log {log}:\n{f.read()[-3000:]}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swift", default="/opt/msswift/bin/swift")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench_e2e_ms_swift"))
    args = parser.parse_args()
    if not os.path.exists(args.swift):
        raise SystemExit(f"--swift {args.swift}: not found; install ms-swift into its own venv (see the docstring)")
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    model, n_params = build_model(args.workdir)
    flags = common_flags(model, write_rows(args.workdir, args.rows), args.steps)
    cache = os.path.join(args.workdir, "xla_cache")
    ours_env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
    ours_env.update(JAX_PLATFORMS="cpu")
    theirs_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    commands = {
        "ms-swift": [args.swift, "sft", *flags, "--model_type", "qwen2", "--template", "chatml", "--check_model", "false",
                     "--torch_dtype", "float32", "--dataloader_num_workers", "0", "--eval_strategy", "no", "--use_hf", "true"],
        "swift_jax": [sys.executable, "-m", "swift_jax.train", *flags, "--dtype", "float32", "--fsdp_size", "1",
                      "--compilation_cache_dir", cache],
    }
    print(f"job: {args.steps} LoRA steps, {args.rows} rows, Qwen2 with {n_params:,} parameters, CPU ({os.cpu_count()} cores)")
    results: dict[str, list[dict]] = {name: [] for name in commands}
    for i in range(args.pairs + 1):  # pair 0: swift_jax's cache is cold
        order = list(commands) if i % 2 == 0 else list(commands)[::-1]
        for name in order:
            out = os.path.join(args.workdir, f"out-{name}-{i}")
            env = theirs_env if name == "ms-swift" else ours_env
            r = measure([*commands[name], "--output_dir", out], os.path.join(args.workdir, f"{name}-{i}.log"), env)
            results[name].append(r)
            print(f"  run {i} {name:>9}: {r['wall_s']:6.1f} s, peak {r['peak_mib']:6.0f} MiB{' (cold cache)' if i == 0 and name == 'swift_jax' else ''}", flush=True)
    print()
    print(f"| command | wall s (median of {args.pairs} warm) | peak MiB (median) | first run wall s |")
    print("|---|---|---|---|")
    med = {}
    for name, rs in results.items():
        warm = rs[1:]
        med[name] = (statistics.median(r["wall_s"] for r in warm), statistics.median(r["peak_mib"] for r in warm))
        print(f"| {name} | {med[name][0]:.1f} | {med[name][1]:.0f} | {rs[0]['wall_s']:.1f} |")
    print(f"\nratio swift_jax/ms-swift: wall {med['swift_jax'][0] / med['ms-swift'][0]:.2f}x, peak memory {med['swift_jax'][1] / med['ms-swift'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    print(f"(benchmark took {time.time() - t0:.0f} s)")
    sys.exit(code)
