"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints and image rows built offline (the parity reference)."""

from __future__ import annotations

import numpy as np
import torch
import transformers
from PIL import Image

IMAGE, VIDEO, VISION_START, VISION_END = 151, 152, 153, 154
TEXT = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
)
VISION = {
    "qwen2_vl": dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
    # window_size 16 px = 2x2 merge units of 2x2 patches of 4 px: several windows per frame; block 1 is global.
    "qwen2_5_vl": dict(
        depth=3,
        hidden_size=32,
        out_hidden_size=64,
        intermediate_size=48,
        num_heads=2,
        window_size=16,
        fullatt_block_indexes=[1],
    ),
}
PATCH = dict(patch_size=4, temporal_patch_size=2, spatial_merge_size=2)
CLASSES = {
    "qwen2_vl": (transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration),
}


def build_hf_vlm(kind: str, seed: int = 0, **text_overrides) -> transformers.PreTrainedModel:
    """A float32 random HF vision-language model with non-trivial norm weights and biases."""
    torch.manual_seed(seed)
    config_cls, model_cls = CLASSES[kind]
    config = config_cls(
        text_config={**TEXT, **text_overrides},
        vision_config={**VISION[kind], **PATCH},
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=text_overrides.get("tie_word_embeddings", False),
    )
    model = model_cls(config)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def image_processor(**overrides) -> transformers.Qwen2VLImageProcessorPil:
    """transformers' PIL Qwen2-VL image processor at the tiny model's patch sizes."""
    kw = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=64, max_pixels=48 * 48)
    return transformers.Qwen2VLImageProcessorPil(**{**kw, **overrides})


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """RGB PIL images of the given (height, width) sizes, random pixels."""
    rs = np.random.RandomState(seed)
    return [Image.fromarray(rs.randint(0, 255, (h, w, 3), np.uint8)) for h, w in sizes]


def vision_row(prefix: list[int], grids, suffix: list[int], pad: int = IMAGE) -> list[int]:
    """Token ids: `prefix`, then per grid `<vision_start> pad * tokens <vision_end>`, then `suffix`."""
    row = list(prefix)
    for t, h, w in np.asarray(grids).tolist():
        row += [VISION_START] + [pad] * (t * h * w // 4) + [VISION_END]
    return row + list(suffix)


def right_pad(rows: list[list[int]], seq: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(input_ids, attention_mask)` `[batch, seq]` of right-padded rows."""
    seq = seq or max(map(len, rows))
    ids, mask = np.zeros((len(rows), seq), np.int64), np.zeros((len(rows), seq), np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    return ids, mask


def hf_vlm_logits(model, input_ids, attention_mask=None, **vision) -> np.ndarray:
    """transformers' logits for token rows with images/videos (`pixel_values`, `image_grid_thw`, ...)."""
    ids = torch.as_tensor(np.asarray(input_ids))
    types = torch.as_tensor((np.asarray(input_ids) == IMAGE) * 1 + (np.asarray(input_ids) == VIDEO) * 2)
    kwargs = {k: torch.as_tensor(np.asarray(v)) for k, v in vision.items()}
    mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, **kwargs).logits.float().numpy()


INTERN_TEXT = {k: v for k, v in TEXT.items() if k != "rope_parameters"}
INTERN_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=[16, 16],
    patch_size=[4, 4],
)


def build_hf_internvl(seed: int = 0, text_type: str = "qwen2", tie_word_embeddings: bool = True, **vision_overrides):
    """A float32 random `InternVLForConditionalGeneration` (16x16 tiles of 4x4 patches: 4 tokens a tile) with
    non-trivial norms, biases, layer scales, CLS token and position embeddings."""
    torch.manual_seed(seed)
    config = transformers.InternVLConfig(
        text_config={"model_type": text_type, **INTERN_TEXT},
        vision_config={**INTERN_VISION, **vision_overrides},
        image_token_id=IMAGE,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = transformers.InternVLForConditionalGeneration(config)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn_like(p))
            elif name.endswith("bias") or any(k in name for k in ("lambda", "cls_token", "position_embeddings")):
                p.copy_(0.1 * torch.randn_like(p) + (0.5 if "lambda" in name else 0.0))
    return model.eval()


def tile_processor() -> transformers.GotOcr2ImageProcessorPil:
    """transformers' PIL InternVL image processor (dynamic tiling) at the tiny model's 16x16 tiles."""
    return transformers.GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=True, max_patches=4)


GEMMA3_IMAGE = 125  # image token of the tiny Gemma 3 (vocab 128); 4 tokens per 16x16 image
GEMMA3_TEXT = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    sliding_window=3,  # shorter than an image's 4 tokens: the window cuts into the bidirectional block
    layer_types=["sliding_attention", "full_attention"],
)
GEMMA3_SIGLIP = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=16,
    patch_size=4,
    vision_use_head=False,  # as the released checkpoints
)


def build_hf_gemma3(seed: int = 0, tie_word_embeddings: bool = True) -> transformers.PreTrainedModel:
    """A float32 random `Gemma3ForConditionalGeneration` (16x16 images of 4x4 patches pooled 2x2: 4 tokens
    an image) with non-trivial norms, biases and projector."""
    torch.manual_seed(seed)
    config = transformers.Gemma3Config(
        text_config=GEMMA3_TEXT,
        vision_config=GEMMA3_SIGLIP,
        mm_tokens_per_image=4,
        image_token_index=GEMMA3_IMAGE,
        boi_token_index=126,
        eoi_token_index=127,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = transformers.Gemma3ForConditionalGeneration(config)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((0.0 if "language_model" in name or "mm_soft" in name else 1.0) + 0.5 * torch.randn_like(p))
            elif name.endswith("bias") or "position_embedding" in name or "mm_input_projection" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def gemma3_processor() -> transformers.Gemma3ImageProcessorPil:
    """transformers' PIL Gemma 3 image processor at the tiny model's 16x16 images."""
    return transformers.Gemma3ImageProcessorPil(size={"height": 16, "width": 16})
