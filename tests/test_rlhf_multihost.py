"""--precompute_ref_log_probs on several processes: two `python -m swift_jax.rlhf` processes on loopback (2 CPU
devices each, gloo, FSDP over all 4) train DPO LoRA on the tiny golden model. Each process runs the reference over
its own share of the rows (9 rows: shares of 5 and 4 pairs, 3 and 2 batches of 2, so one process feeds an empty
batch while the other finishes), the tables are gathered, and the run logs what the run with a reference forward
in each step logs. A streamed run (reference values computed batch by batch) logs the same too.
"""

from __future__ import annotations

import glob
import json
import os

from test_multihost import train_two_processes
from test_rlhf_precompute import KEYS, ROOT, RUNS, TINY, recorded_flags

STEPS = 2
FLAGS = ["--rlhf_type", "dpo", "--model", os.path.join(TINY, "base"), "--adapters", os.path.join(TINY, "adapter"),
         *recorded_flags(), "--dtype", "float32", "--template", "chatml", "--per_device_train_batch_size", "1",
         "--fsdp_size", "4", "--max_steps", str(STEPS), "--save_steps", "100000"]


def run(out, data: str, *extra: str) -> dict[int, dict]:
    """A 2-process run's logged training steps by step (both processes exit 0; they agree on one run folder)."""
    train_two_processes("--dataset", data, "--output_dir", str(out), *extra, module="swift_jax.rlhf", base=FLAGS)
    (log,) = glob.glob(os.path.join(out, "*", "logging.jsonl"))
    with open(log) as f:
        return {r["step"]: r for r in map(json.loads, f) if "rewards/margins" in r}


def test_precomputed_reference_on_two_processes_logs_what_a_reference_forward_logs(tmp_path):
    data = tmp_path / "pairs.jsonl"
    with open(os.path.join(ROOT, RUNS["dpo"]["data"])) as f:
        data.write_text("".join(line for _, line in zip(range(9), f)))
    expected = run(tmp_path / "forward", str(data))
    assert sorted(expected) == list(range(1, STEPS + 1))
    for name, extra in {"precomputed": ("--precompute_ref_log_probs", "true"),
                        "streamed": ("--precompute_ref_log_probs", "true", "--streaming", "true")}.items():
        got = run(tmp_path / name, str(data), *extra)
        assert sorted(got) == sorted(expected), name
        for step, record in got.items():
            for key in KEYS:
                a, b = record[key], expected[step][key]
                assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (name, step, key, a, b)
