"""First-step losses and metrics = ms-swift's, on the same tiny model, LoRA start and data.

`scripts/record_ms_swift_rlhf.py runs` ran `swift rlhf --rlhf_type T` (ms-swift 4.6, CPU, float32) from the tiny
Qwen2 + PEFT adapter committed in tests/golden/rlhf_tiny/ on the bundled preference data, batch 2 in file
order, and recorded every step's logged values in tests/golden/rlhf_runs.json. Step 1 is logged before any
update, so our method's loss on the same first batch at the same parameters must equal it.
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
from swift_jax.rlhf.data import PairProcessor, pad_pair
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
    "kto": ({"rlhf_type": "kto"}, ("kl", "rewards/chosen", "logps/chosen")),
}


def flag(name: str) -> str:
    flags = RUNS["flags"]
    return flags[flags.index(name) + 1]


def first_batch(name: str, rlhf_type: str) -> dict:
    """ms-swift's first batch: the first rows in file order (KTO: after its seeded shuffle, KL answers borrowed
    within groups of the batch size, as ms-swift's KTOPreprocessor)."""
    batch_size, max_length = int(flag("--per_device_train_batch_size")), int(flag("--max_length"))
    with open(os.path.join(ROOT, RUNS[name]["data"])) as f:
        rows = [json.loads(line) for line in f]
    if rlhf_type == "kto":  # datasets' Dataset.shuffle(seed) order, then the KL shift inside the first group
        order = np.random.default_rng(int(flag("--seed"))).permutation(len(rows))[:batch_size]
        rows = [rows[i] for i in order]
    rows = rows[:batch_size]
    process = PairProcessor(DataArgs(max_length=max_length), swift_jax.load_tokenizer(os.path.join(TINY, "base")),
                            rlhf_type)
    samples = [process((row, f"row {i}", rows[i - 1])) for i, row in enumerate(rows)]
    padded = [pad_pair(s, 2 * max_length, 0) for s in samples]
    return {k: np.stack([p[k] for p in padded]) for k in padded[0]}


@pytest.mark.parametrize("name", [n for n in CASES if n in RUNS and "log" in RUNS[n]])
def test_first_step_equals_ms_swift(name):
    overrides, keys = CASES[name]
    method = make_method(RLHFArgs(**overrides))
    model = load_adapter(swift_jax.load_model(os.path.join(TINY, "base"), dtype="float32"), os.path.join(TINY, "adapter"))
    graphdef, state = nnx.split(model)
    batch = first_batch(name, method.rlhf.rlhf_type)
    out = jax.jit(lambda s, b: method.loss(nnx.merge(graphdef, s), b, None))(state, batch)
    theirs = RUNS[name]["log"][0]
    ours = {"loss": float(out.loss_sum / out.count), **{k: float(s / c) for k, (s, c) in out.metrics.items()}}
    for key in ("loss",) + keys:
        assert abs(ours[key] - theirs[key]) < TOLERANCE * max(1.0, abs(theirs[key])), (key, sorted(ours.items()), sorted(theirs.items()))
