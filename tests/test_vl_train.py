"""Multimodal training batches (Qwen2-VL family): the SFT loss's forward on padded and packed batches
(per-row patches, M-RoPE per segment) gives transformers' logits for each sample, and `swift-jax sft` on the
bundled image rows trains (LoRA, packed, with validation; loss falls)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import swift_jax
from swift_jax.data import DataArgs, vision_batching
from swift_jax.data.formats import normalize
from swift_jax.data.media import row_media
from swift_jax.data.vision import VisionData
from swift_jax.models.vision.rows import row_embeds
from vl_fixtures import build_vl_folder, color_image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(ROOT, "swift_jax", "assets", "vl_demo")
TOL = 1e-4


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def folder(request, tmp_path_factory):
    return build_vl_folder(str(tmp_path_factory.mktemp(request.param)), request.param, max_pixels=48 * 48)


def _samples(folder, model):
    """Three encoded rows: one image, two images of other sizes (one tagged), and a two-frame video."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with pytest.MonkeyPatch.context() as env:  # ms-swift's variable: 4 tokens a frame pair, not 128 (tiny rows)
        env.setenv("VIDEO_MIN_TOKEN_NUM", "4")
        vision = VisionData.from_pretrained(folder, model.config.vision)
    encoder = DataArgs(template=vision.template).chat_encoder(tok)
    paths = []
    for i, (color, size) in enumerate([((200, 0, 0), (32, 32)), ((0, 200, 0), (24, 40)), ((0, 0, 200), (48, 40))]):
        paths.append(os.path.join(folder, f"{i}.png"))
        color_image(color, size).save(paths[-1])
    rows = [
        {"messages": [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "red"}], "images": paths[:1]},
        {"messages": [{"role": "user", "content": "First <image>, then"}, {"role": "assistant", "content": "two"}], "images": paths[1:]},
        {"messages": [{"role": "user", "content": "<video>Video?"}, {"role": "assistant", "content": "blue"}], "videos": [[paths[0], paths[0]]]},
    ]
    out = []
    for row in rows:
        encoded = vision.encode(encoder, normalize(row, media=True), row_media(row), "row")
        out.append((encoded, {**encoded, **vision.layout(encoded)}))
    return out


@nnx.jit
def _logits(model, batch):
    embeds = row_embeds(model, batch["input_ids"], batch)
    positions = jnp.moveaxis(batch["positions"], -1, 0)
    return model.logits(model.model(batch["input_ids"], positions, batch["segment_ids"], embeds=embeds))


def _hf_logits(hf, encoded):
    keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    vision = {k: torch.as_tensor(encoded[k]) for k in keys if k in encoded}
    ids = torch.as_tensor(encoded["input_ids"][None].astype(np.int64))
    cfg = hf.config
    types = (ids == cfg.image_token_id) * 1 + (ids == cfg.video_token_id) * 2
    with torch.no_grad():
        return hf(input_ids=ids, mm_token_type_ids=types, **vision).logits[0].numpy()


def test_padded_and_packed_batches_give_transformers_logits(folder):
    ours = swift_jax.load_model(folder)
    hf = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    samples = _samples(folder, ours)
    refs = [_hf_logits(hf, encoded) for encoded, _ in samples]
    unit, lengths = ours.config.vision.merge_unit, [len(e["input_ids"]) for e, _ in samples]

    padded = vision_batching.frame_slots([vision_batching.pad_row(s, 128, 256, 0, unit) for _, s in samples], unit)
    batch = {k: jnp.asarray(np.stack([r[k] for r in padded])) for k in padded[0]}
    logits = np.asarray(_logits(ours, batch))
    padded_diff = max(float(np.abs(logits[i, :n] - refs[i]).max()) for i, n in enumerate(lengths))

    ds = __import__("grain").MapDataset.source([s for _, s in samples]).to_iter_dataset()
    (packed,) = list(vision_batching.packed_batches(ds, 1, 256, 0, unit, num_bins=1, seed=0, shuffle=False))
    assert sorted(np.unique(packed["segment_ids"][0]).tolist()) == [0, 1, 2, 3]  # all three samples in one row
    assert len(np.unique(packed["frame_ids"][0][packed["frame_ids"][0] > 0])) == 4  # 1 + 2 images + 1 video frame pair
    assert packed["frame_ids"].shape[1] == 4  # one slot per frame
    logits = np.asarray(_logits(ours, {k: jnp.asarray(v) for k, v in packed.items()}))[0]
    seg = packed["segment_ids"][0]
    packed_diff = 0.0
    for s in (1, 2, 3):
        ids = packed["input_ids"][0][seg == s]
        i = next(i for i, n in enumerate(lengths) if n == len(ids) and (samples[i][0]["input_ids"] == ids).all())
        packed_diff = max(packed_diff, float(np.abs(logits[seg == s] - refs[i]).max()))
    print(f"padded {padded_diff:.2e} packed {packed_diff:.2e}")
    assert padded_diff < TOL and packed_diff < TOL


def _train(tmp_path, folder, *extra):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "swift_jax.train", "--model", folder, "--dtype", "float32",
           "--dataset", os.path.join(DEMO, "train.jsonl"), "--max_length", "128", "--per_device_train_batch_size", "4",
           "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--report_to", "none", "--fsdp_size", "1",
           "--data_parallel_size", "-1", "--output_dir", str(out), "--save_steps", "1000", *extra]
    # VIDEO_MIN_TOKEN_NUM (ms-swift's variable): the demo's video rows fit --max_length 128 (128 tokens by default)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "VIDEO_MIN_TOKEN_NUM": "4"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = os.listdir(out)
    with open(out / run / "logging.jsonl") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_sft_on_the_bundled_image_rows_lowers_the_loss(tmp_path):
    """LoRA, packed, with validation batches (padded); full fine-tuning runs in scripts/bench_vl_packing.py."""
    folder = build_vl_folder(str(tmp_path / "model"), "qwen2_vl")
    losses = _train(tmp_path, folder, "--max_steps", "4", "--tuner_type", "lora", "--lora_rank", "8", "--learning_rate",
                    "1e-2", "--packing", "true", "--split_dataset_ratio", "0.2", "--eval_steps", "2")
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1, losses
