"""Gemma 3 image-text logits parity with transformers' `Gemma3ForConditionalGeneration` (float32 < 1e-4):
images in right-padded and packed rows, image tokens attending to their whole image as transformers'
`token_type_ids` mask makes them, and a save that transformers loads back."""

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

import swift_jax
from swift_jax.data.images import preprocess_images, vision_token_counts
from tiny_vlm import GEMMA3_IMAGE, build_hf_gemma3, gemma3_processor, random_images, right_pad

TOL = 1e-4
TOKENS = 4  # per image


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def pair(request, tmp_path_factory):
    hf = build_hf_gemma3(tie_word_embeddings=request.param)
    path = tmp_path_factory.mktemp("gemma3")
    hf.save_pretrained(path)  # transformers 5 writes `vision_tower.*` (the hub: `vision_tower.vision_model.*`)
    return hf, swift_jax.load_model(str(path))


@pytest.fixture(scope="module")
def pixels():
    """Three 16x16 images from differently sized inputs, through transformers' PIL Gemma 3 processor."""
    return preprocess_images(gemma3_processor(), random_images([(20, 30), (16, 16), (40, 12)]))["pixel_values"]


@nnx.jit
def _forward(model, ids, positions, segment_ids, pixel_values):
    return model(ids, positions=positions, segment_ids=segment_ids, pixel_values=pixel_values)


def _ours(model, ids, segment_ids, positions, pixel_values, shape=(2, 24)):
    rows, length = ids.shape
    pad = lambda a: jnp.asarray(np.pad(a, ((0, shape[0] - rows), (0, shape[1] - length))))  # noqa: E731
    logits = _forward(model, pad(ids), pad(positions), pad(segment_ids), jnp.asarray(pixel_values))
    return np.asarray(logits)[:rows, :length]


def _hf(model, ids, pixel_values, mask=None):
    import torch

    ids = np.asarray(ids)
    kw = {} if mask is None else {"attention_mask": torch.as_tensor(mask)}
    types = torch.as_tensor((ids == GEMMA3_IMAGE).astype(np.int64))  # what Gemma3Processor returns
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids), pixel_values=torch.as_tensor(pixel_values), token_type_ids=types, **kw
        )
    return out.logits.numpy()


# Row 0: two images back to back with text around; row 1: one image.
ROWS = [
    [2, 7] + [GEMMA3_IMAGE] * TOKENS + [9] + [GEMMA3_IMAGE] * TOKENS + [5, 6, 8],
    [2, 3] + [GEMMA3_IMAGE] * TOKENS + [7],
]
SPLIT = [0, 2, 3]  # images of each row


def padded_diff(hf, ours, pixels) -> float:
    """Both rows right-padded in one batch against transformers on the same batch."""
    ids, mask = right_pad(ROWS)
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    ref, got = _hf(hf, ids, pixels, mask), _ours(ours, ids, mask, positions, pixels)
    return max(float(np.abs(ref[r, : int(m.sum())] - got[r, : int(m.sum())]).max()) for r, m in enumerate(mask))


def packed_diff(hf, ours, pixels) -> float:
    """Both rows packed in one (positions restart per segment) against each row alone."""
    ids = np.asarray([ROWS[0] + ROWS[1]])
    segments = np.asarray([[1] * len(ROWS[0]) + [2] * len(ROWS[1])])
    positions = np.asarray([list(range(len(ROWS[0]))) + list(range(len(ROWS[1])))])
    got, worst = _ours(ours, ids, segments, positions, pixels)[0], 0.0
    for k, row in enumerate(ROWS):
        ref = _hf(hf, np.asarray([row]), pixels[SPLIT[k] : SPLIT[k + 1]])[0]
        start = len(ROWS[0]) if k else 0
        worst = max(worst, float(np.abs(ref - got[start : start + len(row)]).max()))
    return worst


@pytest.mark.parametrize("case", [padded_diff, packed_diff], ids=["padded", "packed"])
def test_logits_parity(pair, pixels, case):
    hf, ours = pair
    assert case(hf, ours, pixels) < TOL


@pytest.mark.parametrize("pair", [True], ids=["tied"], indirect=True)
def test_image_tokens_attend_bidirectionally(pair, pixels):
    """With a causal mask over the image tokens the logits differ (the bidirectional mask is exercised)."""
    hf, ours = pair
    ids, mask = right_pad(ROWS)
    import torch

    with torch.no_grad():
        causal = hf(
            input_ids=torch.as_tensor(ids), pixel_values=torch.as_tensor(pixels), attention_mask=torch.as_tensor(mask)
        )
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    got = _ours(ours, ids, mask, positions, pixels)
    assert np.abs(causal.logits.numpy()[1, :7] - got[1, :7]).max() > 1e-3


@nnx.jit
def _cached_and_plain(model, row, pixels):
    """Logits of a prefill of all but the last token with a KV cache, then the last token decoded; and of
    the whole row without a cache."""
    from swift_jax.models.decoder import KVCache

    cache = KVCache.create(model.config, 1, 24)
    hidden, cache = model.hidden_states(row[:, :-1], cache=cache, pixel_values=pixels)
    step, _ = model.hidden_states(row[:, -1:], positions=jnp.full((1, 1), row.shape[1] - 1), cache=cache)
    cached = jnp.concatenate([model.logits(hidden), model.logits(step)], axis=1)
    return cached, model(row, pixel_values=pixels)


@pytest.mark.parametrize("pair", [True], ids=["tied"], indirect=True)  # one compilation is enough
def test_kv_cache_prefill_and_decode(pair, pixels):
    """A prefill holding the images through the KV cache, then one decoded token: the uncached logits
    (the bidirectional image blocks reach the cached attention too)."""
    _, ours = pair
    cached, plain = _cached_and_plain(ours, jnp.asarray([ROWS[0]]), jnp.asarray(pixels[:2]))
    assert np.abs(np.asarray(cached) - np.asarray(plain)).max() < 1e-5


def test_processor_and_token_counts(pair, pixels):
    hf, ours = pair
    assert pixels.shape == (3, 3, 16, 16)
    assert vision_token_counts(ours.config.vision, {"pixel_values": pixels}) == [TOKENS] * 3


def test_save_then_transformers_load(pair, pixels, tmp_path):
    hf, ours = pair
    swift_jax.save_pretrained(ours, str(tmp_path))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:  # the hub's names
        assert "vision_tower.vision_model.post_layernorm.weight" in f.keys()
    reloaded = transformers.AutoModelForImageTextToText.from_pretrained(str(tmp_path), attn_implementation="eager")
    reloaded.eval()
    assert type(reloaded) is type(hf)
    assert padded_diff(reloaded, ours, pixels) < TOL
    assert swift_jax.load_model(str(tmp_path)).config.vision == ours.config.vision
