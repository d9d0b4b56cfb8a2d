"""--precompute_ref_log_probs on several processes: two `python -m swift_jax.rlhf` processes on loopback (2 CPU
devices each, gloo, FSDP over all 4) train DPO LoRA on the tiny golden model. Each process runs the reference over
its own share of the rows (9 rows: shares of 5 and 4 pairs, 3 and 2 batches of 2, so one process feeds an empty
batch while the other finishes), the tables are gathered (step 3 starts the second epoch, where process 0 trains
on pair 1 of process 1's share), and the run logs what a run with a reference forward in each step logs: here the same job in this process (4 rows a step over FSDP 4 x tensor 2; the two processes' rows
of a step are the same 4 pairs, so every logged mean is the same).
"""

from __future__ import annotations

import glob
import json
import os

from swift_jax.rlhf.__main__ import run_command
from test_multihost import train_two_processes
from test_rlhf_precompute import KEYS, ROOT, RUNS, TINY, recorded_flags

STEPS = 3
FLAGS = ["--rlhf_type", "dpo", "--model", os.path.join(TINY, "base"), "--adapters", os.path.join(TINY, "adapter"),
         *recorded_flags(), "--dtype", "float32", "--template", "chatml", "--per_device_train_batch_size", "1",
         "--fsdp_size", "4", "--max_steps", str(STEPS), "--save_steps", "100000"]


def logged_steps(out) -> dict[int, dict]:
    (log,) = glob.glob(os.path.join(out, "*", "logging.jsonl"))  # one run folder (both processes agree on it)
    with open(log) as f:
        return {r["step"]: r for r in map(json.loads, f) if "rewards/margins" in r}


def test_precomputed_reference_on_two_processes_logs_what_a_reference_forward_logs(tmp_path):
    data = tmp_path / "pairs.jsonl"
    with open(os.path.join(ROOT, RUNS["dpo"]["data"])) as f:
        data.write_text("".join(line for _, line in zip(range(9), f)))
    run_command([*FLAGS, "--tensor_parallel_size", "2", "--dataset", str(data), "--output_dir", str(tmp_path / "forward")])
    expected = logged_steps(tmp_path / "forward")
    assert sorted(expected) == list(range(1, STEPS + 1))

    train_two_processes("--dataset", str(data), "--output_dir", str(tmp_path / "two"), "--precompute_ref_log_probs",
                        "true", module="swift_jax.rlhf", base=FLAGS)
    got = logged_steps(tmp_path / "two")
    assert sorted(got) == sorted(expected)
    for step, record in got.items():
        for key in KEYS:
            a, b = record[key], expected[step][key]
            assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (step, key, a, b)
