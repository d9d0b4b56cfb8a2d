"""First-step losses and metrics = ms-swift's, on the same tiny model, LoRA start and data.

`scripts/record_ms_swift_rlhf.py runs` ran `swift rlhf --rlhf_type T` (ms-swift 4.6, CPU, float32) from the tiny
Qwen2 + PEFT adapter committed in tests/golden/rlhf_tiny/ on the bundled preference data (batch 2, no shuffling
flags), and recorded every step's logged values and its first batch in tests/golden/rlhf_runs.json. Step 1 is
logged before any update, so our method's loss on the same batch at the same parameters must equal it. (ms-swift's
CPO/ORPO/KTO trainers draw batches at random despite --train_dataloader_shuffle false, hence the recorded batch;
for DPO, which keeps file order, our own encoding of the first rows is checked to be that batch.)
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.rlhf import RLHFArgs, make_method
from swift_jax.rlhf.preference.data import PairProcessor, pad_pair
from swift_jax.trainer.step import summarize
from swift_jax.tuners import load_adapter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY = os.path.join(HERE, "golden", "rlhf_tiny")
RUNS = json.load(open(os.path.join(HERE, "golden", "rlhf_runs.json")))
TOLERANCE = 1e-4
# name -> (RLHFArgs overrides, metrics compared besides the loss)
CASES = {
    "dpo": ({}, ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen")),
    "dpo_rpo": ({"rpo_alpha": 0.5}, ("rewards/margins", "nll_loss")),
    "dpo_ipo": ({"loss_type": ["ipo"]}, ("rewards/margins",)),
    "simpo": ({"rlhf_type": "simpo"}, ("rewards/chosen", "rewards/margins", "logps/chosen", "nll_loss")),
    "cpo": ({"rlhf_type": "cpo"}, ("rewards/chosen", "rewards/margins", "logps/chosen", "nll_loss")),
    "orpo": ({"rlhf_type": "orpo"}, ("rewards/chosen", "rewards/margins", "logps/chosen", "nll_loss", "log_odds_chosen")),
    "kto": ({"rlhf_type": "kto"}, ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen")),
    "rm": ({"rlhf_type": "rm"}, ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    # rows of one length (no padding in ms-swift's batch): TRL's CPO/ORPO logits/* = the whole-sequence mean (ORPO: but
    # the last position)
    "cpo_equal": ({"rlhf_type": "cpo"}, ("logits/chosen", "logits/rejected", "rewards/margins")),
    "orpo_equal": ({"rlhf_type": "orpo"}, ("logits/chosen", "logits/rejected", "rewards/margins")),
}
LOGITS_TOLERANCE = 1e-5  # relative: the logits/* means are ~3.5e-3 (answer tokens only would be 3% off)


def flag(name: str) -> str:
    flags = RUNS["flags"]
    return flags[flags.index(name) + 1]


def our_first_batch(name: str, rlhf_type: str) -> dict:
    """The first rows of the data file through our encoder (DPO's first batch in ms-swift: file order)."""
    batch_size, max_length = int(flag("--per_device_train_batch_size")), int(flag("--max_length"))
    with open(os.path.join(ROOT, RUNS[name]["data"])) as f:
        rows = [json.loads(line) for _, line in zip(range(batch_size), f)]
    tokenizer = swift_jax.load_tokenizer(os.path.join(TINY, "base"))
    process = PairProcessor(DataArgs(max_length=max_length), tokenizer, rlhf_type)
    return stack([process((row, f"row {i}", (rows[i - 1], f"row {i - 1}"))) for i, row in enumerate(rows)], max_length)


def their_first_batch(first: dict, rlhf_type: str, max_length: int) -> dict:
    """ms-swift's recorded (first) batch as our pair rows of `2 * max_length`: `[chosen..., rejected...]` rows with
    an attention mask (KTO: `completion_*` and `KL_completion_*` tensors and the `label` list)."""
    if rlhf_type == "kto":
        parts = [(first[f"{p}input_ids"], first[f"{p}labels"], first[f"{p}attention_mask"]) for p in ("completion_", "KL_completion_")]
        labels = first["label"]
    else:
        half = len(first["input_ids"]) // 2
        if not isinstance(first.get("labels"), list) or np.ndim(first["labels"]) != 2:  # RM batches: no token labels
            first = {**first, "labels": np.full(np.shape(first["input_ids"]), -100).tolist()}
        parts = [tuple(first[k][a:b] for k in ("input_ids", "labels", "attention_mask")) for a, b in ((0, half), (half, None))]
        labels = first.get("margin") or [0.0] * half  # pair_value: the RM margin (none in this data)
    samples = []
    for i, label in enumerate(labels):  # KTO: desirable; others: margin
        seqs = [(np.asarray(ids[i])[np.asarray(mask[i]) > 0], np.asarray(lab[i])[np.asarray(mask[i]) > 0]) for ids, lab, mask in parts]
        (ci, cl), (ri, rl) = seqs
        samples.append({"input_ids": np.r_[ci, ri], "labels": np.r_[cl, rl], "part": np.r_[0 * ci, 0 * ri + 1],
                        "pos": np.r_[np.arange(len(ci)), np.arange(len(ri))], "pair_value": np.full(len(ci) + len(ri), float(label))})
    return stack(samples, max_length)


def stack(samples: list[dict], max_length: int) -> dict:
    padded = [pad_pair(s, 2 * max_length, 0) for s in samples]
    return {k: np.stack([p[k] for p in padded]) for k in padded[0]}


@pytest.mark.parametrize("name", [n for n in CASES if n in RUNS and "log" in RUNS[n]])
def test_first_step_equals_ms_swift(name):
    overrides, keys = CASES[name]
    method = make_method(RLHFArgs(**overrides))
    model = load_adapter(swift_jax.load_model(os.path.join(TINY, "base"), dtype="float32"), os.path.join(TINY, "adapter"))
    if name == "rm":  # ms-swift's freshly initialised value head, as recorded at step 1
        method.prepare_model(model)
        model.score.kernel[...] = np.asarray(RUNS[name]["first_batch"]["score_weight"], np.float32).T
    graphdef, state = nnx.split(model)
    batch = their_first_batch(RUNS[name]["first_batch"], method.rlhf.rlhf_type, int(flag("--max_length")))
    out = jax.jit(lambda s, b: method.loss(nnx.merge(graphdef, s), b, None))(state, batch)
    theirs = RUNS[name]["log"][0]
    ours = {k: float(v) for k, v in summarize(out, method).items()}  # as the trainer logs them
    for key in ("loss",) + keys:
        bound = LOGITS_TOLERANCE * abs(theirs[key]) if key.startswith("logits/") else TOLERANCE * max(1.0, abs(theirs[key]))
        assert abs(ours[key] - theirs[key]) < bound, (key, ours[key], theirs[key])


def test_our_encoding_is_ms_swifts_first_batch():
    """DPO draws its first batch in file order: our encoder gives ms-swift's tokens and labels."""
    ours, theirs = our_first_batch("dpo", "dpo"), their_first_batch(RUNS["dpo"]["first_batch"], "dpo", int(flag("--max_length")))
    for key in ("input_ids", "labels", "segment_ids", "positions"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
