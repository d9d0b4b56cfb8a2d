"""Padded batches of varied length: the rows of every batch and the first step's values equal ms-swift's.

`scripts/record_ms_swift_rlhf.py padded` ran `swift rlhf --rlhf_type T` (ms-swift 4.6, CPU, float32) from the tiny
Qwen2 + PEFT adapter in tests/golden/rlhf_tiny/ on 16 generated pairs (tests/golden/rlhf_padded/: a system prompt
and one turn, 47-207 tokens per sequence; batch 4, so every batch is padded) for one epoch, and recorded each
step's logged values, its first batch, and which rows each batch held (tests/golden/rlhf_padded.json).

ms-swift's CPO/SimPO, ORPO and RM trainers draw rows in a seeded random order even with
`--train_dataloader_shuffle false`, and KTO shuffles its table before it lends answers to KL examples: with file
order instead, our first steps saw other rows than ms-swift's (the gap of issue 28). Our pipeline now reads the
same rows (`swift_jax.rlhf.preference.sampler_order`), and our loss on ms-swift's first batch gives its logged values.
"""

from __future__ import annotations

import json
import os
import re

import grain
import jax
import numpy as np
import pytest
import torch
from flax import nnx

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.rlhf import RLHFArgs, make_method
from swift_jax.rlhf.preference.sampler_order import EpochPermutation, torch_randperm
from swift_jax.trainer.step import summarize
from swift_jax.tuners import load_adapter
from test_rlhf_msswift import their_first_batch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY = os.path.join(HERE, "golden", "rlhf_tiny")
RUNS = json.load(open(os.path.join(HERE, "golden", "rlhf_padded.json")))
NAMES = [n for n in ("dpo", "dpo_rpo", "simpo", "orpo", "cpo", "kto", "rm") if n in RUNS]
OVERRIDES = {"dpo_rpo": {"rpo_alpha": 1.0}}
# TRL's CPO/ORPO `logits/*` average the whole padded logits tensor, padding positions included (logits of pad tokens
# that attend to their row); ours average the sequences' own positions, equal on unpadded batches (see
# test_rlhf_msswift's *_equal cases) but not here.
SKIP_METRICS = {"simpo": ("logits/chosen", "logits/rejected"), "cpo": ("logits/chosen", "logits/rejected"),
                "orpo": ("logits/chosen", "logits/rejected")}
RELATIVE = 1e-5
FLOAT32_ROUNDING = 16 * 2.0**-24  # relative, of the float32 operands a metric is computed from


def bound(key: str, theirs: dict, beta: float) -> float:
    """How far ours may be from ms-swift's logged value: 1e-5 relative, the 8 logged decimals, and for differences
    of log-probs (rewards, ORPO's log odds) the float32 rounding of their operands (beta * per-sequence log-prob
    sums of hundreds of nats, which TRL and we reduce in different orders)."""
    operands = abs(theirs[key])
    logps = max(abs(theirs.get("logps/chosen", 0.0)), abs(theirs.get("logps/rejected", 0.0)))  # RM: none
    if key.startswith("rewards/") and key != "rewards/accuracies":
        operands = max(operands, beta * logps)
    elif key.startswith("log_odds"):
        operands = max(operands, logps)
    return max(RELATIVE * abs(theirs[key]), FLOAT32_ROUNDING * operands, 1e-8)


def flag(name: str) -> str:
    flags = RUNS["flags"]
    return flags[flags.index(name) + 1]


def test_torch_randperm_is_torchs_and_each_epoch_draws_seed_plus_epoch():
    for n in (1, 2, 16, 513):
        for seed in (0, 42, 43):
            expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
            np.testing.assert_array_equal(torch_randperm(n, seed), expected)
    epochs = EpochPermutation(grain.MapDataset.source(list(range(16))), 42).repeat(2)
    expected = [torch.randperm(16, generator=torch.Generator().manual_seed(s)).tolist() for s in (42, 43)]
    assert [epochs[i] for i in range(32)] == expected[0] + expected[1]  # accelerate's SeedableRandomSampler


def _tag(tokenizer, ids: np.ndarray, pattern: str) -> int:
    return int(re.search(pattern, tokenizer.decode([int(t) for t in ids])).group(1))


@pytest.mark.parametrize("name", NAMES)
def test_every_batch_holds_ms_swifts_rows(name):
    """Our batches of the recorded epoch hold the rows ms-swift's did, in its order (KTO: with the same lender of
    each KL example's answer)."""
    run = RUNS[name]
    method = make_method(RLHFArgs(rlhf_type=name.split("_")[0], **OVERRIDES.get(name, {})))
    tokenizer = swift_jax.load_tokenizer(os.path.join(TINY, "base"))
    data = DataArgs(dataset=[os.path.join(ROOT, run["data"])], max_length=int(flag("--max_length")), dataset_shuffle=False)
    batch_size = int(flag("--per_device_train_batch_size"))
    pipe = method.build_data(data, tokenizer, batch_size=batch_size, eval_batch_size=batch_size, batches_per_step=1,
                             seed=42, shuffle=False, process_index=0, process_count=1)
    iterator = pipe.train_iterator(num_epochs=1)
    for step, theirs in enumerate(run["batches"], 1):
        batch = next(iterator)
        segments = [(ids[seg == 1], ids[seg == 2]) for ids, seg in zip(batch["input_ids"], batch["segment_ids"])]
        assert [_tag(tokenizer, c, r"Q(\d+):") for c, _ in segments] == theirs["rows"], step
        if "kl_rows" in theirs:
            assert [_tag(tokenizer, r, r"\((\d+)[cr]\)") for _, r in segments] == theirs["kl_rows"], step


@pytest.mark.parametrize("name", NAMES)
def test_first_padded_step_equals_ms_swift(name):
    """Before any update, our loss and every logged metric on ms-swift's first (padded) batch are its values."""
    run = RUNS[name]
    method = make_method(RLHFArgs(rlhf_type=name.split("_")[0], **OVERRIDES.get(name, {})))
    model = load_adapter(swift_jax.load_model(os.path.join(TINY, "base"), dtype="float32"), os.path.join(TINY, "adapter"))
    if name == "rm":  # ms-swift's freshly initialised value head, as recorded at step 1
        method.prepare_model(model)
        model.score.kernel[...] = np.asarray(run["first_batch"]["score_weight"], np.float32).T
    graphdef, state = nnx.split(model)
    batch = their_first_batch(run["first_batch"], method.rlhf.rlhf_type, int(flag("--max_length")))
    out = jax.jit(lambda s, b: method.loss(nnx.merge(graphdef, s), b, None))(state, batch)
    ours = {k: float(v) for k, v in summarize(out, method).items()}
    theirs = run["log"][0]
    compared = [k for k in ours if k in theirs and k not in SKIP_METRICS.get(name, ())]
    assert {"loss", "rewards/margins"} <= set(compared)
    for key in compared:
        assert abs(ours[key] - theirs[key]) <= bound(key, theirs, method.rlhf.beta), (key, ours[key], theirs[key])
