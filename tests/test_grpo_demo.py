"""The CPU demonstration, short (scripts/grpo_demo.py): the quickstart model stopped at SFT step 100, then 10
GRPO steps with the exact-match reward raise held-out greedy exact match on the same 100 held-out prompts."""

import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def test_grpo_raises_held_out_greedy_exact_match(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}  # the quickstart's one-device run
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "grpo_demo.py"), "--sft_steps", "100", "--grpo_steps", "10",
           "--eval_rows", "100", "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = result["held_out_exact_match_before"], result["held_out_exact_match_after"]
    # 0.20 -> 0.35 when recorded (2026-12-03); greedy decoding, the same 100 held-out prompts
    assert after >= before + 0.05, result
    curve = result["reward_curve"]  # the sampled exact-match reward, one value per step here
    assert sum(curve[-3:]) > sum(curve[:3]), curve
    assert result["rollout_tokens_per_sec"] > 0 and result["train_tokens_per_sec"] > 0
