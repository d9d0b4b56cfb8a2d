"""Row preprocessors of registered datasets: ms-swift's core classes (`swift/dataset/preprocessor/core.py`) of
the same names, one row at a time (the dataset-specific ones are in `dataset_preprocessors`).

A preprocessor takes a raw row (a dict) and returns the row in a format `formats.normalize` reads (or None to
drop it). `columns` renames keys first (a key already present is not overwritten, as ms-swift's
`safe_rename_columns`). A plugin (`--custom_register_path plugin.py`) subclasses these as it would ms-swift's:

    from swift_jax.data.registry import DatasetMeta, ResponsePreprocessor, register_dataset

    class StsbPreprocessor(ResponsePreprocessor):
        def preprocess(self, row):
            return super().preprocess({"query": f"Score: {row['text1']} / {row['text2']}", "response": f"{row['label']:.1f}"})

    register_dataset(DatasetMeta(ms_dataset_id="swift/stsb", hf_dataset_id="SetFit/stsb", preprocess_func=StsbPreprocessor()))

"""

from __future__ import annotations

import ast
import json
from collections import Counter

from swift_jax.data.errors import DataError

MEDIA_COLUMNS = {k: v for v in ("images", "audios", "videos") for k in (v, v[:-1])}
RESPONSE_COLUMNS = {
    **{k: "system" for k in ("system", "system_prompt")},
    **{k: "query" for k in ("query", "prompt", "input", "instruction", "question", "problem")},
    **{k: "response" for k in ("response", "answer", "output", "targets", "target", "answer_key", "answers", "solution",
                                "text", "completion", "content")},
}
MESSAGES_COLUMNS = {**{k: "messages" for k in ("messages", "conversation", "conversations")},
                    **{k: "system" for k in ("system", "system_prompt")}}


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    """ms-swift's `safe_rename_columns` on one row: sources match case-insensitively; a target that two present
    sources map to is left alone (e.g. both `instruction` and `input` -> query); a target the row already has
    (not renamed away) is kept."""
    if not columns:
        return row
    lower = {k.lower(): k for k in row}
    present = {lower[k.lower()]: v for k, v in columns.items() if k.lower() in lower}
    counts = Counter(present.values())
    rename = {k: v for k, v in present.items() if counts[v] == 1 and k != v and (v not in row or v in present)}
    return {rename.get(k, k): v for k, v in row.items()} if rename else row


class RowPreprocessor:
    """Base class: rename `columns` (the dataset's), then the class's own column aliases (`AUTO_COLUMNS`: media
    keys, and query/response or messages spellings in the subclasses), then `preprocess(row)`; as ms-swift."""

    AUTO_COLUMNS: dict[str, str] = MEDIA_COLUMNS

    def __init__(self, *, columns: dict[str, str] | None = None):
        self.columns = dict(columns or {})

    def __call__(self, row: dict) -> dict | None:
        return self.preprocess(rename_columns(rename_columns(dict(row), self.columns), self.AUTO_COLUMNS))

    def preprocess(self, row: dict) -> dict | None:
        """The row in a standard format, or None to drop it."""
        return row


class WithColumns:
    """A registered dataset's preprocessor with `--columns` renamed first, as ms-swift's loader renames them
    before the dataset's preprocess_func."""

    def __init__(self, inner, columns: dict[str, str]):
        self.inner, self.columns = inner, columns

    def __call__(self, row: dict) -> dict | None:
        return self.inner(rename_columns(row, self.columns))


class AutoPreprocessor(RowPreprocessor):
    """ms-swift's default: rename `columns`; the format is then detected row by row (`formats.normalize`:
    messages, alpaca, query/response, ...), as ms-swift's AutoPreprocessor picks a preprocessor."""

    AUTO_COLUMNS = {}


class ResponsePreprocessor(RowPreprocessor):
    """query/response rows (+ system, history) -> `messages`; ms-swift's aliases (input, instruction, question,
    answer, output, text, ...) are read as query/response."""

    AUTO_COLUMNS = {**MEDIA_COLUMNS, **RESPONSE_COLUMNS}

    def preprocess(self, row: dict) -> dict | None:
        response = row.pop("response", None)
        if isinstance(response, (list, tuple)):
            response = response[0]  # ms-swift: the first of several answers
        history = row.pop("history", None) or []
        if isinstance(history, str):
            history = ast.literal_eval(history)
        query, system = row.pop("query", None), row.pop("system", None)
        messages = [{"role": "system", "content": system}] if system else []
        for q, r in [*history, [query, response]]:
            messages.append({"role": "user", "content": q})
            if r is not None:
                messages.append({"role": "assistant", "content": r})
        row["messages"] = messages
        return row


class AlpacaPreprocessor(ResponsePreprocessor):
    """instruction/input/output rows: the query is `instruction\\ninput` (or whichever is present)."""

    def concat_inst_input(self, instruction: str | None, input_: str | None) -> str:
        """The query of an alpaca row."""
        if instruction and input_:
            return f"{instruction}\n{input_}"
        return instruction or input_

    def preprocess(self, row: dict) -> dict | None:
        instruction, input_, output = row.pop("instruction", None), row.pop("input", None), row.pop("output", None)
        if output is not None:
            row["response"] = output
        if instruction is not None or input_ is not None:  # else one of them was renamed to query already
            row["query"] = self.concat_inst_input(instruction, input_)
        return super().preprocess(row)


class MessagesPreprocessor(RowPreprocessor):
    """messages / conversations rows whose messages use other keys or role names (`role_key`, `content_key`,
    `user_role`, `assistant_role`, `system_role`) or sit under `inner_key`; a JSON string is parsed."""

    def __init__(self, *, role_key: str | None = None, content_key: str | None = None, user_role: str | None = None,
                 assistant_role: str | None = None, system_role: str = "system", inner_key: str | None = None,
                 columns: dict[str, str] | None = None):
        super().__init__(columns=columns)
        self.AUTO_COLUMNS = {**MEDIA_COLUMNS, **MESSAGES_COLUMNS, system_role: "system"}
        self.role_key, self.content_key, self.inner_key = role_key, content_key, inner_key
        self.roles = {user_role: "user", assistant_role: "assistant", system_role: "system"}
        self.roles.pop(None, None)

    def preprocess(self, row: dict) -> dict | None:
        row["messages"] = self.standard(row.get("messages"))
        if row.get("rejected_messages") is not None:
            row["rejected_messages"] = self.standard(row["rejected_messages"])
        return row if row["messages"] else None

    def standard(self, messages) -> list[dict] | None:
        """Messages with the standard `role` / `content` keys and role names."""
        if self.inner_key is not None and isinstance(messages, dict):
            messages = messages[self.inner_key]
        if isinstance(messages, str):
            messages = json.loads(messages)
        if not messages:
            return None
        out = []
        for message in messages:
            message = dict(message)
            if self.role_key and self.role_key in message:
                message["role"] = message.pop(self.role_key)
            if self.content_key and self.content_key in message:
                message["content"] = message.pop(self.content_key)
            role = message.get("role", message.get("from"))
            if role in self.roles:
                message.pop("from", None)
                message["role"] = self.roles[role]
            out.append(message)
        return out


class Unsupported(RowPreprocessor):
    """A registered dataset whose ms-swift preprocessing is more than column renames: reading it raises."""

    def __init__(self, dataset: str, kind: str):
        super().__init__()
        self.dataset, self.kind = dataset, kind

    def check(self) -> None:
        """Raise the error naming the dataset, ms-swift's preprocessor and the ways forward."""
        raise DataError(
            f"dataset {self.dataset!r}: ms-swift preprocesses it with {self.kind}, which swift_jax does not reproduce. "
            "Register it yourself with --custom_register_path plugin.py (a swift_jax.data.registry RowPreprocessor "
            "subclass), or convert a local copy to a standard format (messages, alpaca, query/response) and pass its "
            "path (with --columns to rename fields)"
        )

    def preprocess(self, row: dict) -> dict | None:
        self.check()
