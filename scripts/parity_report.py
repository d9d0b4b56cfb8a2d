"""Print the worst float32 logit difference vs transformers per parity case (plain, padded, packed).

    python scripts/parity_report.py

Uses the same tiny random checkpoints and cases as tests/test_models.py, tests/test_models_gemma_phi.py and
tests/test_models_moe.py, tests/test_models_deepseek.py (needs the `test` extra: torch), on rows of 12 tokens;
then the vision-language cases of tests/test_models_qwen2_vl.py, tests/test_models_internvl.py and
tests/test_models_gemma3_vl.py (image rows).
"""

import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import swift_jax  # noqa: E402
from test_models import CASES as LLAMA_CASES, _ids  # noqa: E402
from test_models_deepseek import CASES as DEEPSEEK_CASES  # noqa: E402
from test_models_gemma_phi import CASES as GEMMA_PHI_CASES, TOKENS  # noqa: E402
from test_models_moe import CASES as MOE_CASES  # noqa: E402
from tiny_models import build_hf_model, hf_logits, save_hf_model  # noqa: E402
import test_models_gemma3_vl as gemma3_vl  # noqa: E402
import test_models_internvl as internvl  # noqa: E402
import test_models_qwen2_vl as qwen2_vl  # noqa: E402
from swift_jax.data.images import preprocess_images  # noqa: E402
from tiny_vlm import (  # noqa: E402
    build_hf_gemma3,
    build_hf_internvl,
    build_hf_vlm,
    gemma3_processor,
    image_processor,
    random_images,
    tile_processor,
)


def worst_differences(hf, ours) -> dict[str, float]:
    ids = _ids(2, 12)
    plain = np.abs(hf_logits(hf, ids) - np.asarray(ours(jnp.asarray(ids)))).max()
    mask = np.array([[1] * 12, [1] * 7 + [0] * 5], np.int32)
    ref = hf_logits(hf, ids, mask)
    got = np.asarray(ours(jnp.asarray(ids), segment_ids=jnp.asarray(mask)))
    padded = max(np.abs(ref[0] - got[0]).max(), np.abs(ref[1, :7] - got[1, :7]).max())
    seg = np.array([[1] * 5 + [2] * 4 + [3] * 3], np.int32)
    pos = np.array([list(range(5)) + list(range(4)) + list(range(3))], np.int32)
    got = np.asarray(ours(jnp.asarray(ids[:1]), positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg)))
    packed = max(
        np.abs(hf_logits(hf, ids[:1, a:b]) - got[:, a:b]).max() for a, b in [(0, 5), (5, 9), (9, 12)]
    )
    return {"plain": float(plain), "padded": float(padded), "packed": float(packed)}


def vision_language(tmp: str) -> None:
    """Worst difference per vision-language case: image rows plain / right-padded / packed, and video."""
    print(f"\n{'vision-language case':36s} {'plain':>10s} {'padded':>10s} {'packed':>10s} {'video':>10s}")
    images = image_processor()(random_images([(40, 28), (16, 24), (24, 24)]), return_tensors="np")
    images = images["pixel_values"], images["image_grid_thw"]
    for kind, overrides in qwen2_vl.CASES:
        hf = build_hf_vlm(kind, **overrides)
        hf.save_pretrained(os.path.join(tmp, kind))
        ours = swift_jax.load_model(os.path.join(tmp, kind))
        cases = (qwen2_vl.plain_diff, qwen2_vl.padded_diff, qwen2_vl.packed_diff, qwen2_vl.video_diff)
        d = [case(hf, ours, images) for case in cases]
        print(f"{kind:36s} " + " ".join(f"{x:10.2e}" for x in d))
    tiles = tile_processor()(random_images([(20, 40), (16, 16)]), return_tensors="np")
    tiles = tiles["pixel_values"], [int(n) for n in tiles["num_patches"]]
    for name, kw in internvl.CASES:
        hf = build_hf_internvl(**kw)
        hf.save_pretrained(os.path.join(tmp, name))
        ours = swift_jax.load_model(os.path.join(tmp, name))
        d = [internvl.padded_diff(hf, ours, tiles), internvl.packed_diff(hf, ours, tiles)]
        print(f"{'internvl-' + name:36s} {'-':>10s} {d[0]:10.2e} {d[1]:10.2e} {'-':>10s}")
    pixels = preprocess_images(gemma3_processor(), random_images([(20, 30), (16, 16), (40, 12)]))["pixel_values"]
    for tied in (True, False):
        name = "gemma3-" + ("tied" if tied else "untied")
        hf = build_hf_gemma3(tie_word_embeddings=tied)
        hf.save_pretrained(os.path.join(tmp, name))
        ours = swift_jax.load_model(os.path.join(tmp, name))
        d = [gemma3_vl.padded_diff(hf, ours, pixels), gemma3_vl.packed_diff(hf, ours, pixels)]
        print(f"{name:36s} {'-':>10s} {d[0]:10.2e} {d[1]:10.2e} {'-':>10s}")


def main() -> None:
    print(f"{'case':36s} {'plain':>10s} {'padded':>10s} {'packed':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            *LLAMA_CASES,
            *((name, model_type, {**TOKENS, **overrides}) for name, model_type, overrides in GEMMA_PHI_CASES),
            *MOE_CASES,
            *((name, "deepseek_v3", overrides) for name, overrides in DEEPSEEK_CASES),
        ]
        for name, model_type, overrides in cases:
            hf = build_hf_model(model_type, **overrides)
            ours = swift_jax.load_model(save_hf_model(hf, os.path.join(tmp, name)))
            d = worst_differences(hf, ours)
            print(f"{name:36s} {d['plain']:10.2e} {d['padded']:10.2e} {d['packed']:10.2e}")
        vision_language(tmp)


if __name__ == "__main__":
    main()
