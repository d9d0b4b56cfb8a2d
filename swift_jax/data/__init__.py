"""The data pipeline: datasets -> formats -> chat template with loss mask -> grain batches (padded or packed).

    from swift_jax.data import DataArgs, build_data
    pipe = build_data(DataArgs(dataset=["train.jsonl"], max_length=2048, packing=True), tokenizer, batch_size=8)
    it = pipe.train_iterator()      # next(it) -> {"input_ids", "labels", "segment_ids", "positions"}: int32 [8, 2048]

Modules: sources (reading), formats (row formats -> messages), template_meta / swift_template /
agent_templates / loss_scale (ms-swift's --template, --agent_template, --loss_scale), templates (ChatEncoder:
ms-swift template or the tokenizer's Jinja), samples / batching / pipeline (grain), frontend (what infer, eval
and deploy share with training), inspect (`python -m swift_jax.data.inspect`, `--dump`).
"""

import os

from swift_jax.data.args import DataArgs
from swift_jax.data.errors import DataError
from swift_jax.data.formats import normalize
from swift_jax.data.pipeline import DataPipeline, build_data
from swift_jax.data.template_meta import TEMPLATES
from swift_jax.data.templates import IGNORE, ChatEncoder

BUNDLED_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tokenizer")
"""A small byte-level BPE tokenizer (vocab 1000, ChatML template) that ships with the package."""

__all__ = [
    "BUNDLED_TOKENIZER_DIR",
    "IGNORE",
    "ChatEncoder",
    "DataArgs",
    "DataError",
    "DataPipeline",
    "build_data",
    "normalize",
    "TEMPLATES",
]
