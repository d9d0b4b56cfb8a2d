"""InternVL (`internvl_hf`) and Gemma 3 (`gemma3_vision`) image rows encode exactly as ms-swift's own templates
(golden files from scripts/record_ms_swift_internvl.py: same token ids, labels and tiles per row, at the real
processors' sizes: 448 px tiles, 256 tokens a tile; 896 px images, 256 tokens each)."""

import json
import os
from types import SimpleNamespace

import pytest
import transformers

from swift_jax.data import DataArgs
from swift_jax.data.formats import normalize
from swift_jax.data.media import row_media
from swift_jax.data.vision import VisionData

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = os.path.join(ROOT, "tests", "golden", "vl_tiles")
IMAGES = os.path.join(ROOT, "tests", "golden", "vl")


def _vision(template: str, tok) -> VisionData:
    folder = os.path.join(GOLDEN, template)
    if template == "internvl_hf":
        processor = transformers.GotOcr2ImageProcessorPil.from_pretrained(folder)
        config = SimpleNamespace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), tokens_per_tile=256)
        return VisionData("internvl", config, processor, template)
    processor = transformers.Gemma3ImageProcessorPil.from_pretrained(folder)
    config = SimpleNamespace(image_token_id=tok.convert_tokens_to_ids("<image_soft_token>"), mm_tokens_per_image=256)
    bounds = tuple(tok.convert_tokens_to_ids(["<start_of_image>", "<end_of_image>"]))
    return VisionData("gemma3", config, processor, template, image_bounds=bounds)


@pytest.mark.parametrize("template", ["internvl_hf", "gemma3_vision"])
def test_encodings_equal_ms_swift(template):
    with open(os.path.join(GOLDEN, "ms_swift_tiles.json")) as f:
        golden = json.load(f)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(GOLDEN, template))
    vision = _vision(template, tok)
    encoder = DataArgs(template=template).chat_encoder(tok)
    for name, row in golden["rows"].items():
        expected = golden["encoded"][template][name]
        got = vision.encode(encoder, normalize(row, media=True), row_media(row, name, base=IMAGES), name)
        assert got["input_ids"].tolist() == expected["input_ids"], name
        assert got["labels"].tolist() == expected["labels"], name
        assert len(got["pixel_values"]) == expected["tiles"], name
