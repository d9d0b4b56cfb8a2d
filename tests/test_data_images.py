"""Images for vision-language rows: reading, the checkpoint's PIL image processor (equal to what
transformers' AutoImageProcessor gives for the folder; Qwen2-VL patches and InternVL tiles), `max_pixels`,
and the expansion of image pad tokens to the model's vision token counts."""

import base64
import io
import json

import numpy as np
import pytest
import transformers

from swift_jax.data.errors import DataError
from swift_jax.data.images import (
    expand_vision_pads,
    image_processor,
    preprocess_images,
    read_image,
    vision_token_counts,
)
from swift_jax.modeling import model_config, read_hf_config
from tiny_vlm import (
    IMAGE,
    INTERN_TEXT,
    INTERN_VISION,
    PATCH,
    TEXT,
    VISION,
    image_processor as tiny_processor,
    random_images,
    tile_processor,
    vision_row,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A Qwen2-VL folder with config.json and preprocessor_config.json (no weights are needed)."""
    path = tmp_path_factory.mktemp("qwen2_vl")
    config = transformers.Qwen2VLConfig(
        text_config=TEXT, vision_config={**VISION["qwen2_vl"], **PATCH}, image_token_id=IMAGE
    )
    config.save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return str(path)


IMAGES = random_images([(40, 28), (16, 24), (90, 50)])


def _reference(model_dir, **kw):
    out = transformers.AutoImageProcessor.from_pretrained(model_dir, **kw)(IMAGES, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


def _grids(processor):
    return preprocess_images(processor, IMAGES)["image_grid_thw"]


def test_pixels_and_grids_equal_transformers(model_dir):
    out = preprocess_images(image_processor(model_dir), IMAGES)
    pixels, grids = out["pixel_values"], out["image_grid_thw"]
    ref_pixels, ref_grids = _reference(model_dir)
    np.testing.assert_array_equal(grids, ref_grids)
    np.testing.assert_array_equal(pixels, ref_pixels)
    assert grids.tolist()[:2] == [[1, 10, 8], [1, 4, 6]]  # sides rounded to multiples of patch * merge = 8
    assert pixels.shape == (int(np.prod(grids, axis=-1).sum()), 3 * 2 * 4 * 4) and pixels.dtype == np.float32


def test_max_pixels_argument_and_environment(model_dir, monkeypatch):
    full = _grids(image_processor(model_dir))
    capped = _grids(image_processor(model_dir, max_pixels=16 * 16))
    np.testing.assert_array_equal(capped, _reference(model_dir, max_pixels=16 * 16)[1])
    assert (np.prod(capped[:, 1:], -1) * 16 <= 16 * 16).all() and capped[2].prod() < full[2].prod()
    monkeypatch.setenv("MAX_PIXELS", str(16 * 16))
    np.testing.assert_array_equal(_grids(image_processor(model_dir)), capped)


def test_folder_without_preprocessor_config_uses_vision_patch_sizes(model_dir, tmp_path):
    with open(f"{model_dir}/config.json") as f:
        (tmp_path / "config.json").write_text(f.read())
    processor = image_processor(str(tmp_path), min_pixels=64, max_pixels=48 * 48)
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (4, 2, 2)
    np.testing.assert_array_equal(_grids(processor), _reference(model_dir)[1])


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no image processor for model_type='llama'"):
        image_processor(str(tmp_path))


def test_read_image_sources(tmp_path):
    image = IMAGES[1]
    path = tmp_path / "a.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    for source in (str(path), b64, "data:image/png;base64," + b64, image):
        np.testing.assert_array_equal(np.asarray(read_image(source)), np.asarray(image))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    cases = {
        "https://x/y.png": "remote image",
        str(tmp_path / "missing.png"): "neither an existing file nor base64",
        str(tmp_path / "bad.png"): "cannot read the image",
    }
    for source, message in cases.items():
        with pytest.raises(DataError, match=f"train.jsonl, line 3: images\\[0\\]: .*{message}"):
            read_image(source, where="train.jsonl, line 3: images[0]")


def test_internvl_tiles_equal_transformers(tmp_path):
    config = transformers.InternVLConfig(
        text_config={"model_type": "qwen2", **INTERN_TEXT}, vision_config=INTERN_VISION, image_token_id=IMAGE
    )
    config.save_pretrained(tmp_path)
    tile_processor().save_pretrained(tmp_path)
    out = preprocess_images(image_processor(str(tmp_path)), IMAGES)
    ref = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))(IMAGES, return_tensors="np")
    np.testing.assert_array_equal(out["pixel_values"], ref["pixel_values"])
    np.testing.assert_array_equal(out["num_patches"], ref["num_patches"])
    # wide images: tiles + a thumbnail; the square one: one tile; each tile is 4 tokens after the pixel shuffle
    vision = model_config(read_hf_config(str(tmp_path)))[0].vision
    assert vision_token_counts(vision, out) == [4 * n for n in ref["num_patches"]] and out["num_patches"][1] == 3
    # without preprocessor_config.json: InternVL's tiling (up to 12 tiles + thumbnail) at the encoder's image_size
    (tmp_path / "preprocessor_config.json").unlink()
    default = transformers.GotOcr2ImageProcessorPil(
        size={"height": 16, "width": 16}, crop_to_patches=True, max_patches=12
    )
    ref = default(IMAGES, return_tensors="np")
    out = preprocess_images(image_processor(str(tmp_path)), IMAGES)
    np.testing.assert_array_equal(out["num_patches"], ref["num_patches"])
    np.testing.assert_array_equal(out["pixel_values"], ref["pixel_values"])


def test_expand_vision_pads_matches_grids_and_masks_labels(model_dir):
    grids = np.array([[1, 10, 8], [1, 4, 6]])
    counts = vision_token_counts(model_config(read_hf_config(model_dir))[0].vision, {"image_grid_thw": grids})
    assert counts == [20, 6]
    prompt = [1, 153, IMAGE, 154, 153, IMAGE, 154, 5]  # one pad token per image, as the template writes it
    ids, labels = expand_vision_pads(prompt, counts, pad_token_id=IMAGE, labels=list(range(len(prompt))))
    assert ids == vision_row([1], grids, [5])
    assert [lab for t, lab in zip(ids, labels) if t == IMAGE] == [-100] * (20 + 6)
    assert [lab for t, lab in zip(ids, labels) if t != IMAGE] == [i for i, t in enumerate(prompt) if t != IMAGE]
    with pytest.raises(DataError, match="row 7: 2 image placeholders for 1 images"):
        expand_vision_pads(prompt, counts[:1], pad_token_id=IMAGE, where="row 7")
