"""Calibration token rows for GPTQ from local json/jsonl datasets (the formats ms-swift trains on).

Each row becomes text (`text`; `messages` through the tokenizer's chat template; alpaca
`instruction`/`input`/`output`; `query`/`response`), the texts are tokenized and joined with EOS, and the
stream is cut into `[n_samples, seq_len]` rows, the usual GPTQ calibration layout (no padding).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np

TEXT_FIELDS = (("instruction", "input", "output"), ("query", "response"), ("prompt", "completion"))


def _read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--dataset {path}: no such file (calibration takes local .json/.jsonl files)")
    with open(path) as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        if path.endswith(".json"):
            data = json.load(f)
            return data if isinstance(data, list) else [data]
    raise ValueError(f"--dataset {path}: expected a .json or .jsonl file")


def row_text(row: dict, tokenizer, where: str) -> str:
    """The text of one dataset row, with an error naming the row when no known field is present."""
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("messages"), list):
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(row["messages"], tokenize=False)
        return "\n".join(str(m.get("content", "")) for m in row["messages"])
    for fields in TEXT_FIELDS:
        if any(isinstance(row.get(k), str) for k in fields):
            return "\n".join(row[k] for k in fields if isinstance(row.get(k), str))
    raise ValueError(f"{where}: no text field; expected 'text', 'messages', 'instruction'/'output' or 'query'/'response'")


def calibration_rows(tokenizer, paths: list[str], *, n_samples: int, seq_len: int, seed: int = 42) -> np.ndarray:
    """Token ids `[rows, seq_len]` (int32), `rows <= n_samples`, from the datasets' rows in shuffled order."""
    rows = [(f"{path} row {i}", row) for path in paths for i, row in enumerate(_read_rows(path))]
    random.Random(seed).shuffle(rows)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream: list[int] = []
    for where, row in rows:
        stream += tokenizer(row_text(row, tokenizer, where), add_special_tokens=False)["input_ids"] + [eos]
        if len(stream) >= n_samples * seq_len:
            break
    count = min(n_samples, len(stream) // seq_len)
    if count == 0:
        raise ValueError(f"--dataset {paths}: {len(stream)} tokens, fewer than one row of --max_length {seq_len}")
    return np.asarray(stream[: count * seq_len], np.int32).reshape(count, seq_len)
