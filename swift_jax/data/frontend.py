"""The data front end that train, prediction, infer, eval and deploy share: read rows, normalise any ms-swift
row format, and render a prompt with the run's template and system prompt.

    rows = read_rows("val.jsonl#200")                    # any --dataset entry: files, folders, hub ids, `#N`
    prompt = prompt_of(rows[0], where="val.jsonl row 0")  # messages, tools, reference answer (or None)
    encoder = chat_encoder(tokenizer, template="qwen2_5", system=None)
    ids = encoder.prompt_ids(prompt.messages, prompt.tools)

Rows are read by the training reader (`sources.load_table`: the same `resolve`d entries, `#N` included) and normalised by the training normaliser
(`formats.normalize`: messages, sharegpt, alpaca, query/response/history, `prompt`, ms-swift's column aliases,
`--columns`), so a row that trains also infers, and the prompt is rendered by the same `ChatEncoder` (the
tokenizer's Jinja template without `--template`, else ms-swift's template of that name).
"""

from __future__ import annotations

import dataclasses
import json
import os

from swift_jax.data.errors import BadRows, DataError
from swift_jax.data.formats import normalize
from swift_jax.data.resolve import LoadOptions
from swift_jax.data.sources import load_table
from swift_jax.data.templates import ChatEncoder

TEMPLATE_FIELDS = ("template", "system", "agent_template", "enable_thinking", "preserve_thinking", "response_prefix")
"""The data arguments a checkpoint's args.json hands to infer / eval / deploy (ms-swift's load_args)."""


@dataclasses.dataclass
class Prompt:
    """A row as a generation request: the prompt messages, the row's tools, and its reference answer."""

    messages: list[dict]
    tools: list | None
    reference: str | None
    chat_template_kwargs: dict | None = None
    """The row's own template switches (enable_thinking, preserve_thinking, response_prefix, Jinja variables)."""


def _without_arrow_padding(value):
    """A row as written: Arrow aligns rows to one schema, adding `None` for keys a row lacks (at the top level
    and in lists of objects such as `messages`); drop those."""
    if isinstance(value, dict):
        return {k: _without_arrow_padding(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_arrow_padding(v) if isinstance(v, dict) else v for v in value]
    return value


def read_rows(spec: str, limit: int | None = None, options: LoadOptions | None = None, seed: int = 42) -> list[dict]:
    """The rows of one dataset entry (file, folder, hub id or registered name, with `:subsets` and `#N`), the
    first `limit` if given; `options` default to no shuffling (`#N` takes the first N rows, as ms-swift's
    validation sets). Errors name file and line."""
    table = load_table([spec], seed, BadRows(strict=True), options or LoadOptions(shuffle=False))
    count = len(table) if limit is None else min(limit, len(table))
    return [_without_arrow_padding(table[i][0]) for i in range(count)]


def prompt_of(row: dict, *, where: str, columns: dict[str, str] | None = None, media: bool = False) -> Prompt:
    """The prompt of a row in any training format: a final assistant message (or the row's response/output)
    is the reference answer and is left out of the prompt. `media`: the model reads the row's images."""
    try:
        sample = normalize(row, columns, media=media)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    if "text" in sample:
        raise DataError(f"{where}: a 'text' row has no prompt to answer; expected a chat row (messages, query, ...)")
    messages = list(sample["messages"])
    reference = None
    if messages[-1]["role"] == "assistant":
        reference = messages.pop()["content"]
    if not messages or messages[-1]["role"] == "system":
        raise DataError(f"{where}: the row has no user message to answer")
    return Prompt(messages, sample.get("tools"), reference, sample.get("chat_template_kwargs"))


def row_messages(row: dict, *, where: str, system: str | None = None) -> tuple[list[dict], str | None]:
    """(prompt messages, reference answer) of a row; `system` is added when the row has no system prompt."""
    prompt = prompt_of(row, where=where)
    messages = prompt.messages
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages, prompt.reference


def chat_encoder(tokenizer, template: str | None = None, system: str | None = None, **kwargs) -> ChatEncoder:
    """The prompt renderer of a run: `template` None is the tokenizer's own Jinja template, an ms-swift name
    renders as ms-swift does; `kwargs` are ChatEncoder's (agent_template, thinking, ...)."""
    return ChatEncoder(tokenizer, template, system, **kwargs)


def encode_chat(tokenizer, messages: list[dict], tools=None, *, template: str | None = None, system: str | None = None) -> list[int]:
    """Prompt token ids of `messages` with the assistant turn opened (see `chat_encoder`)."""
    return chat_encoder(tokenizer, template, system).prompt_ids(messages, tools)


def trained_args(*paths: str | None) -> dict:
    """The arguments a checkpoint was trained with: the args.json of the first of `paths` (a checkpoint folder or
    its run folder) that has one, flat (ms-swift's names; an export's `{"data": {...}}` is unwrapped); {} if none."""
    for path in paths:
        if not path or not os.path.isdir(path):
            continue
        for folder in (path, os.path.dirname(os.path.abspath(path))):
            args_file = os.path.join(folder, "args.json")
            if os.path.isfile(args_file):
                with open(args_file) as f:
                    saved = json.load(f)
                return saved.get("data", saved)
    return {}


def trained_template_args(*paths: str | None) -> dict:
    """The template arguments a checkpoint was trained with (`trained_args`): `{field: value}` for the
    TEMPLATE_FIELDS that were set."""
    data = trained_args(*paths)
    return {k: data[k] for k in TEMPLATE_FIELDS if data.get(k) is not None}


def template_stops(encoder: ChatEncoder) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Where generation stops for the run's template, beside the tokenizer's eos (ms-swift's template
    `stop_words`: the suffix's last piece, e.g. `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, and the eos): stop
    words that are one token as token ids, the others as strings. The tokenizer's Jinja template (no
    --template) stops at what it writes after an assistant turn, stripped."""
    tokenizer = encoder.tokenizer
    if encoder.swift is not None:
        words = encoder.swift.meta.stop_words
    else:
        try:
            words = [encoder.turn_suffix().strip()]
        except DataError:  # no chat template: text prompts stop at the eos only
            words = []
    ids, strings = set(), []
    for word in words:
        if not word:
            continue
        tokens = list(word) if isinstance(word, (list, tuple)) else tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(tokens) == 1:
            ids.add(int(tokens[0]))
        else:
            strings.append(word if isinstance(word, str) else tokenizer.decode(tokens))
    return tuple(sorted(ids)), tuple(dict.fromkeys(strings))
