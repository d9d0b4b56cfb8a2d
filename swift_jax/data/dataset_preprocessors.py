"""ms-swift's dataset-specific preprocessors (`swift/dataset/dataset/llm.py`, `mllm.py`) that the examples use, and
`preprocessor_of`: a record of our `dataset_info.json` table -> its preprocessor (`Unsupported` for ms-swift
classes that are not reproduced here: reading such a dataset is an error naming it)."""

from __future__ import annotations

from swift_jax.data.errors import DataError
from swift_jax.data.preprocessors import (AlpacaPreprocessor, AutoPreprocessor, MessagesPreprocessor, ResponsePreprocessor,
                                          RowPreprocessor, Unsupported)


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


class LatexocrPreprocessor(ResponsePreprocessor):
    """AI-ModelScope/LaTeX_OCR: an image and its LaTeX (`text`); the query is fixed."""

    def preprocess(self, row: dict) -> dict | None:
        row["query"] = "Using LaTeX to perform OCR on the image."
        return super().preprocess(row)


class ClevrPreprocessor(ResponsePreprocessor):
    """AI-ModelScope/clevr_cogen_a_train: the query asks for <think> and <answer> tags."""

    def preprocess(self, row: dict) -> dict | None:
        row["query"] = (f"{row.get('query', '')} Output the thinking process in <think> </think> and "
                        "final answer (number) in <answer> </answer> tags.")
        return super().preprocess(row)


class COCO2014Preprocess(ResponsePreprocessor):
    """modelscope/coco_2014_caption: the first of the `&&`-joined captions answers 'please describe the image.'."""

    def preprocess(self, row: dict) -> dict | None:
        row["query"], row["response"] = "please describe the image.", row["caption"].split("&&")[0]
        return super().preprocess(row)


class EmojiPreprocessr(ResponsePreprocessor):
    """hjh0119/shareAI-Llama3-DPO-zh-en-emoji (ms-swift's spelling): variation selectors removed."""

    def preprocess(self, row: dict) -> dict | None:
        for key in ("query", "response", "rejected_response"):
            row[key] = row[key].replace("\ufe0f", "")
        return super().preprocess(row)


class OrpoDPOMix40kPreprocessor(MessagesPreprocessor):
    """AI-ModelScope/orpo-dpo-mix-40k: the toxic-dpo-v0.2 rows are dropped."""

    def preprocess(self, row: dict) -> dict | None:
        return None if row.get("source") == "toxic-dpo-v0.2" else super().preprocess(row)


class FunctionCallChatmlPreprocessor(MessagesPreprocessor):
    """AI-ModelScope/function-calling-chatml: tools from `function_description`, the system message dropped."""

    def preprocess(self, row: dict) -> dict | None:
        row = super().preprocess(row)
        if row is not None:
            if row.get("function_description"):
                row["tools"] = row["function_description"].split("\n\n")
            if row["messages"][0]["role"] == "system":
                row["messages"].pop(0)
        return row


BUILT_IN = {
    "auto": AutoPreprocessor,
    "response": ResponsePreprocessor,
    "alpaca": AlpacaPreprocessor,
    "messages": MessagesPreprocessor,
    "alpaca_zh": AlpacaZhPreprocessor,
    "long_alpaca": LongAlpacaPreprocessor,
    "self_cognition": SelfCognitionPreprocessor,
    **{cls.__name__: cls for cls in (LatexocrPreprocessor, ClevrPreprocessor, COCO2014Preprocess, EmojiPreprocessr,
                                     OrpoDPOMix40kPreprocessor, FunctionCallChatmlPreprocessor)},
}
"""`preprocess.type` in dataset_info.json -> class: our names for the core classes, ms-swift's for the others."""


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

