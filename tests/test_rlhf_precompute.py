"""--precompute_ref_log_probs, bco_pair's running mean and streamed pairs, in runs of the tiny golden model.

The baseline is ms-swift's recorded `dpo --loss_type bco_pair` run (tests/golden/rlhf_runs.json `dpo_bco`: the
tiny Qwen2 + fixed LoRA start, batch 2, file order): its first steps must follow ms-swift's curve, which centres
bco_pair on a running mean of rewards across steps. Runs with precomputed reference log-probs (in memory, resumed
from a checkpoint, or streamed) must log the same numbers as the run with a reference forward in each step.
"""

from __future__ import annotations

import glob
import json
import os

import pytest
from swift_jax.rlhf.__main__ import run_command

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY = os.path.join(HERE, "golden", "rlhf_tiny")
RUNS = json.load(open(os.path.join(HERE, "golden", "rlhf_runs.json")))
STEPS = 4
KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
# ms-swift-only flags of the recording, and ours for one batch of 2 rows on the 8 test devices (tensor and
# sequence axes split the model and the rows, not the batch)
DROP = {"--model_type", "--template", "--check_model", "--torch_dtype", "--dataloader_num_workers", "--eval_strategy",
        "--use_hf", "--lora_dropout", "--save_steps"}
OURS = ["--dtype", "float32", "--lora_dropout", "0", "--template", "chatml", "--fsdp_size", "1",
        "--tensor_parallel_size", "2", "--sequence_parallel_size", "4", "--save_steps", "2", "--report_to", "none"]


def recorded_flags() -> list[str]:
    flags, recorded = [], RUNS["flags"]
    for i in range(0, len(recorded), 2):
        if recorded[i] not in DROP:
            flags += recorded[i : i + 2]
    return flags


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """The recorded run's first rows (its first STEPS batches, in file order), so a first pass is short."""
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(os.path.join(ROOT, RUNS["dpo_bco"]["data"])) as f:
        path.write_text("".join(line for _, line in zip(range(4 * STEPS), f)))
    return str(path)


def run(out, data: str, *extra: str) -> list[dict]:
    """`swift rlhf --loss_type bco_pair` as recorded, for STEPS steps; the logged training steps."""
    final = run_command(["--rlhf_type", "dpo", "--loss_type", "bco_pair", "--model", os.path.join(TINY, "base"),
                         "--adapters", os.path.join(TINY, "adapter"), "--dataset", data,
                         "--max_steps", str(STEPS), "--output_dir", str(out), *recorded_flags(), *OURS, *extra])
    with open(os.path.join(final["run_dir"], "logging.jsonl")) as f:
        return [r for r in map(json.loads, f) if "rewards/margins" in r]


def assert_same(ours: list[dict], theirs: list[dict], tolerance: float = 1e-6) -> None:
    theirs = {r["step"]: r for r in theirs}
    assert ours
    for record in ours:
        for key in KEYS:
            a, b = record[key], theirs[record["step"]][key]
            assert abs(a - b) <= tolerance * max(1.0, abs(b)), (record["step"], key, a, b)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("baseline")
    return out, run(out, data)


def test_bco_pair_centres_on_ms_swifts_running_mean_of_rewards(baseline):
    _, log = baseline
    golden = [r for r in RUNS["dpo_bco"]["log"] if r["step"] <= STEPS]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    for ours, theirs in zip(log, golden):  # ms-swift: step 2 on centres on the mean of the steps' batch means
        for key in ("loss", "rewards/margins"):
            assert abs(ours[key] - theirs[key]) < 1e-5, (ours["step"], key, ours[key], theirs[key])


def test_precomputed_reference_equals_a_reference_forward_in_each_step(baseline, data, tmp_path):
    assert_same(run(tmp_path, data, "--precompute_ref_log_probs", "true"), baseline[1])


def test_resume_recomputes_the_reference_and_restores_the_running_mean(baseline, data, tmp_path):
    (checkpoint,) = glob.glob(os.path.join(str(baseline[0]), "v*", "checkpoint-2"))
    log = run(tmp_path, data, "--precompute_ref_log_probs", "true", "--resume_from_checkpoint", checkpoint)
    assert [r["step"] for r in log] == [3, 4]
    assert_same(log, baseline[1])


def test_streamed_pairs_equal_loaded_ones_with_the_reference_computed_per_batch(baseline, data, tmp_path):
    assert_same(run(tmp_path, data, "--streaming", "true", "--precompute_ref_log_probs", "true"), baseline[1])
