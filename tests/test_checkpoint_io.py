"""HF checkpoint import/export: sharding, dtypes, meshes and the errors users see."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.torch import load_file, save_file

import swift_jax
from swift_jax.parallel import make_mesh
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    hf = build_hf_model("qwen2")
    return hf, save_hf_model(hf, tmp_path_factory.mktemp("qwen2"))


def _logits(model, ids=IDS):
    return np.asarray(model(jnp.asarray(ids)), dtype=np.float32)


def test_sharded_save_writes_index_and_round_trips(qwen2, tmp_path):
    hf, path = qwen2
    ours = swift_jax.load_model(path)
    swift_jax.save_pretrained(ours, tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(os.path.exists(tmp_path / s) for s in shards)
    assert not (tmp_path / "model.safetensors").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert np.abs(hf_logits(hf, IDS) - hf_logits(reloaded, IDS)).max() < 1e-4
    # and our own streamed reader handles the index too
    assert np.abs(_logits(swift_jax.load_model(tmp_path)) - _logits(ours)).max() < 1e-6


def test_bf16_checkpoint_loads_exactly_in_float32(tmp_path):
    hf = build_hf_model("llama")
    path = save_hf_model(hf, tmp_path, dtype=torch.bfloat16)  # HF model now holds the bf16-rounded weights
    ours = swift_jax.load_model(path, dtype="float32")
    ref = hf_logits(hf.float(), IDS)
    assert np.abs(ref - _logits(ours)).max() < 1e-4


def test_bf16_compute_is_close_to_float32(qwen2, tmp_path):
    hf, path = qwen2
    ours = swift_jax.load_model(path, dtype="bfloat16")
    assert ours.model.embed_tokens.embedding.dtype == jnp.bfloat16
    ref = hf_logits(hf, IDS)
    got = _logits(ours)
    # bf16 keeps 8 mantissa bits: logits of this tiny model (std ~0.5) agree to a few 1e-2.
    assert np.abs(ref - got).max() < 0.1, np.abs(ref - got).max()
    swift_jax.save_pretrained(ours, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    assert load_file(str(tmp_path / "model.safetensors"))["lm_head.weight"].dtype == torch.bfloat16


def test_save_dtype_casts(qwen2, tmp_path):
    _, path = qwen2
    swift_jax.save_pretrained(swift_jax.load_model(path), tmp_path, dtype="bfloat16")
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_mesh_sharded_load_equals_single_device(qwen2):
    _, path = qwen2
    mesh = make_mesh(data_parallel_size=2, fsdp_size=2, tensor_parallel_size=2)
    sharded = swift_jax.load_model(path, mesh=mesh)
    q = sharded.model.stacks[0].layers[0].self_attn.q_proj.kernel[...]  # [layers, embed, heads]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[1:] == (32, 32)
    single = swift_jax.load_model(path)
    assert np.abs(_logits(sharded) - _logits(single)).max() < 1e-5


def test_every_parameter_has_logical_axes(qwen2):
    _, path = qwen2
    model = swift_jax.load_model(path)
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == var.ndim, p


def _edit_checkpoint(path, edit):
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_mismatched_checkpoint_lists_every_problem(tmp_path):
    path = save_hf_model(build_hf_model("llama"), tmp_path)

    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.0.extra.weight"] = torch.zeros(3)
        t["model.norm.weight"] = torch.ones(65)

    _edit_checkpoint(path, edit)
    with pytest.raises(ValueError) as err:
        swift_jax.load_model(path)
    msg = str(err.value)
    assert "missing tensor model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected tensor model.layers.0.extra.weight" in msg
    assert "tensor model.norm.weight has shape [65], expected [64]" in msg
    assert str(path) in msg


def test_unknown_model_type_lists_supported(tmp_path):
    path = save_hf_model(build_hf_model("llama"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model_type='gpt_neox' is not supported; supported model_types: .*llama.*qwen2"):
        swift_jax.load_model(path)


def test_missing_folder_and_offline_hub_id_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        swift_jax.load_model(str(tmp_path / "no-such-dir"))
    with pytest.raises(FileNotFoundError, match="some-org/some-model"):
        swift_jax.load_model("some-org/some-model")  # HF_HUB_OFFLINE=1 in tests
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        swift_jax.load_model(str(tmp_path))


def test_init_model_from_config_trains_from_scratch_shape(tmp_path):
    cfg = build_hf_model("qwen2").config.to_dict()
    model = swift_jax.init_model(cfg, seed=1)
    assert _logits(model).shape == (2, 10, 128)
    swift_jax.save_pretrained(model, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert np.abs(hf_logits(reloaded, IDS) - _logits(model)).max() < 1e-4


@pytest.mark.parametrize("dtype", ["float32", "fp32", jnp.float32, np.dtype("float32"), np.float32, "torch.float32"])
def test_the_api_takes_dtypes_as_jax_users_pass_them(qwen2, dtype):
    _, path = qwen2
    model = swift_jax.load_model(path, dtype=dtype)
    assert model.config.dtype == "float32" and model.config.param_dtype == "float32"


@pytest.mark.parametrize("dtype", ["bfloat16", jnp.bfloat16, np.dtype(jnp.bfloat16)])
def test_bfloat16_in_every_form_loads_inits_and_saves(qwen2, tmp_path, dtype):
    _, path = qwen2
    assert swift_jax.load_model(path, dtype=dtype).model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    with open(os.path.join(path, "config.json")) as f:
        initialised = swift_jax.init_model(json.load(f), dtype=dtype)
    assert initialised.model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    swift_jax.save_pretrained(swift_jax.load_model(path), tmp_path, dtype=dtype)
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        swift_jax.load_model(path, dtype=jnp.int8)
