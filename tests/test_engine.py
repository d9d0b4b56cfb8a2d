"""The continuous-batching engine: per-request parity with transformers whatever else runs, seeded samples,
shared prefills, chunked prefill, per-row sampling settings, log-probs, cancellation and the queue bound."""

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import MinPLogitsWarper

import jax
import jax.numpy as jnp
import swift_jax
from swift_jax.engine import Engine, GenerationConfig, QueueFull
from swift_jax.engine.sampler import RowSampling, filter_min_p, select
from tiny_models import build_hf_model, save_hf_model

GREEDY = GenerationConfig(max_new_tokens=12, eos_token_ids=())


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = build_hf_model("llama", seed=1)
    return hf, swift_jax.load_model(save_hf_model(hf, tmp_path_factory.mktemp("llama")))


def _prompt(seed, n):
    return np.random.RandomState(seed).randint(1, 128, n).tolist()


def _hf_alone(hf, prompt, max_new_tokens=12, **kw):
    """transformers' greedy generate on one unpadded prompt: the new tokens, and their raw logits."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
                          eos_token_id=None, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences[0, len(prompt):].tolist(), torch.stack(out.logits)[:, 0].numpy()


def test_requests_joining_mid_decode_match_transformers_alone(llama):
    hf, model = llama
    engine = Engine(model, max_num_seqs=4, max_model_len=48)
    first, late, short = _prompt(0, 9), _prompt(1, 17), _prompt(2, 3)
    hot = GenerationConfig(max_new_tokens=10, temperature=1.5, top_p=0.9, seed=7, eos_token_ids=())
    a = engine.submit(first, GREEDY)
    b = engine.submit(short, hot)
    engine.step()  # a and b decode a few tokens before the others arrive
    assert 0 < len(a.samples[0].tokens) < 12
    c = engine.submit(late, GenerationConfig(max_new_tokens=7, eos_token_ids=()))
    d = engine.submit(short, GenerationConfig(max_new_tokens=5, repetition_penalty=1.4, eos_token_ids=()))
    engine.run([a, b, c, d])
    assert a.outputs[0].token_ids == _hf_alone(hf, first)[0]
    assert c.outputs[0].token_ids == _hf_alone(hf, late, 7)[0]
    assert d.outputs[0].token_ids == _hf_alone(hf, short, 5, repetition_penalty=1.4)[0]
    assert engine.free_slots == 4
    # the sampled request depends on its seed only, not on its neighbours
    alone = Engine(model, max_num_seqs=1, max_model_len=48).generate([short], hot)[0][0]
    assert b.outputs[0].token_ids == alone.token_ids and len(alone.token_ids) == 10
    other = Engine(model, max_num_seqs=2, max_model_len=48).generate([short], GenerationConfig(**{**hot.__dict__, "seed": 8}))
    assert other[0][0].token_ids != alone.token_ids


def test_n_samples_share_one_prefill_and_differ(llama):
    _, model = llama
    prompt = _prompt(3, 21)
    engine = Engine(model, max_num_seqs=4, max_model_len=48)
    cfg = GenerationConfig(max_new_tokens=8, temperature=2.0, seed=3, n=4, eos_token_ids=())
    samples = engine.generate([prompt], cfg)[0]
    assert engine.stats["prefill_calls"] == 1 and engine.stats["prefill_tokens"] == len(prompt) - 1
    assert len({tuple(s.token_ids) for s in samples}) == 4
    again = Engine(model, max_num_seqs=4, max_model_len=48).generate([prompt], cfg)[0]
    assert [s.token_ids for s in again] == [s.token_ids for s in samples]


def test_long_prompts_prefill_in_chunks(llama):
    hf, model = llama
    prompt = _prompt(4, 30)
    engine = Engine(model, max_num_seqs=2, max_model_len=48, prefill_chunk=8)
    out = engine.generate([prompt], GREEDY)[0][0]
    assert engine.stats["prefill_calls"] == 4  # 29 prompt tokens before the last one, 8 at a time
    assert out.token_ids == _hf_alone(hf, prompt)[0]


def test_logprobs_are_the_models_raw_distribution(llama):
    hf, model = llama
    prompt = _prompt(5, 6)
    cfg = GenerationConfig(max_new_tokens=5, eos_token_ids=(), logprobs=True, top_logprobs=3)
    out = Engine(model, max_num_seqs=2, max_model_len=32).generate([prompt], cfg)[0][0]
    tokens, logits = _hf_alone(hf, prompt, 5)
    ref = torch.log_softmax(torch.tensor(logits), -1).numpy()  # [steps, vocab]
    np.testing.assert_allclose(out.logprobs, ref[np.arange(5), tokens], atol=1e-4)
    for step, alternatives in enumerate(out.top_logprobs):
        assert [t for t, _ in alternatives] == np.argsort(-ref[step])[:3].tolist()
        assert alternatives[0][0] == tokens[step]


def test_stop_ids_length_and_budget(llama):
    hf, model = llama
    prompt = _prompt(6, 5)
    full = _hf_alone(hf, prompt)[0]
    engine = Engine(model, max_num_seqs=2, max_model_len=16)
    engine.warmup()  # compiles every slot bucket without touching a sequence
    stopped = engine.generate([prompt], GenerationConfig(max_new_tokens=12, eos_token_ids=(), stop_token_ids=(full[3],)))[0][0]
    assert stopped.token_ids == full[: full.index(full[3])] and stopped.finish_reason == "stop"
    clamped = engine.generate([prompt], GREEDY)[0][0]  # 5 + 12 > 16: the slot's room ends it
    assert clamped.token_ids == full[:12][: 16 - 5 + 1] and clamped.finish_reason == "length"
    with pytest.raises(ValueError, match="max_model_len"):
        engine.submit(_prompt(7, 16), GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        engine.submit(prompt, GenerationConfig(top_p=0))
    with pytest.raises(ValueError, match="unknown adapter 'x'"):
        engine.submit(prompt, GREEDY, adapter="x")


def test_cancel_frees_slots_and_queue_is_bounded(llama):
    _, model = llama
    engine = Engine(model, max_num_seqs=2, max_model_len=32, max_queue_size=2)
    running = [engine.submit(_prompt(8, 4), GREEDY) for _ in range(2)]
    engine.step()
    waiting = [engine.submit(_prompt(9, 4), GREEDY) for _ in range(2)]
    with pytest.raises(QueueFull, match="max_queue_size 2"):
        engine.submit(_prompt(9, 4), GREEDY)
    running[0].cancel()
    waiting[1].cancel()
    engine.run(running + waiting)
    assert running[0].samples[0].finish_reason == "cancelled" and waiting[1].samples[0].finish_reason == "cancelled"
    assert running[1].outputs[0].finish_reason == "length" and len(waiting[0].outputs[0].token_ids) == 12
    assert engine.free_slots == 2 and not engine.waiting


def test_min_p_and_openai_penalties():
    logits = np.random.RandomState(0).randn(3, 40).astype(np.float32) * 3
    for p in (0.05, 0.3):
        ref = MinPLogitsWarper(p)(None, torch.tensor(logits)).numpy()
        got = np.asarray(filter_min_p(jnp.asarray(logits), jnp.full((3,), p)))
        np.testing.assert_array_equal(np.isfinite(ref), got > -1e29)
    counts = np.zeros((3, 40), np.int32)
    counts[:, int(np.argmax(logits[0]))] = 3
    rows = lambda v: jnp.full((3,), v, jnp.float32)
    s = RowSampling(rows(0), jnp.zeros(3, jnp.int32), rows(1), rows(0), rows(1), jnp.asarray([0.0, 2.0, 0.0]),
                    jnp.asarray([0.0, 0.0, 1.0]), jnp.zeros((3, 2), jnp.uint32))
    token, *_ = select(jnp.asarray(logits), s, jnp.zeros((3, 40), bool), jnp.asarray(counts), jnp.zeros(3, jnp.int32), top_n=False)
    expected = logits - np.array([[0], [2], [0]]) * (counts > 0) - np.array([[0], [0], [1]]) * counts
    assert np.asarray(token).tolist() == expected.argmax(-1).tolist()


@pytest.mark.parametrize("caching", [True, False])
def test_requests_with_one_prompt_share_its_prefill(llama, caching):
    hf, model = llama
    prompt = _prompt(10, 13)
    engine = Engine(model, max_num_seqs=4, max_model_len=32, prefix_caching=caching)
    first = engine.submit(prompt, GREEDY)
    engine.step()  # the first is prefilled and decoding when the others come
    later = [engine.submit(prompt, GREEDY), engine.submit(prompt, GenerationConfig(max_new_tokens=6, eos_token_ids=()))]
    engine.run([first, *later])
    assert engine.stats["prefill_tokens"] == (len(prompt) - 1) * (1 if caching else 3)
    expected = _hf_alone(hf, prompt)[0]
    assert [r.outputs[0].token_ids for r in (first, *later)] == [expected, expected, expected[:6]]


def test_named_adapters_are_swapped_between_requests(tmp_path):
    from flax import nnx

    from test_generation import _Adapter

    path = save_hf_model(build_hf_model("qwen3", head_dim=32), tmp_path)
    base = swift_jax.load_model(path, scan_layers=False)
    tuned = nnx.merge(*nnx.split(base))  # shares the base weights; adapters on its own q_proj layers
    rng = np.random.RandomState(0)
    for layer in tuned.model.layers:
        lin = layer.self_attn.q_proj
        a, b = (rng.randn(*shape).astype(np.float32) * 0.3 for shape in ((lin.in_features, 4), (4, lin.out_features)))
        lin.lora = nnx.data(_Adapter(jnp.asarray(a), jnp.asarray(b), 2.0))
    prompts = [_prompt(11, 7), _prompt(12, 5)]
    alone = {name: Engine(m, max_num_seqs=2, max_model_len=32).generate(prompts, GREEDY) for name, m in (("base", base), ("x", tuned))}
    assert alone["base"] != alone["x"]  # the adapter changes the answers
    engine = Engine(base, max_num_seqs=2, max_model_len=32, adapters={"x": tuned})
    requests = [engine.submit(p, GREEDY, adapter=a) for a in (None, "x", None) for p in prompts]
    engine.run(requests)
    got = [r.outputs for r in requests]
    assert got == alone["base"] + alone["x"] + alone["base"]
