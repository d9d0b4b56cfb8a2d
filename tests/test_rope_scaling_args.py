"""--rope_scaling / --max_model_len (ms-swift's ModelArguments): the config the model is built from, and the
logits of transformers on that same config."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from tiny_models import build_hf_model, hf_logits, save_hf_model

import swift_jax
from swift_jax.arguments import ModelArgs
from swift_jax.hf.rope_scaling import scaled_config

QWEN = {"model_type": "qwen2", "max_position_embeddings": 32768, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}


def test_a_type_name_takes_its_factor_from_max_model_len_as_ms_swift():
    out = scaled_config(QWEN, "yarn", 131072)
    assert out["rope_parameters"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1e6}
    assert out["max_position_embeddings"] == 131072
    assert scaled_config(QWEN, "linear", 40000)["rope_parameters"]["factor"] == 2.0  # ceil(40000 / 32768)
    given = scaled_config(QWEN, '{"type": "dynamic", "factor": 2.0}', None)  # JSON: the factor as given
    assert given["rope_parameters"]["rope_type"] == "dynamic" and given["max_position_embeddings"] == 65536
    assert scaled_config(QWEN, None, 4096) == {**QWEN, "max_position_embeddings": 4096}  # only the length
    rescaled = scaled_config(scaled_config(QWEN, "yarn", 131072), None, 65536)  # a scaled model re-derives its factor
    assert rescaled["rope_parameters"]["factor"] == 2.0 and rescaled["rope_parameters"]["original_max_position_embeddings"] == 32768


def test_bad_values_say_what_is_expected():
    with pytest.raises(ValueError, match="--rope_scaling 'ntk': expected one of"):
        scaled_config(QWEN, "ntk", 65536)
    with pytest.raises(ValueError, match="has no factor: pass --max_model_len"):
        scaled_config(QWEN, "yarn", None)


def test_the_scaled_model_matches_transformers_on_the_scaled_config(tmp_path):
    hf = build_hf_model("qwen2", seed=1)
    path = save_hf_model(hf, tmp_path / "m")
    adjust = ModelArgs(rope_scaling="linear", max_model_len=128).adjust_config()
    model = swift_jax.load_model(path, dtype="float32", adjust_config=adjust)
    assert (model.config.rope.rope_type, model.config.rope.factor) == ("linear", 2.0)  # ceil(128 / 64)
    config = json.loads(open(f"{path}/config.json").read())
    scaled = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**scaled_config(config, "linear", 128)),
                                                          attn_implementation="eager").eval()
    scaled.load_state_dict(hf.state_dict())
    ids = np.random.RandomState(0).randint(0, 128, (1, 40))
    ours = np.asarray(model(jnp.asarray(ids)))
    np.testing.assert_allclose(ours, hf_logits(scaled, ids), atol=2e-4)
    assert np.abs(ours - hf_logits(hf, ids)).max() > 1e-3  # the scaling changed the model
    swift_jax.save_pretrained(model, str(tmp_path / "saved"))  # checkpoints carry the scaled config
    saved = json.loads(open(tmp_path / "saved" / "config.json").read())
    assert saved["rope_parameters"]["rope_type"] == "linear" and saved["max_position_embeddings"] == 128
