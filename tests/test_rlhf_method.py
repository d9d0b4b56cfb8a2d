"""Preference methods on a tiny model: answer log-probs = transformers', packed = unpacked, the LoRA reference is
the base model (no copy), the full-FT reference is a frozen copy, and a few steps of each method move its rewards."""

from __future__ import annotations

import json
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.rlhf import RLHFArgs, attach_value_head, make_method
from swift_jax.rlhf.preference.data import PairProcessor, pack_pairs, pad_pair
from swift_jax.rlhf.preference.logps import model_pair_stats
from swift_jax.rlhf.preference.precompute import REF_KEY, ReferenceTable
from swift_jax.trainer.step import summarize
from swift_jax.trainer.trainer import _defined
from swift_jax.tuners import adapters_disabled, count_params, load_adapter, loraize
from tiny_models import build_hf_model, save_hf_model
from tokenizers_for_tests import bundled_tokenizer

DATA = "swift_jax/assets/preference/"
MAX_LENGTH = 32


@pytest.fixture(scope="module")
def hf_model():
    return build_hf_model("qwen2", vocab_size=1000, max_position_embeddings=128)


@pytest.fixture(scope="module")
def base_path(hf_model, tmp_path_factory):
    return save_hf_model(hf_model, tmp_path_factory.mktemp("base"))


def samples(rlhf_type: str = "dpo", n: int = 4, file: str = "train.jsonl") -> list[dict]:
    """The first `n` pair samples of a bundled preference file (KTO: KL answers from the previous row)."""
    with open(DATA + file) as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    process = PairProcessor(DataArgs(max_length=MAX_LENGTH), bundled_tokenizer(), rlhf_type)
    return [process((row, f"{file} row {i}", (rows[i - 1], f"{file} row {i - 1}"))) for i, row in enumerate(rows)]


def unpacked(pairs: list[dict]) -> dict:
    rows = [pad_pair(s, 2 * MAX_LENGTH, 0) for s in pairs]
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def packed(pairs: list[dict], length: int) -> dict:
    rows = list(pack_pairs(grain.MapDataset.source(pairs).to_iter_dataset(), length, 0, 4, 0, False))
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def lora_model(path: str, seed: int = 1):
    """The base model with an adapter whose B is random, so that it changes the output."""
    model = swift_jax.load_model(path, dtype="float32")
    loraize(model, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(seed))
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam) and var.shape[-2] == 4:  # B: [rank, out] (scanned: [layers, rank, out])
            var[...] = 0.05 * jax.random.normal(jax.random.key(seed), var.shape)
    return model


def test_answer_logps_equal_transformers(base_path, hf_model):
    pairs = samples()
    graphdef, state = nnx.split(swift_jax.load_model(base_path, dtype="float32"))
    forward = jax.jit(lambda s, b: model_pair_stats(nnx.merge(graphdef, s), b, pairs_per_row=1, chunk_size=16))
    stats = forward(state, unpacked(pairs))
    for i, s in enumerate(pairs):
        for part, ours in ((0, stats.logps.chosen[i]), (1, stats.logps.rejected[i])):
            keep = s["part"] == part
            ids, labels = s["input_ids"][keep], s["labels"][keep]
            with torch.no_grad():
                logits = hf_model(torch.as_tensor(ids[None], dtype=torch.long)).logits[0, :-1].double()
            logp = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.as_tensor(np.maximum(labels[1:], 0))]
            expected = float(logp[torch.as_tensor(labels[1:] != -100)].sum())
            assert abs(float(ours) - expected) < 1e-4, (i, part, float(ours), expected)
    assert int(stats.valid.sum()) == len(pairs)


@pytest.mark.parametrize("rlhf_type,extra", [
    ("dpo", {"loss_type": ["sigmoid", "aot", "ipo"], "ld_alpha": 0.5, "rpo_alpha": 0.1}),  # batch sorts, lengths
    ("kto", {}),  # KL over the batch
    ("rm", {"center_rewards_coefficient": 0.01}),  # last-token values
])
def test_packed_equals_unpacked(base_path, rlhf_type, extra):
    """Two pairs per packed row give the same loss and metrics as one pair per padded row (CPO/ORPO/SimPO read the
    same per-answer sums as DPO)."""
    file = "kto.jsonl" if rlhf_type == "kto" else "train.jsonl"
    pairs = samples(rlhf_type, 4, file)
    model = lora_model(base_path)
    if rlhf_type == "rm":
        attach_value_head(model)
    method = make_method(RLHFArgs(rlhf_type=rlhf_type, **extra))
    graphdef, state = nnx.split(model)

    def loss(pairs_per_row, batch):
        method.pairs_per_row = pairs_per_row
        return jax.jit(lambda s, b: method.loss(nnx.merge(graphdef, s), b, None))(state, batch)

    plain = loss(1, unpacked(pairs))
    batch = packed(pairs, 4 * MAX_LENGTH)
    assert batch["input_ids"].shape[0] == 2  # the four pairs share two rows
    pack = loss(16, batch)
    assert float(pack.count) == float(plain.count) == 4
    np.testing.assert_allclose(float(pack.loss_sum), float(plain.loss_sum), rtol=1e-5, atol=1e-6)
    for key, (total, count) in plain.metrics.items():
        np.testing.assert_allclose(float(pack.metrics[key][0]), float(total), rtol=1e-4, atol=1e-5, err_msg=key)
        assert float(pack.metrics[key][1]) == float(count), key


@pytest.mark.parametrize("rlhf_type", ["dpo", "kto"])
def test_precomputed_reference_values_equal_the_reference_forward_in_packed_rows(base_path, rlhf_type):
    """A first pass's values, stored by pair id and put back on packed rows, give the loss of a reference forward."""
    file = "kto.jsonl" if rlhf_type == "kto" else "train.jsonl"
    pairs = [{**p, "pair_id": np.full(len(p["input_ids"]), 10 + i, np.int32)} for i, p in enumerate(samples(rlhf_type, 4, file))]
    rows = list(pack_pairs(grain.MapDataset.source(pairs).to_iter_dataset(), 4 * MAX_LENGTH, 0, 4, 0, False))
    host = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    graphdef, state = nnx.split(lora_model(base_path))

    @jax.jit
    def reference(state, batch):
        with adapters_disabled():
            stats = model_pair_stats(nnx.merge(graphdef, state), batch, pairs_per_row=16)
        return stats.logps.chosen, stats.logps.rejected

    table = ReferenceTable.compute(lambda b: tuple(map(np.asarray, reference(state, b))), [host], 14, 16)
    assert np.isnan(table.values[:10]).all() and not np.isnan(table.values[10:]).any()
    live, pre = (make_method(RLHFArgs(rlhf_type=rlhf_type, precompute_ref_log_probs=p)) for p in (False, True))
    assert REF_KEY in pre.batch_keys and REF_KEY not in live.batch_keys
    live.pairs_per_row = pre.pairs_per_row = 16
    a, b = (jax.jit(lambda s, x, m=m: m.loss(nnx.merge(graphdef, s), x, None))(state, batch)
            for m, batch in ((live, host), (pre, table.attach(host))))
    np.testing.assert_allclose(float(b.loss_sum), float(a.loss_sum), rtol=1e-6)
    for key, (total, _) in a.metrics.items():
        np.testing.assert_allclose(float(b.metrics[key][0]), float(total), rtol=1e-5, atol=1e-7, err_msg=key)


def test_kto_logs_margins_as_trl_and_leaves_out_a_side_without_examples(base_path):
    method = make_method(RLHFArgs(rlhf_type="kto"))
    graphdef, state = nnx.split(lora_model(base_path))
    pairs = samples("kto", 4, "kto.jsonl")
    loss = jax.jit(lambda s, b: summarize(method.loss(nnx.merge(graphdef, s), b, None), method))
    both = loss(state, unpacked(pairs))
    assert float(both["rewards/margins"]) == pytest.approx(float(both["rewards/chosen"] - both["rewards/rejected"]), abs=1e-7)
    desirable = [p for p in pairs if p["pair_value"][0] > 0.5]
    assert 0 < len(desirable) < len(pairs)
    one_side = _defined(loss(state, unpacked(desirable)))
    assert "rewards/chosen" in one_side and "rewards/rejected" not in one_side and "rewards/margins" not in one_side


def test_lora_reference_is_the_base_model_without_a_copy(base_path):
    pairs = samples()
    batch = unpacked(pairs)
    base = swift_jax.load_model(base_path, dtype="float32")
    model = lora_model(base_path)
    params_before = count_params(model, nnx.Param)

    def logps(module, adapters_on: bool = True):
        graphdef, state = nnx.split(module)

        @jax.jit
        def forward(state, batch):
            m = nnx.merge(graphdef, state)
            if adapters_on:
                return model_pair_stats(m, batch, pairs_per_row=1).logps
            with adapters_disabled():
                return model_pair_stats(m, batch, pairs_per_row=1).logps

        return forward(state, batch)

    expected, got = logps(base), logps(model, adapters_on=False)
    np.testing.assert_allclose(got.chosen, expected.chosen, atol=1e-5)
    np.testing.assert_allclose(got.rejected, expected.rejected, atol=1e-5)
    policy = logps(model)  # the same traced code with the adapters on
    assert float(jnp.abs(policy.chosen - expected.chosen).max()) > 1e-3
    assert count_params(model, nnx.Param) == params_before
    method = make_method(RLHFArgs(), model_path=base_path)
    assert method.reference_mode == "adapters_off" and method.extra_state(types.SimpleNamespace(mesh=None)) is None


def test_full_fine_tuning_reference_is_a_frozen_copy(base_path):
    """At step 0 the policy equals its reference: DPO's sigmoid loss is log 2 and every reward 0."""
    method = make_method(RLHFArgs(), model_path=base_path, dtype="float32", tuner_type="full")
    assert method.reference_mode == "frozen"
    extra = method.extra_state(types.SimpleNamespace(mesh=None))
    model = swift_jax.load_model(base_path, dtype="float32")
    out = method.loss(model, unpacked(samples()), extra)
    assert float(out.loss_sum / out.count) == pytest.approx(np.log(2), abs=1e-6)
    assert float(out.metrics["rewards/margins"][0]) == pytest.approx(0.0, abs=1e-6)


def _train(method, model, batch, steps: int, lr: float):
    graphdef, params, rest = nnx.split(model, nnx.LoRAParam, ...)
    opt = optax.adam(lr)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            out = method.loss(nnx.merge(graphdef, p, rest), batch, None)
            return out.loss_sum / out.count, {k: s / c for k, (s, c) in out.metrics.items()}

        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, metrics

    opt_state, history = opt.init(params), []
    for _ in range(steps):
        params, opt_state, value, metrics = step(params, opt_state)
        history.append({"loss": float(value), **{k: float(v) for k, v in metrics.items()}})
    return history


@pytest.mark.parametrize("rlhf_type", ["dpo", "simpo", "orpo", "kto", "rm"])
def test_a_few_steps_move_the_rewards(base_path, rlhf_type):
    file = "kto.jsonl" if rlhf_type == "kto" else "train.jsonl"
    batch = unpacked(samples(rlhf_type, 4, file))
    model = swift_jax.load_model(base_path, dtype="float32")
    loraize(model, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0))
    if rlhf_type == "rm":
        attach_value_head(model)
    history = _train(make_method(RLHFArgs(rlhf_type=rlhf_type)), model, batch, steps=10, lr=2e-2)
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"], history
    if rlhf_type == "kto":
        assert last["rewards/chosen"] > first["rewards/chosen"] and last["rewards/rejected"] < first["rewards/rejected"]
    else:
        assert last["rewards/margins"] > first["rewards/margins"] + 1e-3, history
    if rlhf_type == "dpo":
        assert first["loss"] == pytest.approx(np.log(2), abs=1e-6)  # LoRA's B = 0: policy = reference at step 0


def test_reward_model_lora_saves_a_peft_seq_cls_adapter_that_transformers_scores_alike(base_path, tmp_path):
    import peft
    import transformers

    from swift_jax.hf.peft import save_peft_adapter

    model = lora_model(base_path)
    attach_value_head(model)
    model.score.kernel[...] = 0.1 * jax.random.normal(jax.random.key(3), model.score.kernel.shape)
    save_peft_adapter(model, str(tmp_path), base_model_name_or_path=base_path)
    config = json.load(open(tmp_path / "adapter_config.json"))
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
    hf = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    ids = samples()[0]["input_ids"][:20]
    with torch.no_grad():
        expected = float(hf(torch.as_tensor(ids[None], dtype=torch.long)).logits[0, 0])
    ours = float(model.score(model.hidden_states(jnp.asarray(ids[None])))[0, -1])
    assert abs(ours - expected) < 1e-4, (ours, expected)


def test_reward_model_adapter_reads_back_and_exports_as_sequence_classification(base_path, tmp_path):
    """`--adapters` reads a SEQ_CLS adapter back (value head included), and a merged export is an HF
    `*ForSequenceClassification` checkpoint that transformers scores as we do."""
    import transformers

    from swift_jax.export import main as export_main
    from swift_jax.hf.peft import save_peft_adapter
    from swift_jax.tuners import load_adapter

    model = lora_model(base_path)
    attach_value_head(model)
    model.score.kernel[...] = 0.1 * jax.random.normal(jax.random.key(4), model.score.kernel.shape)
    adapter = tmp_path / "adapter"
    save_peft_adapter(model, str(adapter), base_model_name_or_path=base_path)
    ids = samples()[0]["input_ids"][:20]
    ours = float(model.score(model.hidden_states(jnp.asarray(ids[None])))[0, -1])

    again = load_adapter(swift_jax.load_model(base_path, dtype="float32"), str(adapter))
    assert float(again.score(again.hidden_states(jnp.asarray(ids[None])))[0, -1]) == pytest.approx(ours, abs=1e-6)

    merged = tmp_path / "merged"
    export_main(["--adapters", str(adapter), "--merge_lora", "true", "--output_dir", str(merged)])
    config = json.load(open(merged / "config.json"))
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and len(config["id2label"]) == 1
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    with torch.no_grad():
        theirs = float(hf(torch.as_tensor(ids[None], dtype=torch.long)).logits[0, 0])
    assert abs(theirs - ours) < 1e-4, (theirs, ours)


def test_ref_adapters_make_the_reference_the_sft_adapter():
    """ms-swift's recipe after SFT: `--adapters sft --ref_adapters sft`: the policy starts equal to its reference
    (a frozen copy with the adapter merged), so DPO's first loss is log 2, unlike the adapters-off reference."""
    import os

    tiny = os.path.join(os.path.dirname(__file__), "golden", "rlhf_tiny")
    base, adapter = os.path.join(tiny, "base"), os.path.join(tiny, "adapter")
    batch = unpacked(samples())
    policy = load_adapter(swift_jax.load_model(base, dtype="float32"), adapter)
    with_ref = make_method(RLHFArgs(ref_adapters=[adapter]), model_path=base, dtype="float32")
    assert with_ref.reference_mode == "frozen"
    out = with_ref.loss(policy, batch, with_ref.extra_state(types.SimpleNamespace(mesh=None)))
    assert float(out.loss_sum / out.count) == pytest.approx(np.log(2), abs=1e-5)
    adapters_off = make_method(RLHFArgs(), model_path=base)
    assert float(adapters_off.loss(policy, batch, None).metrics["rewards/margins"][0]) != 0.0
