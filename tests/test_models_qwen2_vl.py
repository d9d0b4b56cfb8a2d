"""Qwen2-VL / Qwen2.5-VL logits parity with transformers on image and video rows (float32 < 1e-4):
right-padded batches, several images in a row, videos, packed rows, text only, and a save that
transformers loads back."""

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

import swift_jax
from swift_jax.models.vision import VisionInputs, mrope_positions, patch_layout
from tiny_vlm import IMAGE, VIDEO, build_hf_vlm, hf_vlm_logits, image_processor, random_images, right_pad, vision_row

TOL = 1e-4
# (architecture, text overrides): Qwen2.5-VL-3B ties its embeddings, 7B does not.
CASES = [("qwen2_vl", {}), ("qwen2_5_vl", {"tie_word_embeddings": True})]


@pytest.fixture(scope="module", params=CASES, ids=[kind for kind, _ in CASES])
def pair(request, tmp_path_factory):
    """(HF reference model, our loaded model) for one architecture."""
    kind, overrides = request.param
    hf = build_hf_vlm(kind, **overrides)
    path = tmp_path_factory.mktemp(kind)
    hf.save_pretrained(path)
    ours = swift_jax.load_model(str(path))
    assert (ours.lm_head is None) == bool(overrides.get("tie_word_embeddings"))
    return hf, ours


@pytest.fixture(scope="module")
def images():
    """Processor outputs for three images of different sizes (grids 10x8, 4x6 and 6x6 patches)."""
    out = image_processor()(random_images([(40, 28), (16, 24), (24, 24)]), return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


SEQ, BATCH, PATCHES = 64, 2, 256  # every call is padded to one shape: one compilation per architecture


@nnx.jit
def _forward(model, ids, positions, segment_ids, vision):
    return model(ids, positions=positions, segment_ids=segment_ids, vision=vision)


def _ours(model, ids, mask, pixel_values, grid, *, videos=None, **position_kw):
    """Our logits `[rows, len]`: M-RoPE positions and the vision layout computed on the host from the
    grids, then rows, length and patches padded to one static shape."""
    cfg = model.config.vision
    video_pixels, video_grid = videos if videos is not None else (None, None)
    positions = mrope_positions(ids, cfg, grid, video_grid, segment_ids=mask, **position_kw)
    vision = VisionInputs.build(
        cfg, pixel_values, grid, pixel_values_videos=video_pixels, video_grid_thw=video_grid, num_patches=PATCHES
    )
    rows, length = ids.shape
    pad = ((0, BATCH - rows), (0, SEQ - length))
    padded = [np.pad(ids, pad), np.pad(positions, ((0, 0), *pad)), np.pad(mask, pad)]
    logits = _forward(model, *(jnp.asarray(a) for a in padded), vision)
    return np.asarray(logits)[:rows, :length]


def _worst(ref, got, mask) -> float:
    """Worst difference over each row's real (mask 1) positions."""
    return max(float(np.abs(ref[r, : int(m.sum())] - got[r, : int(m.sum())]).max()) for r, m in enumerate(mask))


# Each case returns the worst logit difference; the tests bound it, scripts/parity_report.py prints it.
def padded_diff(hf, ours, images) -> float:
    """Two right-padded rows with one image each (of different sizes)."""
    pixel_values, grid = images
    patches = int(np.prod(grid[:2], axis=-1).sum())
    ids, mask = right_pad([vision_row([1, 2], grid[:1], [5, 6, 7]), vision_row([3], grid[1:2], [8, 9])])
    assert mask.min() == 0
    ref = hf_vlm_logits(hf, ids, mask, pixel_values=pixel_values[:patches], image_grid_thw=grid[:2])
    return _worst(ref, _ours(ours, ids, mask, pixel_values[:patches], grid[:2]), mask)


def plain_diff(hf, ours, images) -> float:
    """One row with three images."""
    pixel_values, grid = images
    ids = np.asarray([vision_row([1], grid, [4, 5])])
    ref = hf_vlm_logits(hf, ids, pixel_values=pixel_values, image_grid_thw=grid)
    return _worst(ref, _ours(ours, ids, np.ones_like(ids), pixel_values, grid), np.ones_like(ids))


def video_diff(hf, ours, images) -> float:
    """A row with an image then a two-frame video (random patches: the model's inputs, not a decoder's)."""
    pixel_values, grid = images
    cfg = ours.config.vision
    video_grid = np.array([[2, 4, 4]])
    video_pixels = np.random.RandomState(1).randn(32, cfg.patch_dim).astype(np.float32)
    ids = np.asarray([vision_row([1], grid[1:2], []) + vision_row([6], video_grid, [7, 8], pad=VIDEO)])
    patches = slice(int(np.prod(grid[0])), int(np.prod(grid[:2], axis=-1).sum()))
    extra = {"second_per_grid_ts": np.array([0.5])} if cfg.kind == "qwen2_5_vl" else {}
    kw = dict(pixel_values=pixel_values[patches], image_grid_thw=grid[1:2])
    ref = hf_vlm_logits(hf, ids, **kw, pixel_values_videos=video_pixels, video_grid_thw=video_grid, **extra)
    got = _ours(
        ours, ids, np.ones_like(ids), pixel_values[patches], grid[1:2], videos=(video_pixels, video_grid), **extra
    )
    return _worst(ref, got, np.ones_like(ids))


def packed_diff(hf, ours, images) -> float:
    """Two image samples packed in one row (segments 1, 2, then padding) against each sample alone."""
    pixel_values, grid = images
    rows = [vision_row([1, 2], grid[:1], [5, 6, 7]), vision_row([3], grid[1:2], [8, 9])]
    patches = int(np.prod(grid[:2], axis=-1).sum())
    packed = np.zeros((1, len(rows[0]) + len(rows[1]) + 3), np.int64)
    segments = np.zeros_like(packed)
    packed[0, : len(rows[0]) + len(rows[1])] = rows[0] + rows[1]
    segments[0, : len(rows[0])], segments[0, len(rows[0]) : len(rows[0]) + len(rows[1])] = 1, 2
    got = _ours(ours, packed, segments, pixel_values[:patches], grid[:2])[0]
    worst, start = 0.0, 0
    for k, row in enumerate(rows):
        patch_slice = slice(int(np.prod(grid[:k], axis=-1).sum()), int(np.prod(grid[: k + 1], axis=-1).sum()))
        ref = hf_vlm_logits(
            hf, np.asarray([row]), pixel_values=pixel_values[patch_slice], image_grid_thw=grid[k : k + 1]
        )
        worst = max(worst, float(np.abs(ref[0] - got[start : start + len(row)]).max()))
        start += len(row)
    return worst


@pytest.mark.parametrize(
    "case", [padded_diff, plain_diff, video_diff, packed_diff], ids=["padded", "plain", "video", "packed"]
)
def test_logits_parity(pair, images, case):
    hf, ours = pair
    assert case(hf, ours, images) < TOL


def test_text_only_rows(pair):
    hf, ours = pair
    ids = np.random.RandomState(0).randint(0, 150, (2, 9))
    ref = hf_vlm_logits(hf, ids)
    np.testing.assert_array_less(np.abs(ref - np.asarray(ours(jnp.asarray(ids)))), TOL)


def test_positions_equal_get_rope_index(pair, images):
    """Our host-side M-RoPE positions are transformers' `get_rope_index`, padding included."""
    import torch

    hf, ours = pair
    _, grid = images
    ids, mask = right_pad([vision_row([1, 2], grid[:1], [5]), vision_row([3], grid[1:], [8, 9])])
    types = (ids == IMAGE).astype(np.int64)
    ref, _ = hf.model.get_rope_index(
        torch.as_tensor(ids),
        torch.as_tensor(types),
        image_grid_thw=torch.as_tensor(grid),
        attention_mask=torch.as_tensor(mask),
    )
    np.testing.assert_array_equal(mrope_positions(ids, ours.config.vision, grid, segment_ids=mask), ref.numpy())


def test_save_then_transformers_load(pair, images, tmp_path):
    hf, ours = pair
    swift_jax.save_pretrained(ours, str(tmp_path))
    reloaded = transformers.AutoModelForImageTextToText.from_pretrained(
        str(tmp_path), attn_implementation="eager"
    ).eval()
    assert type(reloaded) is type(hf)
    assert plain_diff(reloaded, ours, images) < TOL


def test_window_layout_has_several_windows_per_frame(pair, images):
    """The Qwen2.5-VL case really exercises window attention (else the parity above would not cover it)."""
    _, ours = pair
    layout = patch_layout(images[1][:1], ours.config.vision)
    windows = len(np.unique(layout["window_ids"]))
    assert windows == (6 if ours.config.vision.kind == "qwen2_5_vl" else 1), windows


def test_patches_in_transformers_window_order(pair, images):
    """Patches are reordered as transformers' `get_vision_window_index` does, so each window and each frame
    is one contiguous run (padding last), and the merged rows are put back in processor order."""
    import torch
    from transformers.vision_utils import get_vision_window_index

    _, ours = pair
    cfg = ours.config.vision
    pixel_values, grid = images
    vision = VisionInputs.build(cfg, pixel_values, grid, num_patches=PATCHES)
    real = int(np.prod(grid, axis=-1).sum())
    for ids in (np.asarray(vision.window_ids), np.asarray(vision.frame_ids)):
        assert (np.diff(ids[:real]) >= 0).all() and (ids[real:] == 0).all()
    units = np.asarray(vision.pixel_values)[: real : cfg.merge_unit]  # first patch of each unit, reordered
    np.testing.assert_array_equal(
        units[np.asarray(vision.unit_restore)[: real // cfg.merge_unit]], pixel_values[:: cfg.merge_unit]
    )
    if cfg.kind == "qwen2_5_vl":
        ref, _ = get_vision_window_index(torch.as_tensor(grid), cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
        np.testing.assert_array_equal(
            np.argsort(np.asarray(vision.unit_restore)[: real // cfg.merge_unit]), ref.numpy()
        )


# config.json in the layout of the hub's Qwen2-VL-2B-Instruct and Qwen2.5-VL-3B-Instruct (transformers 4.x: text
# fields at the top, `rope_scaling.type = mrope`, `in_chans`), with tiny sizes.
_HUB_TEXT = dict(
    bos_token_id=151643,
    eos_token_id=151645,
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    hidden_act="silu",
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_hidden_layers=2,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    sliding_window=32768,
    tie_word_embeddings=True,
    torch_dtype="bfloat16",
    use_sliding_window=False,
    vocab_size=151936,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
)
_VISION = dict(depth=4, num_heads=2, in_chans=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
HUB_CONFIGS = {
    "qwen2_vl": dict(vision_config=dict(embed_dim=32, mlp_ratio=4, hidden_size=64, **_VISION)),
    "qwen2_5_vl": dict(
        vision_config=dict(
            hidden_act="silu",
            hidden_size=32,
            intermediate_size=48,
            out_hidden_size=64,
            window_size=112,
            fullatt_block_indexes=[1, 3],
            tokens_per_second=2,
            **_VISION,
        ),
    ),
}


@pytest.mark.parametrize("model_type", list(HUB_CONFIGS))
def test_hub_layout_config_builds_transformers_architecture(model_type, tmp_path):
    """A 4.x-layout config.json reads into the architecture transformers builds (same parameter shapes)."""
    import json

    import torch

    from swift_jax.modeling import model_config, read_hf_config

    (tmp_path / "config.json").write_text(
        json.dumps({**_HUB_TEXT, "model_type": model_type, **HUB_CONFIGS[model_type]})
    )
    cfg, arch = model_config(read_hf_config(str(tmp_path)), scan_layers=False)  # one parameter per HF tensor
    assert cfg.rope.mrope_section == (2, 3, 3) and cfg.tie_word_embeddings and cfg.rope.theta == 1e6
    abstract = nnx.eval_shape(lambda: arch.module(cfg, rngs=nnx.Rngs(0)))
    ours = sorted(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        hf = transformers.AutoModelForImageTextToText.from_config(
            transformers.AutoConfig.from_pretrained(str(tmp_path))
        )
    assert ours == sorted(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("pair", [CASES[1]], indirect=True, ids=["qwen2_5_vl"])
def test_gradients_equal_torch(pair, images):
    """Training the vision tower too: gradients of a logit functional equal torch's (relative 1e-5).
    Qwen2.5-VL only (windows, RMSNorm, SwiGLU: the superset of Qwen2-VL's blocks), to keep the file's time down."""
    import torch

    from swift_jax.models import set_scan_layers

    hf, ours = pair
    ours = nnx.clone(ours)
    set_scan_layers(ours, False)  # per-layer parameter paths, to name each gradient as transformers does
    pixel_values, grid = images
    cfg = ours.config.vision
    ids = np.asarray([vision_row([1], grid[:2], [4, 5])])
    patches = int(np.prod(grid[:2], axis=-1).sum())
    weights = np.random.RandomState(0).randn(ids.shape[1], hf.config.text_config.vocab_size).astype(np.float32)
    hf.zero_grad()
    types = torch.as_tensor((ids == IMAGE).astype(np.int64))
    kw = dict(pixel_values=torch.as_tensor(pixel_values[:patches]), image_grid_thw=torch.as_tensor(grid[:2]))
    logits = hf(input_ids=torch.as_tensor(ids), mm_token_type_ids=types, **kw).logits[0]
    (logits * torch.as_tensor(weights)).sum().backward()
    positions = jnp.asarray(mrope_positions(ids, cfg, grid[:2]))
    vision = VisionInputs.build(cfg, pixel_values[:patches], grid[:2])
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.asarray(ids), positions=positions, vision=vision)[0] * weights)))(
        ours
    )
    ref, flat = dict(hf.named_parameters()), dict(nnx.to_flat_state(grads))
    for path, name in [
        (("visual", "patch_embed", "weight"), "model.visual.patch_embed.proj.weight"),
        (("visual", "blocks", 0, "attn", "qkv", "kernel"), "model.visual.blocks.0.attn.qkv.weight"),
        (("visual", "merger", "mlp_0", "kernel"), "model.visual.merger.mlp.0.weight"),
        (
            ("model", "layers", 1, "self_attn", "q_proj", "kernel"),
            "model.language_model.layers.1.self_attn.q_proj.weight",
        ),
    ]:
        got = np.asarray(flat[path][...])
        want = ref[name].grad.numpy()
        want = want if got.ndim != 2 else want.T
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max(), name
