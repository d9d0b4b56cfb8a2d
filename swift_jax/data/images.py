"""Images for vision-language rows: reading them (local path, base64, data URL), the checkpoint's image
processor (transformers' PIL/numpy path: no torch or torchvision at run time), and the expansion of
each image pad token of a tokenized prompt into the number of vision tokens its grid yields.

The processor settings come from the checkpoint's `preprocessor_config.json`; folders without one get
the processor's defaults at the vision config's patch sizes. `max_pixels` (ms-swift's `--max_pixels`
and `MAX_PIXELS` variable) caps the resized image area.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import json
import os
from typing import Any

import numpy as np
from PIL import Image

from .errors import DataError


def _qwen2_vl_defaults(vision: dict[str, Any]) -> dict[str, Any]:
    sizes = {
        "patch_size": "patch_size",
        "temporal_patch_size": "temporal_patch_size",
        "merge_size": "spatial_merge_size",
    }
    return {ours: vision[theirs] for ours, theirs in sizes.items() if theirs in vision}


def _internvl_defaults(vision: dict[str, Any]) -> dict[str, Any]:
    """transformers' InternVL processing: tiles of the encoder's image_size, up to 12 plus a thumbnail."""
    size = vision.get("image_size", 448)
    height, width = (size, size) if isinstance(size, int) else size
    return {"size": {"height": height, "width": width}, "crop_to_patches": True, "max_patches": 12}


def _gemma3_defaults(vision: dict[str, Any]) -> dict[str, Any]:
    """transformers' Gemma 3 processing: one square image of the encoder's image_size (no pan and scan)."""
    size = vision.get("image_size", 896)
    return {"size": {"height": size, "width": size}}


_QWEN2_VL = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.Qwen2VLImageProcessorPil"
_GOT_OCR2 = "transformers.models.got_ocr2.image_processing_pil_got_ocr2.GotOcr2ImageProcessorPil"
_GEMMA3 = "transformers.models.gemma3.image_processing_pil_gemma3.Gemma3ImageProcessorPil"
# model_type -> (transformers' PIL image processor, its arguments from `vision_config` for folders without
# preprocessor_config.json, whether max_pixels / min_pixels apply)
IMAGE_PROCESSORS: dict[str, tuple[str, Any, bool]] = {
    "qwen2_vl": (_QWEN2_VL, _qwen2_vl_defaults, True),
    "qwen2_5_vl": (_QWEN2_VL, _qwen2_vl_defaults, True),
    "internvl": (_GOT_OCR2, _internvl_defaults, False),  # dynamic tiling (transformers' GotOcr2 processor)
    "gemma3": (_GEMMA3, _gemma3_defaults, False),
}


def read_image(source: Any, *, where: str = "image") -> Image.Image:
    """An RGB PIL image from a PIL image, a local path, a `data:image/...;base64,` URL or raw base64.

    `where` names the row and field in errors (e.g. "train.jsonl, line 3: images[0]"); remote URLs
    are an error, since nothing is downloaded.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if not isinstance(source, str) or not source:
        raise DataError(f"{where}: expected an image path or base64 string, got {type(source).__name__}")
    if source.startswith(("http://", "https://")):
        raise DataError(f"{where}: remote image {source[:80]!r} is not fetched; download it and give a local path")
    if source.startswith("data:"):
        data = source.partition(",")[2]
    elif os.path.exists(source):
        return _open(source, where)
    else:
        data = source
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{where}: {source[:80]!r} is neither an existing file nor base64 image data") from None
    return _open(io.BytesIO(raw), where)


def _open(file: Any, where: str) -> Image.Image:
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise DataError(f"{where}: cannot read the image ({err})") from None


def _processor_class(model_type: str):
    if model_type not in IMAGE_PROCESSORS:
        raise ValueError(f"no image processor for model_type={model_type!r}; supported: {sorted(IMAGE_PROCESSORS)}")
    module, _, name = IMAGE_PROCESSORS[model_type][0].rpartition(".")
    return getattr(importlib.import_module(module), name)


def image_processor(model_dir: str, *, max_pixels: int | None = None, min_pixels: int | None = None):
    """The PIL image processor of a vision-language checkpoint folder.

    Reads `preprocessor_config.json` when the folder has one (its `image_processor_type` may name the
    torchvision class: the PIL class of the same model is used instead), else transformers' defaults for
    the model at the sizes of `config.json`'s `vision_config`. `max_pixels` (Qwen2-VL family) defaults
    to `$MAX_PIXELS`.
    """
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    model_type = config.get("model_type", "<missing>")
    cls = _processor_class(model_type)
    _, defaults, pixel_limits = IMAGE_PROCESSORS[model_type]
    if max_pixels is None and os.environ.get("MAX_PIXELS"):
        max_pixels = int(os.environ["MAX_PIXELS"])
    overrides = {
        k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v is not None and pixel_limits
    }
    if os.path.exists(os.path.join(model_dir, "preprocessor_config.json")):
        return cls.from_pretrained(model_dir, **overrides)
    return cls(**defaults(config.get("vision_config") or {}), **overrides)


def preprocess_images(processor, images: list[Image.Image]) -> dict[str, np.ndarray]:
    """The processor's numpy outputs for PIL images: `pixel_values` (float32; Qwen2-VL `[patches,
    patch_dim]`, InternVL `[tiles, C, H, W]`, Gemma 3 `[images, C, H, W]`) and the per-image layout
    (`image_grid_thw` `[images, 3]` or InternVL's `num_patches` `[images]`, tiles per image)."""
    out = processor(images=images, return_tensors="np")
    return {k: np.asarray(v, np.float32 if k == "pixel_values" else np.int64) for k, v in out.items()}


def vision_token_counts(vision_config: Any, processed: dict[str, np.ndarray]) -> list[int]:
    """How many pad tokens each image of `preprocess_images` output becomes in the language model:
    Qwen2-VL `t*h*w / spatial_merge_size^2`, InternVL `tiles * tokens_per_tile`, Gemma 3
    `mm_tokens_per_image`."""
    if "image_grid_thw" in processed:
        return [int(n) for n in np.prod(processed["image_grid_thw"], axis=-1) // vision_config.merge_unit]
    if "num_patches" not in processed:  # one square image each (Gemma 3)
        return [vision_config.mm_tokens_per_image] * len(processed["pixel_values"])
    return [int(n) * vision_config.tokens_per_tile for n in processed["num_patches"]]


def expand_vision_pads(
    input_ids: list[int],
    counts: list[int],
    *,
    pad_token_id: int,
    labels: list[int] | None = None,
    where: str = "row",
) -> tuple[list[int], list[int] | None]:
    """Replace the k-th `pad_token_id` of a tokenized prompt by `counts[k]` copies (ms-swift's templates
    expand `<|image_pad|>` / `<IMG_CONTEXT>` so); their labels become -100: vision tokens are never trained.

    The number of pad tokens must equal the number of images (`len(counts)`).
    """
    found = [i for i, t in enumerate(input_ids) if t == pad_token_id]
    if len(found) != len(counts):
        raise DataError(f"{where}: {len(found)} image placeholders for {len(counts)} images")
    ids, out_labels, start = [], [] if labels is not None else None, 0
    for i, count in zip(found, counts):
        ids += list(input_ids[start:i]) + [pad_token_id] * count
        if labels is not None:
            out_labels += list(labels[start:i]) + [-100] * count
        start = i + 1
    ids += list(input_ids[start:])
    if labels is not None:
        out_labels += list(labels[start:])
    return ids, out_labels
