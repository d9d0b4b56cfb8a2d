"""GRPO rollouts: greedy parity with the KV-cache generator, old log-probs equal the training forward's, eos /
truncation, per-sample keys, one compilation per run, live LoRA weights and the adapters-off reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import swift_jax
from swift_jax.flops import compile_count
from swift_jax.generation import GenerationConfig, Generator
from swift_jax.rlhf.grpo.logps import completion_logps
from swift_jax.rlhf.grpo.rollout import SamplingParams, pad_prompts, prompt_length, rollout
from swift_jax.tuners.lora import adapters_disabled, loraize

CONFIG = dict(
    model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
C = 12


@pytest.fixture(scope="module")
def model():
    return swift_jax.init_model(CONFIG, dtype="float32", seed=1)


def _repeat(prompts, g, width=64, max_length=None):
    ids, mask = pad_prompts(prompts, width, max_length)
    return np.repeat(ids, g, 0), np.repeat(mask, g, 0)


def test_prompt_width_and_left_truncation():
    assert prompt_length(3, None) == 64 and prompt_length(65, None) == 128 and prompt_length(300, 100) == 128
    ids, mask = pad_prompts([[1, 2, 3, 4, 5]], 64, max_length=3)
    assert ids[0, -3:].tolist() == [3, 4, 5] and mask.sum() == 3  # the left end goes
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pad_prompts([[]], 64)


def test_greedy_rollout_matches_the_generator(model):
    ids, mask = _repeat(PROMPTS, 2)  # 4 rows, as every test here: one compiled rollout serves them all
    out = rollout(model, ids, mask, jax.random.key(0), max_completion_length=C, sampling=SamplingParams(temperature=1.0, top_k=1))
    want = Generator(model).generate_ids(PROMPTS, GenerationConfig(max_new_tokens=C, eos_token_ids=()))
    assert np.asarray(out.completion_ids).tolist() == [o.token_ids for o in want for _ in range(2)]
    assert np.asarray(out.truncated).all() and np.asarray(out.completion_mask).all()


def test_old_logps_equal_the_training_forward_and_eos_ends_rows(model):
    ids, mask = _repeat(PROMPTS, 2)
    params = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1)
    out = rollout(model, ids, mask, jax.random.key(3), max_completion_length=C, sampling=params, eos_ids=(5, 9))
    tokens, cmask = np.asarray(out.completion_ids), np.asarray(out.completion_mask)
    logps = completion_logps(model, jnp.asarray(ids), jnp.asarray(mask), out.completion_ids, 0.7, chunk_size=5)
    np.testing.assert_allclose(np.where(cmask, logps, 0), out.old_logps, atol=1e-5)
    for row, truncated in zip(range(len(tokens)), np.asarray(out.truncated)):
        n = cmask[row].sum()
        ends = np.isin(tokens[row, :n], (5, 9))
        assert cmask[row, :n].all() and not cmask[row, n:].any()
        assert truncated == (not ends.any()) and (truncated or (ends[-1] and not ends[:-1].any()))
        assert (tokens[row, n:] == 5).all()  # padded with the first eos after the end
    assert not np.asarray(out.truncated).all()  # some rows ended at an eos
    # per-sample keys: the repeats of one prompt sample different completions
    assert tuple(tokens[0]) != tuple(tokens[1]) or tuple(tokens[2]) != tuple(tokens[3])


def test_compiles_once_and_reads_live_lora_weights(model):
    base_ids, base_mask = _repeat(PROMPTS, 2)
    base_logps = completion_logps(model, jnp.asarray(base_ids), jnp.asarray(base_mask), jnp.ones((4, C), jnp.int32), 1.0)
    lora = loraize(nnx.clone(model), rank=2, alpha=4.0, dropout=0.0, rngs=nnx.Rngs(0))
    ids, mask = _repeat(PROMPTS, 2)
    compile_count()  # start counting
    rollout(lora, ids, mask, jax.random.key(0), max_completion_length=C)
    for _, linear in [(p, m) for p, m in nnx.iter_graph(lora) if getattr(m, "lora", None) is not None]:
        linear.lora.lora_b[...] = 0.5 * jnp.ones_like(linear.lora.lora_b[...])  # the adapters train
    before = compile_count()
    other_ids, other_mask = _repeat([[7, 7], [1, 2, 3, 4, 5, 6]], 2)  # new prompts, new settings: same program
    out = rollout(lora, other_ids, other_mask, jax.random.key(1), max_completion_length=C, sampling=SamplingParams(temperature=0.5, top_k=5))
    assert compile_count() == before
    live = completion_logps(lora, jnp.asarray(other_ids), jnp.asarray(other_mask), out.completion_ids, 0.5)
    np.testing.assert_allclose(np.where(out.completion_mask, live, 0), out.old_logps, atol=1e-5)
    with adapters_disabled():  # the reference: the base model, exactly
        ref = completion_logps(lora, jnp.asarray(base_ids), jnp.asarray(base_mask), jnp.ones((4, C), jnp.int32), 1.0)
    np.testing.assert_allclose(ref, base_logps, atol=1e-6)
    with_adapters = completion_logps(lora, jnp.asarray(base_ids), jnp.asarray(base_mask), jnp.ones((4, C), jnp.int32), 1.0)
    assert np.abs(np.asarray(with_adapters) - np.asarray(base_logps)).max() > 1e-3  # restored on exit
