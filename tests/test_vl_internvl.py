"""InternVL image rows end to end (tiny random checkpoint folder): encoded rows (dynamic tiling, `<img>
<IMG_CONTEXT>*n </img>` expanded, image tokens never trained) in padded and packed training batches give
transformers' logits for each sample (float32 < 1e-4), greedy generation with an image equals
`transformers.generate`, and `swift-jax sft` trains on the bundled image rows."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.data.vision import IGNORE, VisionData, prompt_inputs
from swift_jax.generation import GenerationConfig, Generator
from swift_jax.models.vision.tiles import tile_shape
from vl_fixtures import build_internvl_folder, encode_tile_rows, padded_and_packed_logit_diffs, tile_model_folder

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(ROOT, "swift_jax", "assets", "vl_demo")
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tile_model_folder(str(tmp_path_factory.mktemp("internvl")), build_internvl_folder)


@pytest.fixture(scope="module")
def models(folder):
    hf = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return hf, swift_jax.load_model(folder)


def _hf_logits(hf, encoded):
    ids = torch.as_tensor(encoded["input_ids"][None].astype(np.int64))
    with torch.no_grad():
        return hf(input_ids=ids, pixel_values=torch.as_tensor(encoded["pixel_values"])).logits[0].numpy()


def test_rows_encode_tiles_and_untrained_image_tokens(folder, models):
    vision, tok, encoded = encode_tile_rows(folder, models[1])
    image = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    tiles = [len(e["pixel_values"]) for e in encoded]
    assert tiles == [1, 3 + 3, 3]  # square: one tile; 20x40 and 40x24: two tiles + a thumbnail each
    for e, n in zip(encoded, tiles):
        assert e["pixel_values"].shape[1:] == tile_shape(vision.config) == (3, 16, 16)
        assert (e["input_ids"] == image).sum() == 4 * n
        assert (e["labels"][e["input_ids"] == image] == IGNORE).all()
    text = tok.decode(encoded[0]["input_ids"])
    assert text.startswith("<|im_start|>user\n<img><IMG_CONTEXT>") and "</img>\nWhat colour?" in text


def test_padded_and_packed_batches_give_transformers_logits(folder, models):
    hf, ours = models
    vision, _, encoded = encode_tile_rows(folder, ours)
    refs = [_hf_logits(hf, e) for e in encoded]
    padded, packed, padded_diff, packed_diff = padded_and_packed_logit_diffs(ours, vision, encoded, refs, max_tiles=16)
    assert padded["pixel_values"].shape == (3, 8, 3, 16, 16)  # the most tiles (6) bucketed to 8
    seg = packed["segment_ids"][0]
    assert sorted(np.unique(seg).tolist()) == [0, 1, 2, 3] and packed["pixel_values"].shape == (1, 16, 3, 16, 16)
    print(f"internvl padded {padded_diff:.2e} packed {packed_diff:.2e}")
    assert padded_diff < TOL and packed_diff < TOL


def test_greedy_generation_with_an_image_equals_transformers(folder, models):
    hf, ours = models
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    vision = VisionData.from_pretrained(folder, ours.config.vision)
    encoder = DataArgs(template=vision.template).chat_encoder(tok)
    messages = [{"role": "user", "content": "<image>Describe."}]
    prompts = [prompt_inputs(vision, encoder, messages, media={"image": [os.path.join(folder, f"{i}.png")], "video": []})
               for i in (1, 0)]
    outs = Generator(ours, tok).generate_ids(prompts, GenerationConfig(max_new_tokens=6, eos_token_ids=()))
    for prompt, out, i in zip(prompts, outs, (1, 0)):
        pixels = vision.pixels({"image": [os.path.join(folder, f"{i}.png")], "video": []}, "row")["pixel_values"]
        with torch.no_grad():
            ref = hf.generate(input_ids=torch.as_tensor([prompt.ids]), pixel_values=torch.as_tensor(pixels),
                              max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert list(out.token_ids) == ref[0, len(prompt.ids):].tolist()


def test_sft_on_the_bundled_image_rows_runs(tmp_path, folder):
    """LoRA, packed, two steps on the bundled image rows (its video rows are Qwen2-VL's only)."""
    with open(os.path.join(DEMO, "train.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "videos" not in r]
    for r in rows:
        r["images"] = [os.path.join(DEMO, x) for x in r["images"]]
    data = tmp_path / "images.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "swift_jax.train", "--model", folder, "--dtype", "float32", "--dataset", str(data),
           "--max_length", "256", "--per_device_train_batch_size", "2",
           "--max_steps", "2", "--tuner_type", "lora", "--lora_rank", "4", "--packing", "true", "--logging_steps", "1",
           "--report_to", "none", "--fsdp_size", "1", "--data_parallel_size", "-1", "--output_dir", str(tmp_path / "out"),
           "--save_steps", "1000"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = os.listdir(tmp_path / "out")
    with open(tmp_path / "out" / run / "logging.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses


def test_infer_answers_image_rows(tmp_path, folder):
    from swift_jax import infer

    row = {"messages": [{"role": "user", "content": "<image>What colour?"}], "images": [os.path.join(folder, "1.png")]}
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n" + json.dumps({**row, "images": [os.path.join(folder, "0.png")]}) + "\n")
    result = tmp_path / "result.jsonl"
    infer.main(["--model", folder, "--val_dataset", str(data), "--max_new_tokens", "3", "--result_path", str(result)])
    rows = [json.loads(line) for line in open(result)]
    assert len(rows) == 2 and all(r["images"] and isinstance(r["response"], str) for r in rows)
