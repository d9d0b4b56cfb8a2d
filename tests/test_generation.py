"""KV-cache generation: greedy parity with transformers' generate, sampling, stop conditions, streaming, mesh."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

import swift_jax
from infer_fixtures import build_chat_model
from swift_jax.generation import GenerationConfig, Generator, filter_logits
from tiny_models import build_hf_model, save_hf_model

CASES = [
    ("llama", dict(tie_word_embeddings=True)),
    ("qwen2", dict(num_key_value_heads=1)),
    ("qwen3", dict(head_dim=32)),
    ("mistral", dict(sliding_window=5)),  # the window slides during decoding
]
LENGTHS = [5, 11, 8]


def _prompts(seed=0, lengths=LENGTHS):
    rng = np.random.RandomState(seed)
    return [rng.randint(1, 128, n).tolist() for n in lengths]


def _hf_generate(hf, prompts, max_new_tokens=32, **kw):
    """transformers' generate on the same prompts, left-padded into one batch; new tokens per row."""
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            **kw,
        )
    return out[:, width:].numpy().tolist()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = build_hf_model("llama")
    return hf, swift_jax.load_model(save_hf_model(hf, tmp_path_factory.mktemp("llama")))


@pytest.mark.parametrize("model_type,overrides", CASES, ids=[c[0] for c in CASES])
def test_greedy_matches_transformers(model_type, overrides, tmp_path):
    hf = build_hf_model(model_type, **overrides)
    model = swift_jax.load_model(save_hf_model(hf, tmp_path))
    prompts = _prompts()
    outs = Generator(model).generate_ids(prompts, GenerationConfig(max_new_tokens=32, eos_token_ids=()))
    assert [o.token_ids for o in outs] == _hf_generate(hf, prompts)
    assert all(o.finish_reason == "length" for o in outs)


def test_repetition_penalty_matches_transformers(llama):
    hf, model = llama
    prompts = _prompts(seed=3)
    cfg = GenerationConfig(max_new_tokens=16, repetition_penalty=1.5, eos_token_ids=())
    outs = Generator(model).generate_ids(prompts, cfg)
    assert [o.token_ids for o in outs] == _hf_generate(hf, prompts, 16, repetition_penalty=1.5)


def test_filters_match_transformers_warpers():
    logits = np.random.RandomState(0).randn(4, 50).astype(np.float32) * 3
    for k, p in [(5, 1.0), (0, 0.7), (10, 0.5), (1, 1.0), (0, 1.0)]:
        ref = torch.tensor(logits)
        if k:
            ref = TopKLogitsWarper(k)(None, ref)
        if p < 1:
            ref = TopPLogitsWarper(p)(None, ref)
        got = np.asarray(filter_logits(jax.numpy.asarray(logits), np.int32(k), np.float32(p)))
        np.testing.assert_array_equal(np.isfinite(ref.numpy()), got > -1e29, err_msg=f"top_k={k} top_p={p}")


def test_sampling_seeded_and_top_k_one_is_greedy(llama):
    _, model = llama
    gen, prompts = Generator(model), _prompts(seed=1)
    base = dict(max_new_tokens=12, eos_token_ids=())
    greedy = [o.token_ids for o in gen.generate_ids(prompts, GenerationConfig(**base))]
    top1 = gen.generate_ids(prompts, GenerationConfig(temperature=1.0, top_k=1, seed=5, **base))
    assert [o.token_ids for o in top1] == greedy
    hot = dict(temperature=5.0, top_p=0.95, **base)
    a = [o.token_ids for o in gen.generate_ids(prompts, GenerationConfig(seed=1, **hot))]
    b = [o.token_ids for o in gen.generate_ids(prompts, GenerationConfig(seed=1, **hot))]
    c = [o.token_ids for o in gen.generate_ids(prompts, GenerationConfig(seed=2, **hot))]
    assert a == b
    assert a != c and a != greedy


def test_eos_stops_each_row_and_batches_split(llama):
    _, model = llama
    prompts = _prompts(seed=2, lengths=[3, 9, 6, 4, 7])
    full = [o.token_ids for o in Generator(model).generate_ids(prompts, GenerationConfig(max_new_tokens=10, eos_token_ids=()))]
    eos = full[1][4]
    outs = Generator(model, max_batch_size=2).generate_ids(prompts, GenerationConfig(max_new_tokens=10, eos_token_ids=(eos,)))
    for row, out in zip(full, outs):
        cut = row.index(eos) if eos in row else len(row)
        assert out.token_ids == row[:cut]
        assert out.finish_reason == ("stop" if eos in row else "length")


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    path = build_chat_model(tmp_path_factory.mktemp("chat"))
    return Generator(swift_jax.load_model(path), swift_jax.load_tokenizer(path))


def test_stop_strings_and_streaming(chat):
    tok = chat.tokenizer
    prompt = tok.encode("Question: what is 6 times 7?", add_special_tokens=False)
    cfg = GenerationConfig(max_new_tokens=40, eos_token_ids=())
    full = chat.generate_ids([prompt], cfg)[0]
    assert len(full.token_ids) == 40 and len(full.text) > 12
    stop = full.text[8:11]
    first = full.text.index(stop)
    stopped = chat.generate_ids([prompt], GenerationConfig(max_new_tokens=40, eos_token_ids=(), stop=(stop,)))[0]
    assert stopped.text == full.text[:first]
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < 40  # decoding really ended early
    pieces = list(chat.stream(prompt, cfg))
    assert len(pieces) > 3 and "".join(pieces) == full.text


def test_sharded_model_generates_the_same(tmp_path):
    from swift_jax.parallel import make_mesh

    hf = build_hf_model("qwen2")
    path = save_hf_model(hf, tmp_path)
    prompts = _prompts(seed=4)
    cfg = GenerationConfig(max_new_tokens=8, eos_token_ids=())
    mesh = make_mesh(fsdp_size=4, tensor_parallel_size=2)
    with jax.set_mesh(mesh):
        outs = Generator(swift_jax.load_model(path, mesh=mesh)).generate_ids(prompts, cfg)
    assert [o.token_ids for o in outs] == _hf_generate(hf, prompts, 8)


def test_bad_requests_raise_clear_errors(llama):
    _, model = llama
    with pytest.raises(ValueError, match="empty prompt"):
        Generator(model).generate_ids([[1, 2], []])
    with pytest.raises(ValueError, match="need a tokenizer"):
        Generator(model).generate_ids([[1, 2]], GenerationConfig(stop=("x",)))


class _Adapter(nnx.Module):
    """A plain low-rank adapter in the `Linear.lora` slot (the tuners module builds the real ones)."""

    def __init__(self, a, b, scale):
        self.a, self.b, self.scale = nnx.Param(a), nnx.Param(b), scale

    def __call__(self, x):
        return self.scale * (x @ self.a[...]) @ self.b[...]


def test_unmerged_adapters_generate_like_the_merged_model(tmp_path):
    path = save_hf_model(build_hf_model("qwen3", head_dim=32), tmp_path)
    base, unmerged, merged = (swift_jax.load_model(path, scan_layers=False) for _ in range(3))  # per-layer adapters
    rng = np.random.RandomState(0)
    for i in range(len(base.model.layers)):
        for name in ("q_proj", "v_proj"):
            lin, target = getattr(unmerged.model.layers[i].self_attn, name), getattr(merged.model.layers[i].self_attn, name)
            a = rng.randn(lin.in_features, 4).astype(np.float32) * 0.3
            b = rng.randn(4, lin.out_features).astype(np.float32) * 0.3
            lin.lora = nnx.data(_Adapter(jax.numpy.asarray(a), jax.numpy.asarray(b), 2.0))
            target.kernel[...] = target.kernel[...] + 2.0 * a @ b
    prompts, cfg = _prompts(seed=5), GenerationConfig(max_new_tokens=16, eos_token_ids=())
    tokens = [[o.token_ids for o in Generator(m).generate_ids(prompts, cfg)] for m in (base, unmerged, merged)]
    assert tokens[1] == tokens[2]
    assert tokens[1] != tokens[0]  # the adapters really took part
