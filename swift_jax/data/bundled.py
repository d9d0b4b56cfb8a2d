"""Datasets that ship with the package and resolve offline by their hub ids, e.g. `swift/self-cognition#500`.

`swift/self-cognition` (ms-swift's id; `modelscope/self-cognition` on the HF hub) is a small set of our own
writing in ms-swift's row format (`query`, `response`, `tag` = zh | en, with `{{NAME}}` and `{{AUTHOR}}`
placeholders). It is read from the package instead of the hub, and preprocessed as the registered dataset
(`preprocessors.SelfCognitionPreprocessor`: --model_name / --model_author, subsets `qwen3` and `empty_think`).
"""

from __future__ import annotations

import os

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
SELF_COGNITION_FILE = os.path.join(ASSETS, "self_cognition", "self_cognition.jsonl")
BUNDLED = {"swift/self-cognition": SELF_COGNITION_FILE, "modelscope/self-cognition": SELF_COGNITION_FILE}
"""Hub id -> the packaged file read in its place."""
