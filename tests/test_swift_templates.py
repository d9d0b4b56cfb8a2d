"""`--template` / `--agent_template` / `--loss_scale` encode exactly as ms-swift 4.6 does.

The golden files in tests/golden/templates/ hold ms-swift's own `Template.encode` output (input_ids, labels,
loss_scale; and prompt_ids, the inference prompt without the last answer) for every template, agent template, loss_scale
strategy and thinking control (run-wide, and per row through `chat_template_kwargs`), on rows with system
prompts, several turns, tool calls / responses and thinking content; `scripts/record_ms_swift_templates.py`
wrote them (ms-swift is not installed in CI). Each (case, row) must be equal token for token, and a row
ms-swift refuses must be refused here too.
"""

from __future__ import annotations

import datetime
import functools
import glob
import json
import os

import numpy as np
import pytest

from swift_jax.data.errors import DataError
from swift_jax.data.swift_template import SwiftTemplate, ThinkingArgs
from swift_jax.data.template_meta import get_template_meta

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "templates")
FILES = sorted(glob.glob(os.path.join(GOLDEN, "*.json")))


@functools.cache
def tokenizer(kind: str):
    from transformers import AutoTokenizer

    from swift_jax.data import BUNDLED_TOKENIZER_DIR

    return AutoTokenizer.from_pretrained(os.path.join(GOLDEN, "tokenizer") if kind == "multi" else BUNDLED_TOKENIZER_DIR)


def template_for(golden: dict) -> SwiftTemplate:
    args = golden["args"]
    meta = get_template_meta(args["template_type"], today=datetime.date.fromisoformat(golden["date"]))
    loss_scale = args["loss_scale"]
    if meta.is_hybrid_thinking and "ignore_empty_think" not in loss_scale:
        loss_scale += "+ignore_empty_think"
    thinking = ThinkingArgs(enable_thinking=args.get("enable_thinking"), preserve_thinking=args.get("preserve_thinking"),
                            add_non_thinking_prefix=args.get("add_non_thinking_prefix", True))
    return SwiftTemplate(tokenizer(golden["tokenizer"]), meta, system=args.get("default_system"),
                         agent_template=args.get("agent_template"), loss_scale=loss_scale,
                         is_binary_loss_scale=args.get("is_binary_loss_scale"), thinking=thinking)


def test_golden_files_cover_the_issue_list():
    names = {os.path.basename(f)[:-5] for f in FILES}
    for t in ("qwen", "qwen2_5", "qwen3", "llama3", "llama3_2", "chatml", "gemma", "gemma3_text", "phi3", "llama",
              "mistral_nemo", "deepseek_v2_5", "deepseek_r1", "deepseek_v3_1"):
        assert f"template-{t}" in names
    for a in ("hermes", "react_en", "qwen_en", "qwen_en_parallel", "glm4", "llama3"):
        assert f"agent-{a}" in names
    for s in ("default", "last_round", "all", "ignore_empty_think", "react", "hermes", "qwen", "last_round+ignore_empty_think"):
        assert f"loss_scale-{s}" in names
    assert "chat_template_kwargs-qwen3-default" in names  # per-row enable_thinking / preserve_thinking / response_prefix


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.basename(p)[:-5])
def test_encoding_equals_ms_swift(path):
    with open(path) as f:
        golden = json.load(f)
    template = template_for(golden)
    for row_name, expected in golden["encoded"].items():
        row = golden["rows"][row_name]
        sample = {"messages": row["messages"], "tools": row.get("tools"), "chat_template_kwargs": row.get("chat_template_kwargs")}
        if "error" in expected:
            with pytest.raises(DataError):
                template.encode(sample)
            continue
        got = template.encode(sample)
        where = f"{golden['case']} / {row_name}"
        assert got.input_ids.tolist() == expected["input_ids"], where
        assert got.labels.tolist() == expected["labels"], where
        if expected["loss_scale"] is None:
            assert got.loss_scale is None, where
        else:
            np.testing.assert_allclose(got.loss_scale, expected["loss_scale"], err_msg=where)
        # inference (infer / deploy): the prompt of the conversation without its last answer
        if "prompt_error" in expected:  # ms-swift's dummy template hands inference to the tokenizer's Jinja
            with pytest.raises(DataError):
                template.prompt_ids(row["messages"][:-1], row.get("tools"), row.get("chat_template_kwargs"))
            continue
        prompt = template.prompt_ids(row["messages"][:-1], row.get("tools"), row.get("chat_template_kwargs"))
        assert prompt == expected["prompt_ids"], where
