"""Dataset row formats (the ones ms-swift accepts), normalised to one internal form.

A chat row becomes `{"messages": [{"role", "content"}, ...], "tools": [...] | None}` with the roles
system / user / assistant / tool_call / tool (ms-swift's roles: `tool_response`, `observation`, ... are
spellings of `tool`, `function_call` of `tool_call`); messages keep their `loss` (bool) and `loss_scale`
(float) fields. A pre-training row becomes `{"text": str}`. Detection is a table of
(required keys -> converter), tried in order, like ms-swift's AutoPreprocessor:

    messages / conversation / conversations  OpenAI `role`/`content`, or sharegpt `from`/`value`
    instruction + input/output               alpaca
    query/prompt/question + response/answer  query/response (+ history, system)
    text                                     plain text, every token trained (pre-training)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from swift_jax.data.errors import DROPPED, DataError

MESSAGE_KEYS = ("messages", "conversations", "conversation")
QUERY_KEYS = ("query", "prompt", "question", "problem")
RESPONSE_KEYS = ("response", "answer", "completion", "output", "solution", "target")
SYSTEM_KEYS = ("system", "system_prompt")

# Role spellings of sharegpt / ms-swift -> the role chat templates understand.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "function_call": "tool_call",
    "tool_call": "tool_call",
    "tool": "tool",
    "observation": "tool",
    "observations": "tool",
    "function_response": "tool",
    "tool_response": "tool",
}

FORMATS_HINT = (
    "expected one of: messages=[{role, content}], conversations=[{from, value}], "
    "instruction/input/output (alpaca), query/response (+history), or text"
)


def _first(row: dict, keys: tuple[str, ...]) -> Any:
    """The value of the first key of `keys` present (and not None) in `row`."""
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    return None


def _system_of(row: dict) -> str | None:
    system = _first(row, SYSTEM_KEYS)
    if system is not None and not isinstance(system, str):
        raise DataError(f"field 'system' must be a string, got {type(system).__name__}")
    return system or None


def _message(raw: Any, i: int) -> dict:
    """One message in the internal form; accepts role/content and sharegpt from/value spellings."""
    if not isinstance(raw, dict):
        raise DataError(f"message {i} must be an object with 'role' and 'content', got {type(raw).__name__}")
    role = raw.get("role", raw.get("from"))
    if role is None:
        raise DataError(f"message {i} has no 'role' (or 'from'); keys found: {sorted(raw)}")
    if not isinstance(role, str) or role.replace("-", "_") not in ROLE_ALIASES:
        raise DataError(f"message {i} has unknown role {role!r}; expected one of {sorted(set(ROLE_ALIASES))}")
    role = ROLE_ALIASES[role.replace("-", "_")]
    content = raw.get("content", raw.get("value"))
    tool_calls = raw.get("tool_calls")
    if content is None and not (role == "assistant" and tool_calls):
        raise DataError(f"message {i} (role {role!r}) has no 'content' (or 'value')")
    if role in ("tool_call", "tool") and isinstance(content, (dict, list)):
        content = json.dumps(content, ensure_ascii=False)  # a call {"name", "arguments"} or a structured result
    if isinstance(content, list):
        raise DataError(f"message {i} (role {role!r}) has content parts {content!r:.80}; images, audio and video "
                        "are not supported by this text pipeline")
    if content is not None and not isinstance(content, str):
        raise DataError(f"message {i} (role {role!r}) content must be a string, got {type(content).__name__}")
    message = {"role": role, "content": content or ""}
    if tool_calls:
        message["tool_calls"] = tool_calls
    for key in ("name", "tool_call_id", "reasoning_content"):
        if raw.get(key) is not None:
            message[key] = raw[key]
    if raw.get("loss") is not None:
        if not isinstance(raw["loss"], bool):
            raise DataError(f"message {i}: 'loss' must be true or false, got {raw['loss']!r}")
        message["loss"] = raw["loss"]
    if raw.get("loss_scale") is not None:
        if isinstance(raw["loss_scale"], bool) or not isinstance(raw["loss_scale"], (int, float)):
            raise DataError(f"message {i}: 'loss_scale' must be a number, got {raw['loss_scale']!r}")
        message["loss_scale"] = float(raw["loss_scale"])
    return message


def _pairs_to_messages(pairs: list, system: str | None) -> list[dict]:
    """[[query, response], ...] (ms-swift `history`) -> alternating user/assistant messages."""
    messages = [{"role": "system", "content": system}] if system else []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataError(f"history entry {i} must be a [query, response] pair, got {pair!r}")
        query, response = pair
        if query is not None:
            messages.append(_message({"role": "user", "content": query}, 2 * i))
        if response is not None:
            messages.append(_message({"role": "assistant", "content": response}, 2 * i + 1))
    return messages


def from_messages(row: dict) -> dict:
    """OpenAI `messages` (or sharegpt `conversations` of from/value, or [{user, assistant}] pairs)."""
    raw = _first(row, MESSAGE_KEYS)
    if isinstance(raw, str):  # some exports store the list as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"'messages' is a string that is not valid JSON ({e.msg})") from None
    if not isinstance(raw, list) or not raw:
        raise DataError(f"'messages' must be a non-empty list of messages, got {raw!r:.80}")
    if all(isinstance(m, dict) and "role" not in m and "from" not in m and ("user" in m or "human" in m) for m in raw):
        pairs = [(m.get("user", m.get("human")), m.get("assistant", m.get("gpt"))) for m in raw]
        return {"messages": _pairs_to_messages(pairs, _system_of(row)), "tools": _tools(row)}
    messages = [_message(m, i) for i, m in enumerate(raw)]
    system = _system_of(row)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages, "tools": _tools(row)}


def _tools(row: dict) -> list | None:
    """The row's `tools` (a list of function schemas); ms-swift datasets often store it as a JSON string."""
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as e:
            raise DataError(f"'tools' is a string that is not valid JSON ({e.msg})") from None
    if tools is not None and not isinstance(tools, list):
        tools = [tools] if isinstance(tools, dict) else tools
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise DataError(f"'tools' must be a list of function schemas (objects), got {tools!r:.80}")
    return tools or None


def _history(row: dict) -> list:
    history = row.get("history") or []
    if isinstance(history, str):
        try:
            history = json.loads(history)
        except json.JSONDecodeError:
            raise DataError(f"'history' must be a list of [query, response] pairs, got {history!r:.80}") from None
    if not isinstance(history, list):
        raise DataError(f"'history' must be a list of [query, response] pairs, got {type(history).__name__}")
    return list(history)


def from_query_response(row: dict) -> dict:
    """query/response (+ history and system), with ms-swift's column aliases (prompt, answer, ...)."""
    response = _first(row, RESPONSE_KEYS)
    if isinstance(response, list):  # ms-swift picks the first of several references
        response = response[0] if response else None
    pairs = _history(row) + [(_first(row, QUERY_KEYS), response)]
    return {"messages": _pairs_to_messages(pairs, _system_of(row)), "tools": None}


def from_alpaca(row: dict) -> dict:
    """alpaca: instruction + input -> user ("instruction\\ninput"), output -> assistant."""
    instruction, input_ = row.get("instruction"), row.get("input")
    query = f"{instruction}\n{input_}" if instruction and input_ else (instruction or input_)
    pairs = _history(row) + [(query, row.get("output"))]
    return {"messages": _pairs_to_messages(pairs, _system_of(row)), "tools": None}


def from_text(row: dict) -> dict:
    """Plain text for pre-training: every token is trained."""
    text = row["text"]
    if not isinstance(text, str) or not text:
        raise DataError(f"'text' must be a non-empty string, got {text!r:.80}")
    return {"text": text}


def _has_any(keys: tuple[str, ...]) -> Callable[[dict], bool]:
    return lambda row: any(row.get(k) is not None for k in keys)


# (name, test on the row, converter), tried in order.
FORMATS: list[tuple[str, Callable[[dict], bool], Callable[[dict], dict]]] = [
    ("messages", _has_any(MESSAGE_KEYS), from_messages),
    ("alpaca", lambda r: r.get("instruction") is not None, from_alpaca),
    ("query_response", _has_any(QUERY_KEYS), from_query_response),  # without a response: a prompt (inference)
    ("text", _has_any(("text",)), from_text),
]


def detect_format(row: dict) -> str | None:
    """The name of the first format in FORMATS that `row` matches, or None."""
    for name, test, _ in FORMATS:
        if test(row):
            return name
    return None


MEDIA_FIELDS = ("images", "videos", "audios")
IGNORED_FIELDS = ("rejected_response", "rejected_messages", "label", "chosen", "rejected")
"""Fields ms-swift's SFT also ignores (preference / classification data): named once in the log."""


def unused_fields(row: dict) -> list[str]:
    """The fields of `row` that SFT does not use and that ms-swift's SFT ignores too (see IGNORED_FIELDS)."""
    return [k for k in IGNORED_FIELDS if row.get(k) not in (None, [], "")]


def check_media(row: dict) -> None:
    """A row with images/videos/audios cannot be trained as text: raise instead of training on `<image>` text."""
    media = [k for k in MEDIA_FIELDS if row.get(k) not in (None, [], "")]
    if media:
        raise DataError(f"field {media[0]!r} holds media, but the model is text-only (this pipeline renders text); "
                        f"drop the field or use a multimodal model")


def template_kwargs(value: Any) -> dict:
    """A row's `chat_template_kwargs` (ms-swift 4: a JSON object, e.g. {"enable_thinking": false}; a JSON string
    as Arrow files store it is read too)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, dict):
        raise DataError(f"'chat_template_kwargs' must be an object such as {{\"enable_thinking\": false}}, got {value!r:.80}")
    return value


def normalize(row: Any, columns: dict[str, str] | None = None, *, media: bool = False) -> dict:
    """One dataset row -> {"messages", "tools"} or {"text"}; raises DataError saying what was expected.
    `media`: the model reads images / videos (read from the row by `data.media.row_media`)."""
    if not isinstance(row, dict):
        raise DataError(f"a row must be a JSON object, got {type(row).__name__}; {FORMATS_HINT}")
    if DROPPED in row:
        raise DataError(row[DROPPED])
    if columns:
        row = {columns.get(k, k): v for k, v in row.items()}
    if not media:
        check_media(row)
    for _, test, convert in FORMATS:
        if test(row):
            sample = convert(row)
            if row.get("chat_template_kwargs") is not None and "text" not in sample:
                sample["chat_template_kwargs"] = template_kwargs(row["chat_template_kwargs"])
            return sample
    keys = sorted(k for k, v in row.items() if v is not None)
    raise DataError(f"unknown row format with keys {keys}; {FORMATS_HINT}")
