"""LoRA adapters in PEFT's format, checked with the real `peft` library in both directions."""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx

import swift_jax
from swift_jax.hf.peft import load_peft_adapter, save_peft_adapter
from swift_jax.tuners import loraize, merge_lora
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    hf = build_hf_model("qwen2")
    return hf, save_hf_model(hf, tmp_path_factory.mktemp("base"))


def _randomize_adapters(model, seed=0):
    key = jax.random.key(seed)
    for _, state in nnx.iter_graph(model):
        if isinstance(state, nnx.LoRAParam):
            key, sub = jax.random.split(key)
            state[...] = 0.05 * jax.random.normal(sub, state.shape, state.dtype)


def test_our_adapter_loads_in_peft_with_equal_logits(base, tmp_path):
    hf, path = base
    ours = swift_jax.load_model(path)
    loraize(ours, target_modules=["q_proj", "v_proj", "down_proj"], rank=4, alpha=16, dropout=0.0, rngs=nnx.Rngs(0))
    _randomize_adapters(ours)
    save_peft_adapter(ours, tmp_path, base_model_name_or_path=path)
    peft_model = peft.PeftModel.from_pretrained(build_hf_model("qwen2"), tmp_path).eval()
    got = np.asarray(ours(jnp.asarray(IDS)))
    assert np.abs(hf_logits(peft_model, IDS) - got).max() < 1e-4
    assert np.abs(hf_logits(hf, IDS) - got).max() > 1e-3  # the adapter really changes the output


def test_peft_adapter_loads_into_our_model(base, tmp_path):
    hf, path = base
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = peft.get_peft_model(build_hf_model("qwen2"), config).eval()
    peft_model.save_pretrained(tmp_path)
    ours = load_peft_adapter(swift_jax.load_model(path), str(tmp_path))
    ours.eval()
    assert np.abs(hf_logits(peft_model, IDS) - np.asarray(ours(jnp.asarray(IDS)))).max() < 1e-4
    merged = np.asarray(merge_lora(ours)(jnp.asarray(IDS)))
    assert np.abs(hf_logits(peft_model, IDS) - merged).max() < 1e-4


def test_adapter_for_another_model_is_rejected(base, tmp_path):
    _, path = base
    other = swift_jax.load_model(save_hf_model(build_hf_model("qwen2", num_hidden_layers=3), tmp_path / "other"))
    loraize(other, rank=2, alpha=4, dropout=0.0, rngs=nnx.Rngs(0))
    save_peft_adapter(other, tmp_path / "adapter", base_model_name_or_path="other")
    with pytest.raises(ValueError, match=r"unexpected tensor base_model\.model\.model\.layers\.2\."):
        load_peft_adapter(swift_jax.load_model(path), str(tmp_path / "adapter"))
