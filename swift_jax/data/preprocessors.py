"""Row preprocessors of registered datasets: ms-swift's classes of the same names, one row at a time.

A preprocessor takes a raw row (a dict) and returns the row in a format `formats.normalize` reads (or None to
drop it). `columns` renames keys first (a key already present is not overwritten, as ms-swift's
`safe_rename_columns`). A plugin (`--custom_register_path plugin.py`) subclasses these as it would ms-swift's:

    from swift_jax.data.registry import DatasetMeta, ResponsePreprocessor, register_dataset

    class StsbPreprocessor(ResponsePreprocessor):
        def preprocess(self, row):
            return super().preprocess({"query": f"Score: {row['text1']} / {row['text2']}", "response": f"{row['label']:.1f}"})

    register_dataset(DatasetMeta(ms_dataset_id="swift/stsb", hf_dataset_id="SetFit/stsb", preprocess_func=StsbPreprocessor()))

`preprocessor_of(record, dataset)` builds one from a record of our `dataset_info.json` table.
"""

from __future__ import annotations

import ast
import json

from swift_jax.data.errors import DataError

# ms-swift's ResponsePreprocessor column aliases (the first present of a target's sources wins)
RESPONSE_ALIASES = {
    "system": ("system", "system_prompt"),
    "query": ("query", "prompt", "input", "instruction", "question", "problem"),
    "response": ("response", "answer", "output", "targets", "target", "answer_key", "answers", "solution", "text",
                 "completion", "content"),
}


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    """`row` with keys renamed by `columns`; a target key the row already has is kept (ms-swift's safe rename)."""
    if not columns:
        return row
    out = {k: v for k, v in row.items() if k not in columns}
    for old, new in columns.items():
        if old in row and new not in out:
            out[new] = row[old]
    return out


class RowPreprocessor:
    """Base class: rename `columns`, then `preprocess(row)`; a row of a standard format passes unchanged."""

    def __init__(self, *, columns: dict[str, str] | None = None):
        self.columns = dict(columns or {})

    def __call__(self, row: dict) -> dict | None:
        return self.preprocess(rename_columns(dict(row), self.columns))

    def preprocess(self, row: dict) -> dict | None:
        """The row in a standard format, or None to drop it."""
        return row


class AutoPreprocessor(RowPreprocessor):
    """ms-swift's default: rename `columns`, then the format is detected (messages, alpaca, query/response)."""


class ResponsePreprocessor(RowPreprocessor):
    """query/response rows (+ system, history) -> `messages`; ms-swift's aliases (input, instruction, question,
    answer, output, text, ...) are read as query/response."""

    def preprocess(self, row: dict) -> dict | None:
        for target, sources in RESPONSE_ALIASES.items():
            for source in sources:
                if source in row:
                    value = row.pop(source)
                    row.setdefault(target, value)
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
        row["query"] = self.concat_inst_input(instruction, input_)
        return super().preprocess(row)


class AlpacaZhPreprocessor(AlpacaPreprocessor):
    """AI-ModelScope/alpaca-gpt4-data-zh: inputs start with '输入：', which is dropped."""

    def concat_inst_input(self, instruction, input_):
        if input_ and input_.startswith("输入："):
            input_ = input_[3:]
        return super().concat_inst_input(instruction, input_)


class LongAlpacaPreprocessor(AlpacaPreprocessor):
    """AI-ModelScope/LongAlpaca-12k: responses start with 'Answer: ', which is dropped."""

    def preprocess(self, row: dict) -> dict | None:
        response = row.get("output", row.get("response"))
        if response and response.startswith("Answer: "):
            row["output"] = response[len("Answer: "):].strip()
        return super().preprocess(row)


class SelfCognitionPreprocessor(ResponsePreprocessor):
    """swift/self-cognition: `{{NAME}}` / `{{AUTHOR}}` filled from --model_name / --model_author (zh rows take
    the first value, en rows the second), then `query_suffix` and `response_prefix` added (subsets qwen3,
    empty_think)."""

    def __init__(self, *, query_suffix: str = "", response_prefix: str = "", columns: dict[str, str] | None = None):
        super().__init__(columns=columns)
        self.query_suffix, self.response_prefix = query_suffix, response_prefix
        self.name: tuple[str | None, str | None] = (None, None)
        self.author: tuple[str | None, str | None] = (None, None)

    def set_name_author(self, name: list[str] | None, author: list[str] | None) -> None:
        """(zh, en) values from --model_name / --model_author; one value serves both."""
        self.name, self.author = _zh_en(name), _zh_en(author)

    def preprocess(self, row: dict) -> dict | None:
        index = 0 if row.get("tag") == "zh" else 1
        for placeholder, values in (("{{NAME}}", self.name), ("{{AUTHOR}}", self.author)):
            if values[index] is not None:
                row["query"] = row["query"].replace(placeholder, values[index])
                row["response"] = row["response"].replace(placeholder, values[index])
        row["query"] += self.query_suffix
        row["response"] = self.response_prefix + row["response"]
        row.pop("tag", None)
        return super().preprocess(row)


def _zh_en(values: list[str] | str | None) -> tuple[str | None, str | None]:
    if not values:
        return None, None
    if isinstance(values, str):
        values = [values]
    return values[0], values[1] if len(values) > 1 and values[1] is not None else values[0]


class MessagesPreprocessor(RowPreprocessor):
    """messages / conversations rows whose messages use other keys or role names (`role_key`, `content_key`,
    `user_role`, `assistant_role`, `system_role`) or sit under `inner_key`; a JSON string is parsed."""

    def __init__(self, *, role_key: str | None = None, content_key: str | None = None, user_role: str | None = None,
                 assistant_role: str | None = None, system_role: str = "system", inner_key: str | None = None,
                 columns: dict[str, str] | None = None):
        super().__init__(columns={"conversation": "messages", "conversations": "messages", **(columns or {})})
        self.role_key, self.content_key, self.inner_key = role_key, content_key, inner_key
        self.roles = {user_role: "user", assistant_role: "assistant", system_role: "system"}
        self.roles.pop(None, None)

    def preprocess(self, row: dict) -> dict | None:
        messages = row.get("messages")
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
        row["messages"] = out
        return row


BUILT_IN = {
    "auto": AutoPreprocessor,
    "response": ResponsePreprocessor,
    "alpaca": AlpacaPreprocessor,
    "alpaca_zh": AlpacaZhPreprocessor,
    "long_alpaca": LongAlpacaPreprocessor,
    "self_cognition": SelfCognitionPreprocessor,
    "messages": MessagesPreprocessor,
}
"""`preprocess.type` in dataset_info.json -> class; other types are ms-swift classes swift_jax does not reproduce."""


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


def preprocessor_of(record: dict | None, dataset: str) -> RowPreprocessor:
    """The preprocessor of a dataset_info.json `preprocess` record (`{"type": ..., "columns": ..., kwargs}`);
    None is ms-swift's default (AutoPreprocessor)."""
    record = dict(record or {"type": "auto"})
    kind = record.pop("type", "auto")
    if kind not in BUILT_IN:
        return Unsupported(dataset, kind)
    try:
        return BUILT_IN[kind](**record)
    except TypeError as e:
        raise DataError(f"dataset {dataset!r}: bad preprocess arguments {record} for type {kind!r}: {e}") from None

