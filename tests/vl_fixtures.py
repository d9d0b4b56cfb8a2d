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
