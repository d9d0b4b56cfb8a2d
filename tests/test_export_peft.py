"""PEFT adapters written by `peft` itself in the forms it really produces (regex targets, rsLoRA), and
adapters that do not fit the base model: loaded with PEFT's own logits, or refused with the reason."""

import json

import numpy as np
import peft
import pytest
import torch
import jax.numpy as jnp

import swift_jax
from swift_jax.hf.peft import hf_module_paths
from swift_jax.hf.peft import load_peft_adapter
from swift_jax.tuners import lora_layers
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf_model(build_hf_model("llama"), tmp_path_factory.mktemp("base"))


def _peft_adapter(path, seed=1, model_kwargs=None, **lora_kwargs):
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **lora_kwargs)
    model = peft.get_peft_model(build_hf_model("llama", **(model_kwargs or {})), config).eval()
    model.save_pretrained(path)
    return model


def test_regex_targets_and_rslora_match_peft(base, tmp_path):
    peft_model = _peft_adapter(tmp_path, target_modules=r".*\.(q_proj|v_proj|up_proj)", use_rslora=True)
    assert isinstance(json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"], str)
    ours = load_peft_adapter(swift_jax.load_model(base), str(tmp_path))
    adapted = {m for p, _ in lora_layers(ours) for m in hf_module_paths(ours, p)}  # PEFT module names
    assert len(adapted) == 2 * 3 and all(p.split(".")[-1] in ("q_proj", "v_proj", "up_proj") for p in adapted)
    got = np.asarray(ours(jnp.asarray(IDS)))
    assert np.abs(hf_logits(peft_model, IDS) - got).max() < 1e-4
    assert np.abs(hf_logits(build_hf_model("llama"), IDS) - got).max() > 1e-3


def test_adapter_of_another_shape_is_refused(base, tmp_path):
    _peft_adapter(tmp_path, target_modules=["q_proj"], model_kwargs=dict(hidden_size=32, intermediate_size=48))
    with pytest.raises(ValueError, match=r"adapter does not match the model:\n.*q_proj\.lora_A\.weight has shape \[4, 32\], expected \[4, 64\]"):
        load_peft_adapter(swift_jax.load_model(base), str(tmp_path))


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(bias="lora_only"), "bias"), (dict(lora_bias=True), "lora_bias")],
)
def test_unsupported_adapter_kinds_are_named(base, tmp_path, kwargs, message):
    _peft_adapter(tmp_path, target_modules=["q_proj"], **kwargs)
    with pytest.raises(ValueError, match=f"only LoRA / DoRA / rsLoRA adapters are supported.*{message}"):
        load_peft_adapter(swift_jax.load_model(base), str(tmp_path))


def test_folder_without_weights_is_named(base, tmp_path):
    _peft_adapter(tmp_path, target_modules=["q_proj"])
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "other.bin")
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        load_peft_adapter(swift_jax.load_model(base), str(tmp_path))
