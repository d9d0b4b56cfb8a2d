"""The tiny local stand-ins ms-swift's examples run with (scripts/ms_swift_examples.py): model folders by kind
(a Qwen2 chat model, a Qwen3-MoE chat model, a Qwen2-VL model, built as the tests build them), data files by
shape (64 rows each) and, on first use, a LoRA checkpoint per kind for examples that start from a trained
adapter (`--adapters swift/test_lora`, or `output/vx-xxx/checkpoint-xxx` with no training before it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the tiny-model builders the tests use

from examples_rewrite import Assets  # noqa: E402

ROWS = 64
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _question(i: int) -> tuple[str, str]:
    a, b = i % 7 + 1, i % 5 + 2
    return f"What is {a} times {b}?", f"The answer is {a * b}."


def data_rows(shape: str, image: str) -> list[dict]:
    """`ROWS` rows of `shape`: sft / pairs / kto / grpo, with one image each for the `vl_` shapes."""
    base, vl = shape.removeprefix("vl_"), shape.startswith("vl_")
    rows = []
    for i in range(ROWS):
        query, answer = _question(i)
        query = ("<image>" + query) if vl else query
        messages = [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        if base == "sft":
            row = {"messages": messages}
        elif base == "pairs":
            row = {"messages": messages, "rejected_response": f"The answer is {WORDS[i % 10]}."}
        elif base == "kto":
            row = {"messages": messages, "label": i % 2 == 0}
        else:  # grpo: a prompt and the solution the accuracy reward checks
            a, b = i % 7 + 1, i % 5 + 2
            row = {"messages": messages[:1], "solution": f"\\boxed{{{a * b}}}"}
        if vl:
            row["images"] = [image]
        rows.append(row)
    return rows


def _build_models(work: str) -> dict[str, str]:
    import torch  # noqa: F401  (the builders need it; a clear error if the test extra is missing)
    from infer_fixtures import build_chat_model
    from vl_fixtures import build_vl_folder

    models = {}
    for kind, build in (("text", lambda p: build_chat_model(p, "qwen2", max_position_embeddings=512)),
                        ("moe", lambda p: build_chat_model(p, "qwen3_moe", max_position_embeddings=512,
                                                           num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
                        ("vl", lambda p: build_vl_folder(p, max_pixels=32 * 32))):
        path = os.path.join(work, "models", f"tiny-{kind}")
        if not os.path.exists(os.path.join(path, "config.json")):
            build(path)
        models[kind] = path
    return models


def build_assets(work: str, env: dict[str, str]) -> Assets:
    """Tiny models and data under `work` (built once, reused by later runs); adapters trained lazily with
    `swift-jax sft` in `env`."""
    from vl_fixtures import color_image

    models = _build_models(work)
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir, exist_ok=True)
    image = os.path.join(data_dir, "red.png")
    if not os.path.exists(image):
        color_image((200, 30, 30)).save(image)
    data = {}
    for shape in ("sft", "pairs", "kto", "grpo"):
        for name in (shape, f"vl_{shape}"):
            path = os.path.join(data_dir, f"{name}.jsonl")
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in data_rows(name, image))
            data[name] = path

    lock = threading.Lock()  # scripts run in threads: one build per kind

    def adapter(kind: str) -> str:
        out = os.path.join(work, "adapters", kind)
        ckpt = os.path.join(out, "checkpoint-1")
        with lock:
            if os.path.isdir(ckpt):
                return ckpt
            cmd = [os.path.join(os.path.dirname(sys.executable), "swift-jax"), "sft", "--model", models[kind], "--tuner_type", "lora",
                   "--dataset", data["vl_sft" if kind == "vl" else "sft"], "--max_steps", "1", "--save_steps", "1",
                   "--max_length", "128", "--output_dir", out, "--add_version", "false"]
            subprocess.run(cmd, env=env, cwd=work, capture_output=True, timeout=900, check=True)
            return ckpt

    return Assets(models=models, data=data, adapter=adapter)
