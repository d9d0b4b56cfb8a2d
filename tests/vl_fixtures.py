"""Tiny Qwen2-VL / Qwen2.5-VL checkpoint folders built offline for the data, training and inference tests:
the bundled ChatML tokenizer plus Qwen2-VL's vision tokens, a random float32 model (tiny_vlm's sizes) and
its PIL image processor and video processor configs."""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers
from PIL import Image

from swift_jax.data import BUNDLED_TOKENIZER_DIR
from tiny_vlm import CLASSES, PATCH, TEXT, VISION

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def vl_tokenizer():
    """The bundled tokenizer with Qwen2-VL's vision tokens (ids 1000-1003)."""
    tok = transformers.AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER_DIR)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    return tok


def build_vl_folder(path: str, kind: str = "qwen2_vl", seed: int = 0, max_pixels: int = 32 * 32) -> str:
    """A complete tiny `kind` checkpoint folder at `path` (weights, config, tokenizer, processors)."""
    tok = vl_tokenizer()
    ids = tok.convert_tokens_to_ids(VISION_TOKENS)
    torch.manual_seed(seed)
    config_cls, model_cls = CLASSES[kind]
    config = config_cls(
        text_config={**TEXT, "vocab_size": len(tok), "max_position_embeddings": 512},
        vision_config={**VISION[kind], **PATCH},
        vision_start_token_id=ids[0],
        vision_end_token_id=ids[1],
        image_token_id=ids[2],
        video_token_id=ids[3],
        tie_word_embeddings=False,
    )
    model = model_cls(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    sizes = dict(patch_size=4, merge_size=2, temporal_patch_size=2)
    transformers.Qwen2VLImageProcessorPil(**sizes, min_pixels=64, max_pixels=max_pixels).save_pretrained(path)
    with open(os.path.join(path, "video_preprocessor_config.json"), "w") as f:
        import json

        json.dump({**sizes, "size": {"shortest_edge": 64, "longest_edge": max_pixels},
                   "video_processor_type": "Qwen2VLVideoProcessor"}, f)
    return path


def color_image(color, size=(32, 32)) -> Image.Image:
    """A flat-colour RGB image with a little noise."""
    rs = np.random.RandomState(sum(color))
    pixels = np.clip(np.asarray(color)[None, None] + rs.randint(-20, 20, (*size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>"]


def build_internvl_folder(path: str, seed: int = 0) -> str:
    """A complete tiny InternVL checkpoint folder at `path`: the bundled tokenizer plus InternVL's image
    tokens, a random float32 `InternVLForConditionalGeneration` (tiny_vlm's 16x16 tiles, 4 tokens a tile) and
    its PIL dynamic-tiling processor (up to 4 tiles plus a thumbnail)."""
    from tiny_vlm import INTERN_TEXT, INTERN_VISION, tile_processor

    tok = transformers.AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER_DIR)
    tok.add_special_tokens({"additional_special_tokens": INTERNVL_TOKENS})
    torch.manual_seed(seed)
    config = transformers.InternVLConfig(
        text_config={"model_type": "qwen2", **INTERN_TEXT, "vocab_size": len(tok), "max_position_embeddings": 512},
        vision_config=dict(INTERN_VISION),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        tie_word_embeddings=False,
    )
    transformers.InternVLForConditionalGeneration(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    tile_processor().save_pretrained(path)
    return path


GEMMA3_TOKENS = ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]


def build_gemma3_folder(path: str, seed: int = 0) -> str:
    """A complete tiny Gemma 3 image-text checkpoint folder at `path`: the bundled tokenizer plus Gemma's turn
    and image tokens, a random float32 `Gemma3ForConditionalGeneration` (tiny_vlm's sizes: 16x16 images, 4
    tokens an image, a sliding window shorter than an image) and its PIL image processor."""
    from tiny_vlm import GEMMA3_SIGLIP, GEMMA3_TEXT, gemma3_processor

    tok = transformers.AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER_DIR)
    tok.add_special_tokens({"additional_special_tokens": GEMMA3_TOKENS})
    ids = dict(zip(GEMMA3_TOKENS, tok.convert_tokens_to_ids(GEMMA3_TOKENS)))
    torch.manual_seed(seed)
    config = transformers.Gemma3Config(
        text_config={**GEMMA3_TEXT, "vocab_size": len(tok), "max_position_embeddings": 512},
        vision_config=GEMMA3_SIGLIP,
        mm_tokens_per_image=4,
        image_token_index=ids["<image_soft_token>"],
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        tie_word_embeddings=True,
    )
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial norms (Gemma's are 1 + w)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 * torch.randn_like(p) + (0.0 if "language_model" in name or "mm_soft" in name else 1.0))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    gemma3_processor().save_pretrained(path)
    return path


# --- image rows of the tile models (InternVL, Gemma 3): tests/test_vl_internvl.py, tests/test_vl_gemma3.py ---

def tile_model_folder(path: str, build) -> str:
    """A tiny checkpoint folder made by `build` plus three images of different shapes (0.png square)."""
    build(path)
    for i, (color, size) in enumerate([((200, 0, 0), (16, 16)), ((0, 200, 0), (20, 40)), ((0, 0, 200), (40, 24))]):
        color_image(color, size).save(os.path.join(path, f"{i}.png"))
    return path


def encode_tile_rows(folder: str, model):
    """`(vision, tokenizer, encoded)` of three rows: one image, two images (one tagged), one image again."""
    from swift_jax.data import DataArgs
    from swift_jax.data.formats import normalize
    from swift_jax.data.media import row_media
    from swift_jax.data.vision import VisionData

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    vision = VisionData.from_pretrained(folder, model.config.vision)
    encoder = DataArgs(template=vision.template).chat_encoder(tok)
    p = [os.path.join(folder, f"{i}.png") for i in range(3)]
    rows = [
        {"messages": [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "red"}], "images": p[:1]},
        {"messages": [{"role": "user", "content": "First <image>, then"}, {"role": "assistant", "content": "two"}], "images": p[1:]},
        {"messages": [{"role": "user", "content": "And this?"}, {"role": "assistant", "content": "green"}], "images": p[1:2]},
    ]
    return vision, tok, [vision.encode(encoder, normalize(r, media=True), row_media(r), "row") for r in rows]


def padded_and_packed_logit_diffs(model, vision, encoded, refs, max_tiles: int):
    """`(padded batch, packed batch, padded diff, packed diff)`: the encoded rows as one padded batch and one
    packed row (tile_batching), each sample's logits against its reference `refs[i]` (max abs difference)."""
    import grain
    import jax.numpy as jnp
    from flax import nnx

    from swift_jax.data import tile_batching
    from swift_jax.models.vision.tiles import row_hidden_states

    @nnx.jit
    def logits_of(model, batch):
        hidden = row_hidden_states(model, batch["input_ids"], batch["positions"], batch["segment_ids"], batch["pixel_values"])
        return model.logits(hidden)

    samples = [{"input_ids": e["input_ids"], "labels": e["labels"], **vision.layout(e)} for e in encoded]
    module, tile = vision.batching
    assert module is tile_batching
    padded = tile_batching.pad_group(samples, 128, 0, tile)
    logits = np.asarray(logits_of(model, {k: jnp.asarray(v) for k, v in padded.items()}))
    padded_diff = max(float(np.abs(logits[i, : len(e["input_ids"])] - refs[i]).max()) for i, e in enumerate(encoded))

    ds = grain.MapDataset.source(samples).to_iter_dataset()
    (packed,) = list(tile_batching.packed_batches(ds, 1, 256, 0, tile, num_bins=1, seed=0, shuffle=False, max_tiles=max_tiles))
    seg = packed["segment_ids"][0]
    logits = np.asarray(logits_of(model, {k: jnp.asarray(v) for k, v in packed.items()}))[0]
    packed_diff = 0.0
    for s in np.unique(seg[seg > 0]):
        ids = packed["input_ids"][0][seg == s]
        i = next(i for i, e in enumerate(encoded) if len(e["input_ids"]) == len(ids) and (e["input_ids"] == ids).all())
        packed_diff = max(packed_diff, float(np.abs(logits[seg == s] - refs[i]).max()))
    return padded, packed, padded_diff, packed_diff
