"""A step's rows do not depend on how many processes a run spans: the host batches of two processes together hold
the rows of one process's batch (packed or not, streamed or not, SFT or preference pairs), and a host's stream
resumes from its checkpointed state."""

import json
import os

import numpy as np
import pytest
from tokenizers_for_tests import bundled_tokenizer

from swift_jax.data import DataArgs, build_data
from swift_jax.rlhf.data import build_preference_data

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ASSETS = os.path.join(ROOT, "swift_jax", "assets")
SFT = os.path.join(ASSETS, "quickstart", "train.jsonl") + "#120"
PAIRS = os.path.join(ASSETS, "preference", "{}.jsonl")


def pipelines(kind, process_count, batch_size, **kw):
    """The pipelines of every process of a run of `process_count` processes, `batch_size` rows each."""
    tok = bundled_tokenizer()
    if kind == "sft":
        args = DataArgs(dataset=[SFT], max_length=64, **kw)
        return [build_data(args, tok, batch_size=batch_size, seed=3, process_index=p, process_count=process_count)
                for p in range(process_count)]
    args = DataArgs(dataset=[PAIRS.format("kto" if kind == "kto" else "train") + "#96"], max_length=96, **kw)
    return [build_preference_data(args, tok, kind, batch_size=batch_size, seed=3, process_index=p,
                                  process_count=process_count) for p in range(process_count)]


CASES = {
    "sft_packed": ("sft", {"packing": True}),
    "sft_streamed": ("sft", {"streaming": True, "shuffle_buffer_size": 8}),
    "sft_streamed_packed": ("sft", {"streaming": True, "packing": True, "shuffle_buffer_size": 8}),
    "dpo_packed": ("dpo", {"packing": True}),
    "dpo_streamed_packed": ("dpo", {"streaming": True, "packing": True, "shuffle_buffer_size": 8}),
    "kto_streamed": ("kto", {"streaming": True, "shuffle_buffer_size": 8}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_batch_the_rows_of_one(case):
    kind, kw = CASES[case]
    (one,) = pipelines(kind, 1, 4, **kw)
    two = pipelines(kind, 2, 2, **kw)
    single = one.train_iterator()
    hosts = [p.train_iterator() for p in two]
    for _ in range(6):
        whole, parts = next(single), [next(h) for h in hosts]
        for key in whole:
            if kw.get("packing"):  # host p holds rows [2p, 2p + 2) of the global batch
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=key)
            else:  # host p holds rows p, p + 2 of the global order
                np.testing.assert_array_equal(parts[0][key], whole[key][0::2], err_msg=key)
                np.testing.assert_array_equal(parts[1][key], whole[key][1::2], err_msg=key)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_host_of_a_packed_run_resumes_its_stream_from_process_0s_state(streaming):
    """A checkpoint holds process 0's iterator state (orbax writes JSON items from the primary host only); every
    process of a packed run reads the same stream, so process 1 resumes its own rows from it."""
    hosts = [p.train_iterator() for p in pipelines("sft", 2, 2, packing=True, streaming=streaming)]
    for _ in range(3):
        for it in hosts:
            next(it)
    state = json.loads(json.dumps(hosts[0].get_state()))
    assert state == json.loads(json.dumps(hosts[1].get_state()))
    want = [next(hosts[1]) for _ in range(8)]
    again = pipelines("sft", 2, 2, packing=True, streaming=streaming)[1].train_iterator()
    again.set_state(state)
    for w in want:
        got = next(again)
        for key in w:
            np.testing.assert_array_equal(got[key], w[key])
