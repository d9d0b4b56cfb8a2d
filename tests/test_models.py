"""Logits parity of our Flax decoder with transformers on tiny random checkpoints (float32 < 1e-4)."""

import numpy as np
import pytest
import torch
import jax.numpy as jnp

import swift_jax
from tiny_models import build_hf_model, hf_logits, packed_row, save_hf_model

TOL = 1e-4

# (id, model_type, config overrides): tied/untied, GQA/MQA, rope types, head_dim != hidden/heads, windows.
CASES = [
    ("llama-gqa-tied", "llama", dict(tie_word_embeddings=True)),
    (
        "llama-llama3-rope-bias-headdim",
        "llama",
        dict(
            head_dim=24,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    ("llama-linear-rope-mha", "llama", dict(num_key_value_heads=4, rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=2.0))),
    # max_position_embeddings=8 < seq: the dynamic NTK base really grows.
    ("llama-dynamic-rope", "llama", dict(max_position_embeddings=8, rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0))),
    (
        "llama-yarn-rope",
        "llama",
        dict(rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16)),
    ),
    ("qwen2-mqa-untied", "qwen2", dict(num_key_value_heads=1, tie_word_embeddings=False)),
    ("qwen2-sliding", "qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, layer_types=None)),
    ("qwen3-qknorm", "qwen3", dict(head_dim=32, tie_word_embeddings=True)),
    ("qwen3-gelu", "qwen3", dict(head_dim=8, hidden_act="gelu_pytorch_tanh")),
    ("mistral-window", "mistral", dict(sliding_window=5, head_dim=32)),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    """(HF reference model, our loaded model) for one case."""
    _, model_type, overrides = request.param
    hf = build_hf_model(model_type, **overrides)
    path = save_hf_model(hf, tmp_path_factory.mktemp(request.param[0]))
    return hf, swift_jax.load_model(path), path


def _ids(batch, seq, seed=0):
    return np.random.RandomState(seed).randint(0, 128, (batch, seq)).astype(np.int32)


def test_plain_rows(pair):
    hf, ours, _ = pair
    ids = _ids(2, 12)
    diff = np.abs(hf_logits(hf, ids) - np.asarray(ours(jnp.asarray(ids)))).max()
    assert diff < TOL, diff


def test_right_padded_batch(pair):
    hf, ours, _ = pair
    ids = _ids(2, 12, seed=1)
    lengths = [12, 7]
    mask = np.array([[1] * n + [0] * (12 - n) for n in lengths], np.int32)
    ref = hf_logits(hf, ids, mask)
    got = np.asarray(ours(jnp.asarray(ids), segment_ids=jnp.asarray(mask)))
    for row, n in enumerate(lengths):
        diff = np.abs(ref[row, :n] - got[row, :n]).max()
        assert diff < TOL, (row, diff)
    assert np.isfinite(got).all()


def test_packed_row_matches_each_segment_alone(pair):
    hf, ours, _ = pair
    lengths = [5, 4, 3]
    seq = sum(lengths) + 2  # two padding slots at the end
    ids = _ids(1, seq, seed=2)
    segment_ids, positions = packed_row(lengths, seq)
    got = np.asarray(ours(jnp.asarray(ids), positions=jnp.asarray(positions), segment_ids=jnp.asarray(segment_ids)))
    start = 0
    for n in lengths:
        ref = hf_logits(hf, ids[:, start : start + n])
        diff = np.abs(ref - got[:, start : start + n]).max()
        assert diff < TOL, diff
        start += n
    assert np.isfinite(got).all()


def test_save_pretrained_round_trips_through_transformers(pair, tmp_path):
    hf, ours, _ = pair
    swift_jax.save_pretrained(ours, tmp_path)
    import transformers

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = _ids(2, 10, seed=3)
    assert np.abs(hf_logits(hf, ids) - hf_logits(reloaded, ids)).max() < TOL
