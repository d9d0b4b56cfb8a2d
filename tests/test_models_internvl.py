"""InternVL logits parity with transformers' `InternVLForConditionalGeneration` on image rows (float32
< 1e-4): dynamically tiled images in right-padded and packed rows, and a save transformers loads back."""

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

import swift_jax
from tiny_vlm import IMAGE, build_hf_internvl, random_images, right_pad, tile_processor

TOL = 1e-4
TOKENS_PER_TILE = 4  # 16x16 tiles of 4x4 patches, pixel-shuffled 2x2
# qwen2 text model, untied, q/k norms and a final encoder norm; llama text model, tied, plain encoder.
CASES = [
    (
        "qwen2-untied-qknorm",
        dict(text_type="qwen2", tie_word_embeddings=False, use_qk_norm=True, use_mean_pooling=False),
    ),
    ("llama-tied-rmsnorm", dict(text_type="llama", tie_word_embeddings=True, norm_type="rms_norm")),
]


@pytest.fixture(scope="module", params=CASES, ids=[name for name, _ in CASES])
def pair(request, tmp_path_factory):
    hf = build_hf_internvl(**request.param[1])
    path = tmp_path_factory.mktemp(request.param[0])
    hf.save_pretrained(path)
    return hf, swift_jax.load_model(str(path))


@pytest.fixture(scope="module")
def tiles():
    """Processor outputs for a wide image (2 tiles + thumbnail) and a square one (1 tile)."""
    out = tile_processor()(random_images([(20, 40), (16, 16)]), return_tensors="np")
    return out["pixel_values"], [int(n) for n in out["num_patches"]]


@nnx.jit
def _forward(model, ids, positions, segment_ids, pixel_values):
    return model(ids, positions=positions, segment_ids=segment_ids, pixel_values=pixel_values)


def _ours(model, ids, segment_ids, positions, pixel_values, shape=(2, 24)):
    """Our logits `[rows, len]`, computed on rows padded to one static shape (one compilation per case)."""
    rows, length = ids.shape
    pad = lambda a: jnp.asarray(np.pad(a, ((0, shape[0] - rows), (0, shape[1] - length))))  # noqa: E731
    logits = _forward(model, pad(ids), pad(positions), pad(segment_ids), jnp.asarray(pixel_values))
    return np.asarray(logits)[:rows, :length]


def _hf(model, ids, pixel_values, mask=None):
    import torch

    kw = {} if mask is None else {"attention_mask": torch.as_tensor(mask)}
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids), pixel_values=torch.as_tensor(pixel_values), **kw).logits.numpy()


def _rows(num_tiles):
    return [
        [1, 2] + [IMAGE] * (TOKENS_PER_TILE * num_tiles[0]) + [5, 6],
        [3] + [IMAGE] * (TOKENS_PER_TILE * num_tiles[1]) + [7],
    ]


# Each case returns the worst logit difference; the tests bound it, scripts/parity_report.py prints it.
def padded_diff(hf, ours, tiles) -> float:
    """Two right-padded rows: a wide image (tiles + thumbnail) and a square one."""
    pixel_values, num_tiles = tiles
    ids, mask = right_pad(_rows(num_tiles))
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    ref, got = _hf(hf, ids, pixel_values, mask), _ours(ours, ids, mask, positions, pixel_values)
    return max(float(np.abs(ref[r, : int(m.sum())] - got[r, : int(m.sum())]).max()) for r, m in enumerate(mask))


def packed_diff(hf, ours, tiles) -> float:
    """Both rows packed in one (positions restart per segment) against each row alone."""
    pixel_values, num_tiles = tiles
    rows = _rows(num_tiles)
    ids = np.asarray([rows[0] + rows[1]])
    segments = np.asarray([[1] * len(rows[0]) + [2] * len(rows[1])])
    positions = np.asarray([list(range(len(rows[0]))) + list(range(len(rows[1])))])
    got = _ours(ours, ids, segments, positions, pixel_values)[0]
    split, worst = np.cumsum([0, *num_tiles]), 0.0
    for k, row in enumerate(rows):
        ref = _hf(hf, np.asarray([row]), pixel_values[split[k] : split[k + 1]])[0]
        start = len(rows[0]) if k else 0
        worst = max(worst, float(np.abs(ref - got[start : start + len(row)]).max()))
    return worst


@pytest.mark.parametrize("case", [padded_diff, packed_diff], ids=["padded", "packed"])
def test_logits_parity(pair, tiles, case):
    hf, ours = pair
    assert case(hf, ours, tiles) < TOL


def test_save_then_transformers_load(pair, tiles, tmp_path):
    hf, ours = pair
    swift_jax.save_pretrained(ours, str(tmp_path))
    reloaded = transformers.AutoModelForImageTextToText.from_pretrained(
        str(tmp_path), attn_implementation="eager"
    ).eval()
    assert type(reloaded) is type(hf)
    assert padded_diff(reloaded, ours, tiles) < TOL
