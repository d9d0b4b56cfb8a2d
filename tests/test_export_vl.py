"""Exports of LoRA-adapted vision-language models, checked by transformers and PEFT on image rows (float32
< 1e-4): the PEFT adapter (transformers' module names, adapters on the language model, vision tower and
aligner) loaded by `peft.PeftModel` on the HF model, and the merged checkpoint loaded by
`AutoModelForImageTextToText`, both give our logits."""

import jax
import numpy as np
import peft
import pytest
import transformers
from flax import nnx

import swift_jax
import test_models_gemma3_vl as gemma3_case
import test_models_internvl as internvl_case
import test_models_qwen2_vl as qwen2_vl_case
from swift_jax.hf.peft import load_peft_adapter, save_peft_adapter
from swift_jax.tuners.lora import lora_layers, loraize, merge_lora
from swift_jax.tuners.multimodal import lora_target_regex
from tiny_vlm import (
    build_hf_gemma3,
    build_hf_internvl,
    build_hf_vlm,
    gemma3_processor,
    hf_vlm_logits,
    image_processor,
    random_images,
    tile_processor,
    vision_row,
)

TOL = 1e-4


def _qwen2_vl_row():
    out = image_processor()(random_images([(16, 24)]), return_tensors="np")
    pixels, grid = out["pixel_values"], out["image_grid_thw"]
    ids = np.asarray([vision_row([1, 2], grid, [5, 6, 7])])
    mask = np.ones_like(ids)
    hf = lambda m: hf_vlm_logits(m, ids, mask, pixel_values=pixels, image_grid_thw=grid)  # noqa: E731
    return hf, lambda model: qwen2_vl_case._ours(model, ids, mask, pixels, grid)


def _internvl_row():
    out = tile_processor()(random_images([(20, 40)]), return_tensors="np")
    pixels, tiles = out["pixel_values"], int(out["num_patches"][0])
    ids = np.asarray([[1, 2] + [internvl_case.IMAGE] * (internvl_case.TOKENS_PER_TILE * tiles) + [5, 6]])
    positions, segments = np.arange(ids.shape[1])[None], np.ones_like(ids)
    hf = lambda m: internvl_case._hf(m, ids, pixels)  # noqa: E731
    return hf, lambda model: internvl_case._ours(model, ids, segments, positions, pixels, shape=(1, ids.shape[1]))


def _gemma3_row():
    pixels = gemma3_processor()(random_images([(20, 30)]), return_tensors="np")["pixel_values"]
    ids = np.asarray([gemma3_case.ROWS[1]])
    positions, segments = np.arange(ids.shape[1])[None], np.ones_like(ids)
    hf = lambda m: gemma3_case._hf(m, ids, pixels)  # noqa: E731
    return hf, lambda model: gemma3_case._ours(model, ids, segments, positions, pixels, shape=(1, ids.shape[1]))


CASES = {
    "qwen2_vl": (lambda: build_hf_vlm("qwen2_vl"), _qwen2_vl_row),
    "qwen2_5_vl": (lambda: build_hf_vlm("qwen2_5_vl", tie_word_embeddings=True), _qwen2_vl_row),
    "internvl": (build_hf_internvl, _internvl_row),
    "gemma3": (build_hf_gemma3, _gemma3_row),
}


class _EveryPart:  # LoRA all-linear on the language model, vision tower and aligner
    freeze_llm, freeze_vit, freeze_aligner = False, False, False


@pytest.mark.parametrize("kind", list(CASES))
def test_peft_adapter_and_merged_export(kind, tmp_path):
    build, row = CASES[kind]
    build().save_pretrained(tmp_path / "base")
    base = str(tmp_path / "base")
    hf_logits, our_logits = row()
    model = swift_jax.load_model(base)
    regex = lora_target_regex(model, _EveryPart)
    loraize(model, target_regex=regex, rank=4, alpha=8.0, dropout=0.0, rngs=nnx.Rngs(0))
    key = jax.random.key(1)
    for _, linear in lora_layers(model):  # a trained-looking adapter: B no longer zero
        key, sub = jax.random.split(key)
        b = linear.lora.lora_b
        b[...] = 0.1 * jax.random.normal(sub, b.shape, b.dtype)
    ours = our_logits(model)

    save_peft_adapter(model, str(tmp_path / "adapter"), base_model_name_or_path=base, target_regex=regex)
    hf = transformers.AutoModelForImageTextToText.from_pretrained(base, attn_implementation="eager").eval()
    assert np.abs(hf_logits(hf) - ours).max() > 1e-3  # the adapters matter
    adapted = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    assert np.abs(hf_logits(adapted) - ours).max() < TOL

    again = swift_jax.load_model(base)  # and the adapter reads back into our model, tensor for tensor
    load_peft_adapter(again, str(tmp_path / "adapter"))
    for (path, linear), (_, other) in zip(lora_layers(model), lora_layers(again), strict=True):
        np.testing.assert_array_equal(np.asarray(linear.lora.lora_b[...]), np.asarray(other.lora.lora_b[...]), path)

    merge_lora(model)
    swift_jax.save_pretrained(model, str(tmp_path / "merged"))
    load = transformers.AutoModelForImageTextToText.from_pretrained
    merged = load(str(tmp_path / "merged"), attn_implementation="eager")
    assert np.abs(hf_logits(merged.eval()) - ours).max() < TOL


def test_processor_files_travel_with_exports(tmp_path):
    """A merged VL export carries the base folder's image / video processor configs (AutoProcessor reads them)."""
    from swift_jax.hf.hub import copy_tokenizer_files

    names = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json", "chat_template.json")
    (tmp_path / "base").mkdir()
    (tmp_path / "out").mkdir()
    for name in names:
        (tmp_path / "base" / name).write_text("{}")
    copy_tokenizer_files(str(tmp_path / "base"), str(tmp_path / "out"))
    assert all((tmp_path / "out" / name).exists() for name in names)
