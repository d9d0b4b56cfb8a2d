"""The GPU check a lent accelerator runs in one go (`bash scripts/gpu_check.sh`, at most ~6 minutes on one
H100/H200): what only a GPU can tell, each row printed as soon as it is measured.

1. Attention at seq 4096, forward+backward, bf16: xla, xla_blocked, pallas_gpu, cudnn (packed and unpacked rows),
   from `scripts/bench_attention.py`.
2. Training throughput, `scripts/bench_train.py` presets `gpu-0.5b` and `gpu-1.5b` (Qwen2.5 shapes, random weights,
   LoRA r8, seq 4096): swift_jax packed / padded against PyTorch (transformers + peft, SDPA) padded: real
   tokens/s, step time, warm-up (compile) time, peak device memory, and MFU (FLOPs of the real tokens at the
   preset's mean sample length, `swift_jax/flops.py`, over the device's bf16 peak).

Imports none of tyro, grain, qwix or datasets (the device image lacks them). Every part has its own time limit;
a part that runs out prints `timeout` and the check goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_VARIANTS = ("swift_jax packed", "swift_jax padded", "pytorch padded")


def stream(cmd: list[str], timeout: float) -> list[str]:
    """Run `cmd`, echoing its output line by line; returns the lines (stops it after `timeout` seconds)."""
    start, lines = time.time(), []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if not line.startswith("RESULT "):
                print("   ", line.rstrip(), flush=True)
            if time.time() - start > timeout:
                raise subprocess.TimeoutExpired(cmd, timeout)
        proc.wait(timeout=max(1.0, timeout - (time.time() - start)))
    except subprocess.TimeoutExpired:
        proc.kill()
        print(f"    timeout after {timeout:.0f} s: {' '.join(cmd[1:4])}", flush=True)
    return lines


def mfu_of(preset_name: str, tokens_per_sec: float) -> float | None:
    """Model FLOPs utilisation of LoRA training at `tokens_per_sec`, samples of the preset's mean length."""
    import jax
    import transformers

    sys.path.insert(0, HERE)
    from bench_train import PRESETS

    from swift_jax import flops
    from swift_jax.modeling import model_config

    preset = PRESETS[preset_name]
    config, _ = model_config(transformers.Qwen2Config(**preset["model"]).to_dict(), dtype=preset["dtype"])
    length = int(preset["mean_length"])
    per_sample = flops.training_flops(config, [length], full=False, lora_params=1)
    return flops.mfu(per_sample * tokens_per_sec / length, 1.0, jax.devices()[0].device_kind, 1)


def main() -> int:
    # CPU smoke run of the script itself: GPU_CHECK_PRESETS=ci GPU_CHECK_ATTENTION="--small" bash scripts/gpu_check.sh
    budget = float(os.environ.get("GPU_CHECK_SECONDS", "330"))
    attention = os.environ.get("GPU_CHECK_ATTENTION", "--seqs 4096 --heads 14 --kv_heads 2 --head_dim 64 --dtype bfloat16 --iters 5")
    start = time.time()
    print(f"## attention, forward+backward ({attention})", flush=True)
    stream([sys.executable, os.path.join(HERE, "bench_attention.py"), *attention.split()], timeout=75)
    for preset in os.environ.get("GPU_CHECK_PRESETS", "gpu-0.5b gpu-1.5b").split():
        print(f"## bench_train --preset {preset}: variant | real tok/s | step ms | warm-up s | peak MB | MFU", flush=True)
        for variant in TRAIN_VARIANTS:
            left = budget - (time.time() - start)
            if left < 20:
                print(f"    {variant}: skipped (the check's {budget:.0f} s are spent)", flush=True)
                continue
            lines = stream([sys.executable, os.path.join(HERE, "bench_train.py"), "--preset", preset, "--variant", variant,
                            "--steps", "5"], timeout=min(110, left))
            result = next((json.loads(l[7:]) for l in lines if l.startswith("RESULT ")), None)
            if result is None or "skipped" in result:
                print(f"    {variant}: {result.get('skipped') if result else 'no result'}", flush=True)
                continue
            mfu = mfu_of(preset, result["tokens_per_sec"])
            print(f"    {variant:17s} | {result['tokens_per_sec']:9.0f} | {result['step_ms']:8.1f} | {result['warmup_s']:6.1f} | "
                  f"{result['peak_memory_mb']:8.0f} | {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}", flush=True)
    print(f"## done in {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
