"""Record ms-swift's own encodings of InternVL and Gemma 3 image rows (input_ids, labels, tiles per image) as
golden files for tests/test_vl_tiles_golden.py.

Run with ms-swift's python (never from tests; CI does not install ms-swift):

    /opt/msswift/bin/python scripts/record_ms_swift_internvl.py

Processor folders are built offline under tests/golden/vl_tiles/ (the bundled ChatML tokenizer plus each
model's image tokens, and the model's image processor at its real sizes: InternVL 448 px tiles, up to 12 plus a
thumbnail, 256 tokens a tile; Gemma 3 896 px images, 256 tokens each); the rows and images are those of
scripts/record_ms_swift_vl.py (tests/golden/vl/). For each template ms-swift's `get_template(...).encode(row)`
runs in training mode, with the tokenizer standing in for the multimodal processor (the templates read only
its image processor, `image_seq_length` / `full_image_sequence` and token ids).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from record_ms_swift_vl import BUNDLED, OUT as IMAGES_DIR, ROWS, ROOT  # noqa: E402

OUT = os.path.join(ROOT, "tests", "golden", "vl_tiles")
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>"]
GEMMA3_TOKENS = ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
TOKENS_PER_IMAGE = 256


def build_processors() -> dict[str, str]:
    """template -> processor folder (tokenizer + image processor config)."""
    from transformers import AutoTokenizer, Gemma3ImageProcessorPil, GotOcr2ImageProcessorPil

    folders = {}
    for template, tokens, processor in (
        ("internvl_hf", INTERNVL_TOKENS, GotOcr2ImageProcessorPil(size={"height": 448, "width": 448},
                                                                   crop_to_patches=True, max_patches=12)),
        ("gemma3_vision", GEMMA3_TOKENS, Gemma3ImageProcessorPil(size={"height": 896, "width": 896})),
    ):
        folder = folders[template] = os.path.join(OUT, template)
        os.makedirs(folder, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(BUNDLED)
        tok.add_special_tokens({"additional_special_tokens": tokens})
        tok.save_pretrained(folder)
        processor.save_pretrained(folder)
    return folders


def stand_in(folder: str, template: str):
    """The tokenizer dressed as the model's processor (what ms-swift's template reads of it)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.image_processor = AutoImageProcessor.from_pretrained(folder)
    if template == "internvl_hf":
        tok.image_seq_length = TOKENS_PER_IMAGE
    else:
        tok.image_token_id = tok.convert_tokens_to_ids("<image_soft_token>")
        tok.full_image_sequence = f"\n\n<start_of_image>{'<image_soft_token>' * TOKENS_PER_IMAGE}<end_of_image>\n\n"
    tok.model_info = SimpleNamespace(config=None, task_type="causal_lm", max_model_len=100000, model_dir=folder,
                                     torch_dtype=None)
    tok.model_meta = SimpleNamespace(is_multimodal=True)
    return tok


def main():
    import swift
    from swift.template import get_template

    folders = build_processors()
    golden = {"ms_swift": swift.__version__, "date": datetime.date.today().isoformat(), "rows": ROWS, "encoded": {}}
    for name, folder in folders.items():
        processor = stand_in(folder, name)
        template = get_template(processor, template_type=name)
        if name == "gemma3_vision":  # ms-swift hard-codes Gemma's vocabulary id of <start_of_image>
            template.boi_token_id = processor.convert_tokens_to_ids("<start_of_image>")
        template.set_mode("train")
        results = {}
        for row_name, row in ROWS.items():
            row = json.loads(json.dumps(row))
            row["images"] = [os.path.join(IMAGES_DIR, p) for p in row["images"]]
            try:
                enc = template.encode(row)
                results[row_name] = {"input_ids": list(map(int, enc["input_ids"])), "labels": list(map(int, enc["labels"])),
                                     "tiles": int(len(enc["pixel_values"]))}
            except Exception as e:
                results[row_name] = {"error": f"{type(e).__name__}: {e}"}
        golden["encoded"][name] = results
    with open(os.path.join(OUT, "ms_swift_tiles.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    lengths = {t: {r: v.get("error", len(v.get("input_ids", []))) for r, v in res.items()} for t, res in golden["encoded"].items()}
    print("recorded (tokens per row)", lengths)


if __name__ == "__main__":
    main()
