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


def import_qwen_vl_utils():
    """qwen-vl-utils imports torchvision at the top for its video readers; ms-swift's venv has none and images
    never touch it, so it is imported with an empty stand-in that is removed again."""
    import sys
    import types

    import transformers  # noqa: F401 (settles transformers' torchvision probe before the stand-in exists)

    stub = types.ModuleType("torchvision")
    stub.io, stub.transforms = types.ModuleType("torchvision.io"), types.ModuleType("torchvision.transforms")
    stub.transforms.InterpolationMode = types.SimpleNamespace(BICUBIC=3, BILINEAR=2)
    sys.modules.update({"torchvision": stub, "torchvision.io": stub.io, "torchvision.transforms": stub.transforms})
    try:
        import qwen_vl_utils  # noqa: F401
    finally:
        for name in ("torchvision", "torchvision.io", "torchvision.transforms"):
            sys.modules.pop(name)


def main():
    import_qwen_vl_utils()
    import swift
    from swift.template import get_template
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    build_processor()
    tok = AutoTokenizer.from_pretrained(PROCESSOR)
    # the tokenizer stands in for Qwen2VLProcessor (whose constructor wants a torchvision video processor):
    # ms-swift's Qwen2-VL template reads only `processor.image_processor` and tokenizes with the tokenizer
    processor = tok
    processor.image_processor = Qwen2VLImageProcessor.from_pretrained(PROCESSOR)
    processor.model_info = SimpleNamespace(config=None, task_type="causal_lm", max_model_len=100000, model_dir=PROCESSOR,
                                           torch_dtype=None)
    processor.model_meta = SimpleNamespace(is_multimodal=True)
    golden = {"ms_swift": swift.__version__, "date": datetime.date.today().isoformat(), "rows": ROWS, "encoded": {}}
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
    with open(os.path.join(OUT, "ms_swift_vl.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    print("recorded", {t: sorted(r) for t, r in golden["encoded"].items()})


if __name__ == "__main__":
    main()
