"""Gemma 2, Gemma 3 (text) and Phi-3 against transformers on tiny random checkpoints (float32 < 1e-4).

The parity tests are tests/test_models.py's own (plain rows, right-padded batch, packed row vs each
segment alone, save_pretrained -> transformers), collected here again with this file's `pair`
fixture over the CASES below. On top: greedy generation against `transformers.generate`, and LoRA
targets and PEFT adapters on the new module names (Phi-3's fused `qkv_proj` / `gate_up_proj`).
"""

import numpy as np
import peft
import pytest
import torch
import jax.numpy as jnp

import swift_jax
from swift_jax.generation import GenerationConfig, Generator
from swift_jax.hf.peft import load_peft_adapter
from swift_jax.modeling import model_config
from swift_jax.models.registry import gemma_config
from swift_jax.tuners import lora_layers, resolve_targets
from test_generation import _hf_generate, _prompts
from test_models import (  # noqa: F401  (collected here with this file's `pair`)
    test_packed_row_matches_each_segment_alone,
    test_plain_rows,
    test_right_padded_batch,
    test_save_pretrained_round_trips_through_transformers,
)
from tiny_models import build_hf_model, hf_logits, save_hf_model

TOKENS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)  # inside the tiny vocabulary
# Caps small enough to bend these tiny models' logits (attention logits here are ~0.1, output ~1).
CAPS = dict(attn_logit_softcapping=0.05, final_logit_softcapping=1.0)
ALTERNATING = ["sliding_attention", "full_attention"] * 2
LONGROPE = dict(type="longrope", short_factor=[1.0, 1.5, 2.0, 1.2], long_factor=[2.0, 3.0, 4.0, 5.0])

# Sequences in test_models are 12 tokens (packed segments 5, 4, 3): windows of 4 and 5 really slide;
# Phi-3 with original_max_position_embeddings=8 takes the long factors on 12-token rows and the
# short ones on each packed segment (as transformers does on each segment alone).
CASES = [
    (
        "gemma2-softcaps-window4-qscale",
        "gemma2",
        dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24, **CAPS),
    ),
    (
        "gemma2-nocaps-untied-mqa-bias",
        "gemma2",
        dict(
            num_hidden_layers=3,
            num_key_value_heads=1,
            head_dim=24,
            sliding_window=5,
            attention_bias=True,
            tie_word_embeddings=False,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
        ),
    ),
    (
        "gemma3-local-global-rope-bases",
        "gemma3_text",
        dict(
            num_hidden_layers=4,
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=16,
            layer_types=ALTERNATING,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            },
            final_logit_softcapping=1.0,
        ),
    ),
    (
        "gemma3-all-local-headdim32-untied",
        "gemma3_text",
        dict(head_dim=32, num_key_value_heads=1, sliding_window=3, tie_word_embeddings=False),
    ),
    (
        "phi3-longrope-long-partial-rotary",
        "phi3",
        dict(original_max_position_embeddings=8, rope_scaling=LONGROPE, partial_rotary_factor=0.5),
    ),
    (
        "phi3-longrope-short-window-mha",
        "phi3",
        dict(
            num_key_value_heads=4,
            original_max_position_embeddings=32,
            sliding_window=5,
            rope_scaling=dict(LONGROPE, short_factor=[1.0, 1.1, 1.3, 1.6, 2.0, 2.4, 2.8, 3.0], long_factor=[4.0] * 8),
        ),
    ),
]


OVERRIDES = {case_id: (model_type, overrides) for case_id, model_type, overrides in CASES}


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    """(HF reference model, our loaded model, checkpoint path) for one case."""
    _, model_type, overrides = request.param
    hf = build_hf_model(model_type, **TOKENS, **overrides)
    path = save_hf_model(hf, tmp_path_factory.mktemp(request.param[0]))
    return hf, swift_jax.load_model(path), path


def test_config_switches_are_read():
    """The tiny configs above really exercise what they are named after."""

    def cfg(case_id):
        model_type, overrides = OVERRIDES[case_id]
        return model_config(build_hf_model(model_type, **TOKENS, **overrides).config.to_dict())[0]

    g2 = cfg("gemma2-softcaps-window4-qscale")
    assert (g2.attn_soft_cap, g2.final_soft_cap, g2.query_scale) == (0.05, 1.0, 24**-0.5)
    assert g2.layer_windows == (4, None) and g2.norm_offset == 1.0 and g2.embed_scale == 8.0 and g2.post_norms
    g3 = cfg("gemma3-local-global-rope-bases")
    assert [r.theta for r in g3.layer_ropes] == [100.0, 10000.0] * 2 and g3.layer_ropes[1].rope_type == "linear"
    assert g3.layer_windows == (4, None, 4, None) and g3.qk_norm and g3.attn_soft_cap is None
    phi = cfg("phi3-longrope-long-partial-rotary")
    assert phi.rope.rope_type == "longrope" and phi.rope.original_max_position_embeddings == 8
    assert phi.rope.partial_rotary_factor == 0.5 and phi.fused_qkv and phi.fused_gate_up


def test_gemma3_config_from_transformers_4_fields():
    """A 4.x-style Gemma 3 dict (rope_theta, rope_local_base_freq, rope_scaling, no layer_types)."""
    hf = dict(
        model_type="gemma3_text",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        rope_theta=1e6,
        rope_local_base_freq=1e4,
        rope_scaling=dict(rope_type="linear", factor=8.0),
    )
    cfg = gemma_config(hf)
    assert cfg.layer_windows == (8,) * 5 + (None,)
    assert [(r.rope_type, r.theta) for r in cfg.layer_ropes] == [("default", 1e4)] * 5 + [("linear", 1e6)]
    assert cfg.layer_ropes[-1].factor == 8.0


GENERATION_CASES = [
    # the 4-token window slides while decoding; both soft caps on
    ("gemma2", dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24, **CAPS)),
    # local layers (window 4, base 100) and global layers (linear rope) take different tables
    ("gemma3_text", OVERRIDES["gemma3-local-global-rope-bases"][1]),
    # prompts up to 11 tokens: prefill on the short factors, decoding crosses position 16 onto the long ones
    ("phi3", dict(original_max_position_embeddings=16, rope_scaling=LONGROPE, partial_rotary_factor=0.5)),
]


@pytest.mark.parametrize("model_type,overrides", GENERATION_CASES, ids=[c[0] for c in GENERATION_CASES])
def test_greedy_generation_matches_transformers(model_type, overrides, tmp_path):
    hf = build_hf_model(model_type, **TOKENS, **overrides)
    model = swift_jax.load_model(save_hf_model(hf, tmp_path))
    prompts = _prompts()
    outs = Generator(model).generate_ids(prompts, GenerationConfig(max_new_tokens=24, eos_token_ids=()))
    assert [o.token_ids for o in outs] == _hf_generate(hf, prompts, 24)


def test_lora_targets_resolve_on_fused_and_sandwich_layers(tmp_path):
    phi = swift_jax.load_model(save_hf_model(build_hf_model("phi3", **TOKENS), tmp_path / "phi3"))
    chosen = {p.split(".")[-1] for p, _ in resolve_targets(phi, "all-linear")}
    assert chosen == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    with pytest.raises(ValueError, match="qkv_proj"):  # the error lists the names the model has
        resolve_targets(phi, ["q_proj"])
    gemma = swift_jax.load_model(save_hf_model(build_hf_model("gemma3_text", **TOKENS), tmp_path / "gemma3"))
    chosen = {p.split(".")[-1] for p, _ in resolve_targets(gemma, "all-linear")}
    assert chosen == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("model_type", ["phi3", "gemma2"])
def test_peft_adapter_on_peft_target_names_matches_peft(model_type, tmp_path):
    """PEFT's default targets for these models name our modules too; its adapter gives its logits."""
    targets = {"phi3": ["qkv_proj", "gate_up_proj", "o_proj", "down_proj"], "gemma2": ["q_proj", "v_proj", "up_proj"]}
    base = save_hf_model(build_hf_model(model_type, **TOKENS), tmp_path / "base")
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets[model_type])
    peft_model = peft.get_peft_model(build_hf_model(model_type, **TOKENS), config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = load_peft_adapter(swift_jax.load_model(base), str(tmp_path / "adapter"))
    assert {p.split(".")[-1] for p, _ in lora_layers(ours)} == set(targets[model_type])
    ids = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)
    got = np.asarray(ours(jnp.asarray(ids)))
    assert np.abs(hf_logits(peft_model, ids) - got).max() < 1e-4
    assert np.abs(hf_logits(build_hf_model(model_type, **TOKENS), ids) - got).max() > 1e-3


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gemma3_image_text_checkpoint_text_rows(tied, tmp_path):
    """A `gemma3` (Gemma3ForConditionalGeneration) checkpoint loads with its vision tower (SigLIP's unused
    pooling head skipped); text-only rows give transformers' logits, and it saves back as the image-text
    model (image rows: tests/test_models_gemma3_vl.py)."""
    overrides = dict(OVERRIDES["gemma3-local-global-rope-bases"][1], tie_word_embeddings=tied)
    hf = build_hf_model("gemma3", **TOKENS, **overrides)
    assert type(hf).__name__ == "Gemma3ForConditionalGeneration"
    ours = swift_jax.load_model(save_hf_model(hf, tmp_path / "mm"))
    assert ours.config.model_type == "gemma3" and ours.config.tie_word_embeddings == tied
    ids = np.random.RandomState(0).randint(0, 120, (2, 12)).astype(np.int32)  # no image tokens
    ref = hf_logits(hf, ids)
    assert np.abs(ref - np.asarray(ours(jnp.asarray(ids)))).max() < 1e-4
    swift_jax.save_pretrained(ours, tmp_path / "again")
    import transformers

    again = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "again", attn_implementation="eager")
    again.eval()
    assert type(again).__name__ == "Gemma3ForConditionalGeneration"
    assert np.abs(ref - hf_logits(again, ids)).max() < 1e-4
