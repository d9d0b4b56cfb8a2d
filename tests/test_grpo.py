"""GRPO as a method: rollout -> rewards -> advantages batches, logged metrics, completions.jsonl, a few CPU
steps raising the reward without recompiling, and the memory report that refuses a configuration."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from transformers import AutoTokenizer

import swift_jax
from swift_jax.flops import compile_count
from swift_jax.rewards import ORM, orms
from swift_jax.rlhf.grpo import GRPO
from swift_jax.rlhf.grpo.args import GRPOArgs
from swift_jax.data.errors import DataError
from swift_jax.rlhf.grpo.data import PromptBatches, load_prompt_rows
from swift_jax.rlhf.grpo.memory import DeviceMemoryError, check_memory, program_memory

TOKENIZER = os.path.join(os.path.dirname(swift_jax.__file__), "assets", "tokenizer")
CONFIG = dict(
    model_type="qwen2", vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
)
ROWS = [
    {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "dropped"}], "solution": str(i)}
    for i in range(4)
]


class LowIds(ORM):
    """A dense, learnable reward: the share of completion tokens with an id below 500."""

    def __call__(self, completions, response_token_ids, solution, **kwargs):
        return [float(np.mean(np.asarray(ids) < 500)) if ids else 0.0 for ids in response_token_ids]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(autouse=True)
def low_ids_reward():
    orms["low_ids"] = LowIds
    yield
    del orms["low_ids"]


def _method(tokenizer, **overrides):
    args = GRPOArgs(**{"num_generations": 4, "max_completion_length": 8, "temperature": 1.0, "reward_funcs": ["low_ids"], **overrides})
    return GRPO(args, tokenizer=tokenizer, eos_ids=(tokenizer.convert_tokens_to_ids("<|im_end|>"),), seed=0)


def _model():
    return swift_jax.init_model(CONFIG, dtype="float32", seed=0)


def test_batches_hold_rollouts_advantages_and_metrics(tokenizer, tmp_path):
    method = _method(tokenizer, log_completions=True, reward_funcs=["low_ids", "format"], reward_weights=[1.0, 0.5])
    method.completions_path = str(tmp_path / "completions.jsonl")
    data = PromptBatches(ROWS, tokenizer, num_generations=4, batch_size=4)
    assert data.width == 64 and data.steps_per_epoch == 4
    it = data.batches()
    host = [next(it), next(it)]  # two micro-batches of 4 completions = 2 prompts x 4
    assert (host[0]["prompt_ids"][0] == host[0]["prompt_ids"][3]).all()
    batches = method.make_batches_for(_model(), host, step=1)
    assert len(batches) == 2 and set(batches[0]) == set(method.batch_keys) | {"segment_ids"}
    assert batches[0]["completion_ids"].shape == (4, 8) and batches[0]["ref_logps"].shape == (4, 8)
    placeholder = method.placeholder_batch(4, 64)  # what the memory report compiles ahead: the same program
    assert {k: (v.shape, v.dtype) for k, v in placeholder.items()} == {k: (batches[0][k].shape, batches[0][k].dtype) for k in method.batch_keys}
    adv = np.concatenate([b["advantages"] for b in batches]).reshape(2, 4)
    np.testing.assert_allclose(adv.sum(1), 0, atol=1e-4)  # grpo: centred within each prompt's group
    assert {"reward", "reward_std", "frac_reward_zero_std", "rewards/LowIds/mean", "rewards/Format/mean",
            "completions/mean_length", "completions/clipped_ratio", "rollout_tokens_per_sec"} <= set(method.host_metrics)
    loss = method.loss(_model(), jax.tree.map(jnp.asarray, batches[0]), None)
    assert {"kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"} <= set(loss.metrics)
    assert float(loss.metrics["kl"][0]) == pytest.approx(0.0, abs=1e-6)  # the policy is the reference
    (table,) = [json.loads(line) for line in open(method.completions_path)]
    assert set(table) == {"step", "prompt", "completion", "LowIds", "Format", "advantages", "solution"}
    assert len(table["completion"]) == 8 and "question" in table["prompt"][0] and "dropped" not in table["prompt"][0]


def test_prompt_rows_from_files_keep_extra_columns(tokenizer, tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [{"problem": "1+1?", "solution": "2"}, {"messages": [{"role": "user", "content": "2+2?"}], "solution": "4"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_prompt_rows([str(path)])
    assert [r["solution"] for r in loaded] == ["2", "4"] and loaded[0]["messages"][0]["content"] == "1+1?"
    data = PromptBatches(loaded, tokenizer, num_generations=2, batch_size=2, shuffle=False, process_index=1, process_count=2)
    batch = next(data.batches())  # process 1 of 2 gets the second prompt's group
    assert list(batch["solution"]) == ["4", "4"] and data.steps_per_epoch == 1
    path.write_text(json.dumps({"text": "plain"}) + "\n")
    with pytest.raises(DataError, match="math.jsonl, line 1"):
        load_prompt_rows([str(path)])


def test_dynamic_sampling_resamples_flat_groups(tokenizer):
    method = _method(tokenizer, dynamic_sample=True, reward_funcs=["format"], beta=0.0)  # format: always 0 here
    data = PromptBatches(ROWS, tokenizer, num_generations=4, batch_size=8).batches()
    method.resample_batches = PromptBatches(ROWS, tokenizer, num_generations=4, batch_size=8, seed=1).batches()
    batches = method.make_batches_for(_model(), [next(data)])
    assert method.host_metrics["num_resamples"] == 2  # gave up after max_resample_times=3 inspections
    assert method.host_metrics["frac_reward_zero_std"] == 1.0
    np.testing.assert_array_equal(batches[0]["advantages"], 0.0)


def test_num_iterations_reuses_a_rollout(tokenizer):
    method = _method(tokenizer, num_iterations=2, reward_funcs=["format"], beta=0.0)
    data = PromptBatches(ROWS, tokenizer, num_generations=4, batch_size=8).batches()
    model = _model()
    first = method.make_batches_for(model, [next(data)])
    assert method.make_batches_for(model, [next(data)]) is first  # the second step trains on the same rollout
    third = method.make_batches_for(model, [next(data)])
    assert third is not first and method._rollouts == 2
    assert "old_logps" in method.batch_keys and np.asarray(third[0]["old_logps"]).any()


def _update_step(method, graphdef, optimizer):
    """A minimal jit update on the method's loss (the trainer's step does the same with accumulation)."""

    def step(params, opt_state, batch):
        def loss_fn(p):
            out = method.loss(nnx.merge(graphdef, p), batch, None)
            return out.loss_sum / out.count, out.metrics

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    return jax.jit(step, donate_argnums=(0, 1))


def test_a_few_steps_raise_the_reward_and_compile_once(tokenizer):
    method = _method(tokenizer, beta=0.04, loss_type="dapo", epsilon_high=0.28)
    model = _model()
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(5e-2)
    opt_state = optimizer.init(params)
    update = _update_step(method, graphdef, optimizer)
    data = PromptBatches(ROWS, tokenizer, num_generations=4, batch_size=16).batches()
    rewards, compiles, live_bytes = [], [], []
    for i in range(8):
        compiles.append(compile_count())
        live_bytes.append(sum(a.nbytes for a in jax.live_arrays()))
        (batch,) = method.make_batches_for(nnx.merge(graphdef, params), [next(data)], step=i)
        params, opt_state, loss, metrics = update(params, opt_state, jax.tree.map(jnp.asarray, batch))
        rewards.append(method.host_metrics["reward"])
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.1, rewards  # 0.51 -> 0.66 (seed 0)
    assert compiles[-1] == compiles[2], "rollout or update recompiled after step 2"
    assert live_bytes[-1] == live_bytes[2], "device memory grew after step 2"

    # memory before step 1: both programs' figures, and a refusal naming what to change
    rollout_mem = method.rollout_memory(nnx.merge(graphdef, params), rows=16, width=64)
    update_mem = program_memory("update", update.lower(params, opt_state, jax.tree.map(jnp.asarray, batch)).compile())
    assert rollout_mem.total_bytes > 0 and update_mem.argument_bytes > 0
    report = check_memory([rollout_mem, update_mem], max_device_memory_gib=64)
    assert "rollout:" in report and "update:" in report
    with pytest.raises(DeviceMemoryError, match="max_completion_length") as refused:
        check_memory([rollout_mem, update_mem], max_device_memory_gib=1e-5)
    assert "does not fit" in str(refused.value) and "GiB" in str(refused.value)
