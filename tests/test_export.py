"""`python -m swift_jax.export`: merged models and PEFT adapters, loaded back by transformers / peft."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import transformers
from flax import nnx

import swift_jax
from swift_jax.export import main as export_main
from swift_jax.hf.peft import save_peft_adapter
from swift_jax.tuners import loraize
from infer_fixtures import build_chat_model
from tiny_models import hf_logits

IDS = np.random.RandomState(0).randint(0, 300, (2, 9)).astype(np.int32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base folder, adapter folder, logits of base + adapter) for a tiny chat model."""
    root = tmp_path_factory.mktemp("export")
    base = build_chat_model(root / "base")
    model = swift_jax.load_model(base)
    loraize(model, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0))
    key = jax.random.key(3)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam):
            key, sub = jax.random.split(key)
            var[...] = 0.05 * jax.random.normal(sub, var.shape, var.dtype)
    adapter = str(root / "checkpoint_10")
    save_peft_adapter(model, adapter, base_model_name_or_path=base)
    return base, adapter, np.asarray(model(jnp.asarray(IDS)))


def test_merge_lora_from_adapter_alone(trained, tmp_path):
    base, adapter, expected = trained
    out = str(tmp_path / "merged")
    export_main(["--adapters", adapter, "--merge_lora", "true", "--output_dir", out])
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert np.abs(hf_logits(reloaded, IDS) - expected).max() < 1e-4
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template


def test_to_peft_loads_in_peft(trained, tmp_path):
    base, adapter, expected = trained
    out = str(tmp_path / "peft")
    export_main(["--adapters", adapter, "--to_peft_format", "true", "--output_dir", out])
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(hf_base, out).eval()
    assert np.abs(hf_logits(model, IDS) - expected).max() < 1e-4


def test_bad_requests_say_what_is_wrong(trained, tmp_path):
    _, adapter, _ = trained
    with pytest.raises(ValueError, match="nothing to export"):
        export_main(["--adapters", adapter, "--output_dir", str(tmp_path / "x")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_main(["--adapters", adapter, "--merge_lora", "true", "--output_dir", str(tmp_path / "full")])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        export_main(["--adapters", str(tmp_path / "nope"), "--merge_lora", "true", "--output_dir", str(tmp_path / "y")])


def test_default_output_folder_is_beside_the_checkpoint_as_ms_swift(trained, tmp_path, monkeypatch):
    import json
    import shutil

    _, adapter, _ = trained
    checkpoint = tmp_path / "run" / "checkpoint-10"
    shutil.copytree(adapter, checkpoint)
    (checkpoint / "args.json").write_text(json.dumps({"lora_rank": 4}))  # a checkpoint written by training
    assert export_main(["--adapters", str(checkpoint), "--merge_lora", "true"]) == f"{checkpoint}-merged"
    assert os.path.exists(f"{checkpoint}-merged/model.safetensors")
    with pytest.raises(FileExistsError, match="exists and is not empty; choose a new folder or pass --exist_ok true"):
        export_main(["--adapters", str(checkpoint), "--merge_lora", "true"])
    os.remove(f"{checkpoint}-merged/model.safetensors")
    export_main(["--adapters", str(checkpoint), "--merge_lora", "true", "--exist_ok", "true"])  # overwrites
    assert os.path.exists(f"{checkpoint}-merged/model.safetensors")
    out = export_main(["--adapters", str(checkpoint), "--to_peft", "true"])  # our older name of --to_peft_format
    assert out == f"{checkpoint}-peft" and os.path.exists(f"{out}/adapter_model.safetensors")
    monkeypatch.chdir(tmp_path)  # no args.json: ./NAME-SUFFIX, as ms-swift
    assert export_main(["--adapters", adapter, "--to_peft_format", "true"]) == str(tmp_path / "checkpoint_10-peft")
    from swift_jax.export import ExportArgs, default_output_dir

    assert default_output_dir(ExportArgs(adapters=[str(checkpoint)], quant_method="gptq", quant_bits=4)) == f"{checkpoint}-gptq-int4"
    assert default_output_dir(ExportArgs(model=str(checkpoint), quant_method="fp8")) == f"{checkpoint}-fp8"


def test_push_to_hub_reaches_the_hub_client_and_fails_clearly_offline(trained, tmp_path, capsys):
    _, adapter, _ = trained
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id USER/NAME"):
        export_main(["--adapters", adapter, "--merge_lora", "true", "--push_to_hub", "true", "--output_dir", str(tmp_path / "a")])
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match=rf"--push_to_hub: uploading {out} to the hub repository me/tiny failed \(.*\); the folder is kept"):
        export_main(["--adapters", adapter, "--merge_lora", "true", "--push_to_hub", "true", "--hub_model_id", "me/tiny",
                     "--hub_private_repo", "true", "--output_dir", str(out), "--safe_serialization", "false"])
    assert os.path.exists(out / "model.safetensors")  # exported first; safetensors whatever --safe_serialization says
    assert "--safe_serialization false: PyTorch .bin files need torch; writing safetensors instead" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match=rf"uploading {adapter} to the hub repository me/tiny failed"):
        export_main(["--adapters", adapter, "--push_to_hub", "true", "--hub_model_id", "me/tiny"])  # the checkpoint itself
