"""Record ms-swift's own encodings of multimodal rows (input_ids, labels) as golden files for
tests/test_vl_data.py.

Run with ms-swift's python (never from tests; CI does not install ms-swift), with qwen-vl-utils (which
ms-swift's Qwen2-VL template calls) on the path:

    /opt/msswift/bin/python -m pip install --target /tmp/msswift_extra --no-deps qwen-vl-utils
    PYTHONPATH=/tmp/msswift_extra /opt/msswift/bin/python scripts/record_ms_swift_vl.py

(ms-swift's venv has no torchvision, which qwen-vl-utils imports for videos only: see import_qwen_vl_utils.)

A processor folder is built offline (tests/golden/vl/processor: the bundled ChatML tokenizer plus Qwen2-VL's
vision tokens, and Qwen2-VL's image processor at its real patch sizes, 14 px patches merged 2x2); for each
template and row of ROWS, ms-swift's `get_template(...).encode(row)` runs in training mode. Images are sized to
multiples of 28 px, where qwen-vl-utils' resize (ms-swift's) and the image processor's agree. A row ms-swift
refuses is recorded as {"error": message}.
"""

from __future__ import annotations

import datetime
import json
import os
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "vl")
PROCESSOR = os.path.join(OUT, "processor")
BUNDLED = os.path.join(ROOT, "swift_jax", "assets", "tokenizer")
IMAGES = {"square.png": (56, 56), "wide.png": (56, 84), "tall.png": (112, 56)}
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
ROWS = {
    "one_image_no_tag": {"messages": [{"role": "user", "content": "What is in the picture?"},
                                      {"role": "assistant", "content": "A square."}], "images": ["square.png"]},
    "tagged_mid_text": {"messages": [{"role": "user", "content": "Look: <image> and tell me."},
                                     {"role": "assistant", "content": "It is wide."}], "images": ["wide.png"]},
    "two_images_one_tag_system": {"messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Compare with <image>"},
                                               {"role": "assistant", "content": "Different."}],
                                  "images": ["square.png", "tall.png"]},
    "two_rounds": {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Grey."},
                                {"role": "user", "content": "And this <image>?"}, {"role": "assistant", "content": "Also grey."}],
                   "images": ["tall.png", "wide.png"]},
}
TEMPLATES = ["qwen2_vl", "qwen2_5_vl"]
# video frames: (height, width, count). qwen-vl-utils resizes each frame as an image (PIL; factor 56: fetch_video
# passes its factor 28 as fetch_image's patch size, which fetch_image multiplies by the merge size 2), pads the
# count to FRAME_FACTOR 2, then fits the video inside VIDEO_MIN/MAX_TOKEN_NUM (a torchvision resize):
# "exact" needs neither resize, "odd" only the PIL one, "small" is upscaled by the torchvision one
FRAMES = {"exact": (336, 392, 2), "odd": (320, 330, 3), "small": (56, 84, 2)}
VIDEO_ROWS = {
    "video_two_frames": {"messages": [{"role": "user", "content": "What happens?"},
                                      {"role": "assistant", "content": "Nothing."}],
                         "videos": [[f"exact_{i}.png" for i in range(2)]]},
    "video_three_frames_tagged": {"messages": [{"role": "user", "content": "Watch <video> and say."},
                                               {"role": "assistant", "content": "It moves."}],
                                  "videos": [[f"odd_{i}.png" for i in range(3)]]},
    "video_small_upscaled": {"messages": [{"role": "user", "content": "<video>Colour?"},
                                          {"role": "assistant", "content": "Grey."}],
                             "videos": [[f"small_{i}.png" for i in range(2)]]},
}
SAMPLES = 512  # pixel values recorded per video row (evenly strided), besides shape, sum and sum of squares


def build_processor():
    import numpy as np
    from PIL import Image
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    os.makedirs(PROCESSOR, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(BUNDLED)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tok.save_pretrained(PROCESSOR)
    Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2).save_pretrained(PROCESSOR)
    for i, (name, (h, w)) in enumerate(IMAGES.items()):
        pixels = (np.arange(h * w * 3).reshape(h, w, 3) * (i + 3) % 251).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(OUT, name))
    for name, (h, w, count) in FRAMES.items():
        y, x = np.mgrid[:h, :w]
        for i in range(count):  # smooth gradients (small PNGs) with a few sharp stripes (resizing shows)
            pixels = np.stack([(x * 255 // w + 40 * i) % 256, (y * 255 // h) % 256, ((x // 7 + y // 5 + i) % 2) * 200], -1)
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(OUT, f"{name}_{i}.png"))


def _tensor_resize(video, size, interpolation=None, antialias=True):
    """torchvision's `transforms.functional.resize` of a uint8 `[frames, C, H, W]` tensor, bicubic with
    antialias (what fetch_video calls): unchanged at its own size, else torch's antialiased bicubic
    interpolation, clamped and rounded back to uint8, as torchvision does."""
    import torch

    if list(video.shape[-2:]) == list(size):
        return video
    out = torch.nn.functional.interpolate(video.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 255).round().to(torch.uint8)


def pixel_summary(values) -> dict:
    """Shape, sum, sum of squares and SAMPLES evenly strided values of a pixel array (float64 sums)."""
    import numpy as np

    flat = np.asarray(values, np.float64).reshape(-1)
    picks = np.linspace(0, flat.size - 1, SAMPLES).round().astype(int)
    return {"shape": list(np.shape(values)), "sum": float(flat.sum()), "sum_sq": float((flat ** 2).sum()),
            "indices": picks.tolist(), "values": flat[picks].tolist()}


def _normalize(video, mean, std, inplace=False):
    """torchvision's `normalize`: (x - mean) / std per channel of a `[..., C, H, W]` tensor."""
    import torch

    mean, std = (torch.as_tensor(v, dtype=video.dtype).view(-1, 1, 1) for v in (mean, std))
    return (video - mean) / std


def _rgb_only(video):
    assert video.shape[-3] == 3, video.shape
    return video


def import_qwen_vl_utils():
    """qwen-vl-utils and transformers' Qwen2VLVideoProcessor import torchvision, which ms-swift's venv lacks
    (and whose PyPI wheels do not load beside its CPU torch); they are imported with a stand-in holding only
    what they call here: fetch_video's `transforms.functional.resize` (_tensor_resize) and the video
    processor's `normalize` (rescale fused in) and `grayscale_to_rgb` (frames are RGB). The stand-in is removed
    again; returns the video processor class."""
    import sys
    import types

    import transformers  # noqa: F401 (settles transformers' torchvision probe before the stand-in exists)

    names = ["torchvision", "torchvision.io", "torchvision.transforms", "torchvision.transforms.v2",
             "torchvision.transforms.v2.functional"]
    stub = {name: types.ModuleType(name) for name in names}
    stub["torchvision.transforms"].InterpolationMode = types.SimpleNamespace(
        BICUBIC=3, BILINEAR=2, NEAREST=0, NEAREST_EXACT=0, LANCZOS=1, BOX=4, HAMMING=5)
    stub["torchvision.transforms"].functional = types.SimpleNamespace(resize=_tensor_resize)
    tvf = stub["torchvision.transforms.v2.functional"]
    tvf.normalize, tvf.grayscale_to_rgb = _normalize, _rgb_only
    sys.modules.update(stub)
    try:
        import qwen_vl_utils  # noqa: F401
        import transformers.image_processing_backends as backends
        import transformers.models.qwen2_vl.video_processing_qwen2_vl as qwen2_vl_videos
        import transformers.video_processing_utils as video_utils

        for module in (backends, qwen2_vl_videos, video_utils):
            module.tvF = tvf  # bound only when torchvision is installed
    finally:
        for name in names:
            sys.modules.pop(name)
    return qwen2_vl_videos.Qwen2VLVideoProcessor


def main():
    video_processor_cls = import_qwen_vl_utils()
    import swift
    from swift.template import get_template
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    build_processor()
    tok = AutoTokenizer.from_pretrained(PROCESSOR)
    # the tokenizer stands in for Qwen2VLProcessor (whose constructor wants torchvision): ms-swift's Qwen2-VL
    # template reads only `processor.image_processor` / `video_processor` and tokenizes with the tokenizer
    processor = tok
    processor.image_processor = Qwen2VLImageProcessor.from_pretrained(PROCESSOR)
    processor.video_processor = video_processor_cls(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor.model_info = SimpleNamespace(config=None, task_type="causal_lm", max_model_len=100000, model_dir=PROCESSOR,
                                           torch_dtype=None)
    processor.model_meta = SimpleNamespace(is_multimodal=True)
    golden = {"ms_swift": swift.__version__, "date": datetime.date.today().isoformat(), "rows": ROWS, "encoded": {},
              "video_rows": VIDEO_ROWS, "video_encoded": {}}
    for name in TEMPLATES:
        template = get_template(processor, template_type=name)
        # ms-swift hard-codes Qwen's vocabulary ids of the pad tokens (151655, 151656); here they are the tiny
        # tokenizer's (the same tokens, as in a real Qwen2-VL tokenizer)
        template.image_token_id, template.video_token_id = tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
        template.set_mode("train")
        results = {}
        for row_name, row in ROWS.items():
            row = json.loads(json.dumps(row))
            row["images"] = [os.path.join(OUT, p) for p in row["images"]]
            try:
                enc = template.encode(row)
                results[row_name] = {"input_ids": list(enc["input_ids"]), "labels": list(enc["labels"]),
                                     "image_grid_thw": enc["image_grid_thw"].tolist()}
            except Exception as e:
                results[row_name] = {"error": f"{type(e).__name__}: {e}"}
        golden["encoded"][name] = results
        # --loss_scale all trains the user turns too, but never a media tag's replacement (ms-swift's
        # `_pre_tokenize` gives it loss_scale 0): <|vision_start|> and <|vision_end|> stay -100
        template_all = get_template(processor, template_type=name, loss_scale="all")
        template_all.image_token_id, template_all.video_token_id = template.image_token_id, template.video_token_id
        template_all.set_mode("train")
        golden.setdefault("encoded_loss_scale_all", {})[name] = {}
        for row_name, row in ROWS.items():
            row = json.loads(json.dumps(row))
            row["images"] = [os.path.join(OUT, p) for p in row["images"]]
            enc = template_all.encode(row)
            golden["encoded_loss_scale_all"][name][row_name] = {"input_ids": list(enc["input_ids"]),
                                                                "labels": list(enc["labels"])}
        videos = {}
        for row_name, row in VIDEO_ROWS.items():
            row = json.loads(json.dumps(row))
            row["videos"] = [[os.path.join(OUT, p) for p in frames] for frames in row["videos"]]
            try:
                enc = template.encode(row)
                videos[row_name] = {"input_ids": list(enc["input_ids"]), "labels": list(enc["labels"]),
                                    "video_grid_thw": enc["video_grid_thw"].tolist(),
                                    "pixel_values_videos": pixel_summary(enc["pixel_values_videos"].numpy())}
                if "second_per_grid_ts" in enc:
                    videos[row_name]["second_per_grid_ts"] = [float(x) for x in enc["second_per_grid_ts"]]
            except Exception as e:
                videos[row_name] = {"error": f"{type(e).__name__}: {e}"}
        golden["video_encoded"][name] = videos
    with open(os.path.join(OUT, "ms_swift_vl.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    print("recorded", {t: sorted(r) for t, r in golden["encoded"].items()})
    print("videos", {t: {n: r.get("error") or r["video_grid_thw"] for n, r in v.items()}
                     for t, v in golden["video_encoded"].items()})


if __name__ == "__main__":
    main()
