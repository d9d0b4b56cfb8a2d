"""Side by side with ms-swift's `swift rlhf`: our curves against the golden runs of scripts/record_ms_swift_rlhf.py.

For each recorded run, trains `python -m swift_jax.rlhf` from the same tiny model and LoRA start
(tests/golden/rlhf_tiny/) with the same flags, and prints every step's loss and rewards/margins next to ms-swift's.
Our pipeline reads rows in ms-swift's order (file order for DPO, its trainers' seeded random order for CPO/SimPO,
ORPO, KTO and RM: swift_jax/rlhf/preference/sampler_order.py), so every step is comparable. `--golden rlhf_padded`: the
padded varied-length runs (tests/golden/rlhf_padded.json); RM's value head starts from another random draw in
ms-swift, so only RM's first step (tests/test_rlhf_padded.py) is comparable.

    python scripts/parity_ms_swift_rlhf.py [--golden rlhf_runs|rlhf_padded] [--types dpo cpo ...] [--workdir /tmp/parity_rlhf]

Exit status 1 when a step differs by more than 1e-4 (relative to the value when it exceeds 1).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = os.path.join(ROOT, "tests", "golden")
TINY = os.path.join(GOLDEN, "rlhf_tiny")
TOLERANCE = 1e-4
KEYS = ("loss", "rewards/margins")
# ms-swift-only flags of the recording: nothing to pass on here
DROP = {"--model_type", "--template", "--check_model", "--torch_dtype", "--dataloader_num_workers", "--eval_strategy",
        "--use_hf", "--lora_dropout"}


def our_flags(recorded: list[str]) -> list[str]:
    flags, i = [], 0
    while i < len(recorded):
        if recorded[i] in DROP:
            i += 2
            continue
        flags += recorded[i : i + 2]
        i += 2
    return flags + ["--dtype", "float32", "--lora_dropout", "0", "--fsdp_size", "1", "--template", "chatml"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", default="rlhf_runs", choices=["rlhf_runs", "rlhf_padded"])
    parser.add_argument("--types", nargs="+", default=None, help="default: every recorded run but rm")
    parser.add_argument("--workdir", default="/tmp/parity_ms_swift_rlhf")
    args = parser.parse_args()
    golden = json.load(open(os.path.join(GOLDEN, f"{args.golden}.json")))
    args.types = args.types or [k for k, v in golden.items() if isinstance(v, dict) and "log" in v and k.split("_")[0] != "rm" and "equal" not in k]
    worst_all, ok = 0.0, True
    for name in args.types:
        run = golden[name]
        out = os.path.join(args.workdir, args.golden, name)
        cmd = [sys.executable, "-m", "swift_jax.rlhf", "--rlhf_type", name.split("_")[0], "--model", os.path.join(TINY, "base"),
               "--adapters", os.path.join(TINY, "adapter"), "--dataset", os.path.join(ROOT, run["data"]),
               "--max_steps", str(run.get("steps", golden["steps"])), "--output_dir", out, *our_flags(golden["flags"]), *run["extra_flags"]]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-3000:])
            return 1
        (log_path,) = sorted(glob.glob(os.path.join(out, "v*", "logging.jsonl")))[-1:]
        ours = {r["step"]: r for r in map(json.loads, open(log_path)) if "loss" in r}
        print(f"\n{name}: step  " + "  ".join(f"{k + ' ms-swift':>22} {'swift_jax':>10} {'|diff|':>8}" for k in KEYS))
        worst = 0.0
        for theirs in run["log"]:
            mine, cells = ours.get(theirs["step"], {}), []
            for key in KEYS:
                if key not in theirs:  # KTO: no margin on a step with examples of one side only
                    cells.append(f"{'-':>22} {'-':>10} {'':>8}")
                    continue
                a, b = theirs[key], mine.get(key, float("nan"))
                diff = abs(a - b) / max(1.0, abs(a))
                worst = max(worst, diff) if diff == diff else float("inf")
                cells.append(f"{a:>22.6f} {b:>10.6f} {diff:>8.1e}")
            print(f"{'':>{len(name)}}  {theirs['step']:>4}  " + "  ".join(cells))
        print(f"{name}: worst |diff| {worst:.1e} over {len(run['log'])} steps ({'OK' if worst <= TOLERANCE else 'MISMATCH'})")
        ok &= worst <= TOLERANCE
        worst_all = max(worst_all, worst)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
