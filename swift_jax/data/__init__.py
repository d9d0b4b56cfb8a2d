"""The data pipeline: datasets -> formats -> chat template with loss mask -> grain batches (padded or packed).

    from swift_jax.data import DataArgs, build_data
    pipe = build_data(DataArgs(dataset=["train.jsonl"], max_length=2048, packing=True), tokenizer, batch_size=8)
    it = pipe.train_iterator()      # next(it) -> {"input_ids", "labels", "segment_ids", "positions"}: int32 [8, 2048]

Modules: dataset_syntax / resolve / registry / preprocessors / hub_datasets / bundled (a `--dataset` entry ->
where its rows come from and how ms-swift preprocesses them), sources (reading, `#N`, mixing), formats (row
formats -> messages), template_meta / swift_template /
agent_templates / loss_scale (ms-swift's --template, --agent_template, --loss_scale), templates (ChatEncoder:
ms-swift template or the tokenizer's Jinja), samples / batching / pipeline (grain), frontend (what infer, eval
and deploy share with training), inspect (`python -m swift_jax.data.inspect`, `--dump`); multimodal rows: media
(`images` / `videos`, `<image>` tags), images / videos (processing), vision (encoding, `VisionData`),
vision_batching (Qwen2-VL family: per-row patches, padded or packed), tile_batching (InternVL / Gemma 3: per-row
tiles, padded or packed).
"""

import importlib
import os

BUNDLED_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tokenizer")
"""A small byte-level BPE tokenizer (vocab 1000, ChatML template) that ships with the package."""

# Public names -> the module that defines them, imported on first use (grain and datasets are heavy to import).
_EXPORTS = {
    "DataArgs": ".args",
    "DataError": ".errors",
    "normalize": ".formats",
    "DataPipeline": ".pipeline",
    "build_data": ".pipeline",
    "TEMPLATES": ".template_meta",
    "IGNORE": ".templates",
    "ChatEncoder": ".templates",
}

__all__ = sorted([*_EXPORTS, "BUNDLED_TOKENIZER_DIR"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
