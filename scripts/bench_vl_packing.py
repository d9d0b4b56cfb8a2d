"""Multimodal training throughput, packed against padded, in one run (the seed's "multimodal packing: 100%
faster" claim for Qwen2-VL / Qwen2.5-VL).

    python scripts/bench_vl_packing.py                    # CPU: tiny random Qwen2-VL (attention-bound)
    python scripts/bench_vl_packing.py --preset cpu-wide  # CPU: wider language model (MLP-bound, like real ones)
    python scripts/bench_vl_packing.py --preset gpu-2b    # one GPU: Qwen2-VL-2B-sized random model, bf16

Both variants train the same random Qwen2-VL (full fine-tuning, AdamW) on the same synthetic image rows,
encoded by the real data path (ms-swift's `qwen2_vl` template, the PIL image processor, `<image>` tags):
images of random sizes (so random vision-token counts) and log-normal text lengths. `padded`: one sample per
row, rows padded to the batch's length bucket and patch bucket (`data.vision_batching.padded_batches`);
`packed`: best-fit packing of tokens and patches into `max_length` rows (`packed_batches`). Each variant
goes through the same samples; warm-up steps (compilation) are excluded; tokens/s counts real tokens.
The last line reads `ratio packed/padded: R`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {
    "cpu": dict(text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2),
                vision=dict(depth=2, embed_dim=64, hidden_size=128, num_heads=2, mlp_ratio=2, patch_size=4),
                image_px=(24, 72), text_mean=48, max_length=512, rows=4, samples=96, dtype="float32"),
    "cpu-wide": dict(text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                               num_key_value_heads=2),
                     vision=dict(depth=1, embed_dim=64, hidden_size=512, num_heads=2, mlp_ratio=2, patch_size=4),
                     image_px=(24, 72), text_mean=48, max_length=512, rows=4, samples=64, dtype="float32"),
    "ci": dict(text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1),
               vision=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4),
               image_px=(16, 32), text_mean=16, max_length=128, rows=2, samples=12, dtype="float32"),
    "gpu-2b": dict(text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                             num_key_value_heads=2),
                   vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14),
                   image_px=(224, 672), text_mean=300, max_length=4096, rows=8, samples=512, dtype="bfloat16"),
}
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def build_folder(preset: dict, path: str) -> str:
    """A random Qwen2-VL checkpoint folder (bundled tokenizer + vision tokens, image processor)."""
    import torch
    import transformers

    from swift_jax.data import BUNDLED_TOKENIZER_DIR

    tok = transformers.AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER_DIR)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    ids = tok.convert_tokens_to_ids(VISION_TOKENS)
    text = {**preset["text"], "vocab_size": len(tok), "max_position_embeddings": 32768,
            "rope_parameters": dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    text["rope_parameters"]["mrope_section"] = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    vision = {**preset["vision"], "temporal_patch_size": 2, "spatial_merge_size": 2}
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, vision_start_token_id=ids[0],
                                        vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3])
    torch.manual_seed(0)
    transformers.Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    px = preset["image_px"][1]
    transformers.Qwen2VLImageProcessorPil(patch_size=vision["patch_size"], merge_size=2, temporal_patch_size=2,
                                          min_pixels=64, max_pixels=px * px).save_pretrained(path)
    return path


def synthetic_samples(preset: dict, folder: str, model_config):
    """`(samples, VisionData)`: encoded image rows (the training data path), random image sizes, log-normal
    text lengths."""
    from PIL import Image
    from transformers import AutoTokenizer

    from swift_jax.data import DataArgs
    from swift_jax.data.formats import normalize
    from swift_jax.data.media import row_media
    from swift_jax.data.vision import VisionData

    rs = np.random.RandomState(0)
    tok = AutoTokenizer.from_pretrained(folder)
    vision = VisionData.from_pretrained(folder, model_config.vision)
    encoder = DataArgs(template=vision.template).chat_encoder(tok)
    words = "the a cat dog sees red blue green image left right top bottom small large".split()
    lo, hi = preset["image_px"]
    samples = []
    while len(samples) < preset["samples"]:
        h, w = rs.randint(lo, hi + 1, 2)
        image = Image.fromarray(rs.randint(0, 255, (h, w, 3), np.uint8))
        n = int(np.clip(rs.lognormal(np.log(preset["text_mean"]), 0.6), 4, preset["max_length"] // 3))
        text = " ".join(rs.choice(words, n))
        row = {"messages": [{"role": "user", "content": "<image>" + text[: len(text) // 3]},
                            {"role": "assistant", "content": text[len(text) // 3:]}], "images": [image]}
        encoded = vision.encode(encoder, normalize(row, media=True), row_media(row), "synthetic")
        if len(encoded["input_ids"]) > preset["max_length"]:
            continue
        encoded["labels"][0] = -100
        samples.append({"input_ids": encoded["input_ids"], "labels": encoded["labels"], **vision.layout(encoded)})
    return samples, vision


def batches(variant: str, samples: list[dict], preset: dict, merge_unit: int) -> list[dict]:
    import grain

    from swift_jax.data import vision_batching

    ds = grain.MapDataset.source(samples).to_iter_dataset()
    if variant == "packed":
        out = vision_batching.packed_batches(ds, preset["rows"], preset["max_length"], 0, merge_unit, num_bins=64,
                                             seed=0, shuffle=False)
    else:
        out = vision_batching.padded_batches(ds, preset["rows"], preset["max_length"], 0, merge_unit)
    return list(out)


def run(variant: str, preset: dict, folder: str) -> dict:
    """Train on every batch of `variant` once (after one warm-up pass over each new shape)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import swift_jax
    from swift_jax.trainer.method import LanguageModeling

    model = swift_jax.load_model(folder, dtype=preset["dtype"])
    samples, vision = synthetic_samples(preset, folder, model.config)
    data = batches(variant, samples, preset, model.config.vision.merge_unit)
    method = LanguageModeling(vision=vision)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-5), wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, optimizer, batch):
        def loss_fn(model):
            out = method.loss(model, batch, None)
            return out.loss_sum / jnp.maximum(out.count, 1)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    shapes, warm = set(), 0.0
    tokens, elapsed = 0, 0.0
    for batch in data:
        arrays = {k: jnp.asarray(v) for k, v in batch.items()}
        key = tuple((k, v.shape) for k, v in sorted(arrays.items()))
        if key not in shapes:  # compile this shape outside the timing
            shapes.add(key)
            start = time.perf_counter()
            jax.block_until_ready(step(model, optimizer, arrays))
            warm += time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(step(model, optimizer, arrays))
        elapsed += time.perf_counter() - start
        tokens += int((batch["segment_ids"] > 0).sum())
    slots = sum(b["segment_ids"].size for b in data)
    return {"variant": variant, "steps": len(data), "real_tokens": tokens, "tokens_per_sec": tokens / elapsed,
            "fill": tokens / slots, "compiles": len(shapes), "warmup_s": warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--variant", choices=("packed", "padded"), help="(internal) run one variant and print JSON")
    parser.add_argument("--folder", help="(internal) the model folder")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    if args.variant:
        print(json.dumps(run(args.variant, preset, args.folder)))
        return
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(preset, tmp)
        results = {}
        for variant in ("packed", "padded"):  # each in its own process: clean memory and compilation caches
            proc = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--variant", variant, "--folder", folder],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| variant | steps | real tokens | real tok/s | slots filled | compiles | warm-up s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results.values():
        print(f"| {r['variant']} | {r['steps']} | {r['real_tokens']} | {r['tokens_per_sec']:.0f} | {r['fill']:.1%} | "
              f"{r['compiles']} | {r['warmup_s']:.1f} |")
    print(f"ratio packed/padded: {results['packed']['tokens_per_sec'] / results['padded']['tokens_per_sec']:.2f}")


if __name__ == "__main__":
    main()
