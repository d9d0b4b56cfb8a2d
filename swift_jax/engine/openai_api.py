"""OpenAI request bodies -> engine submissions, and engine outputs -> OpenAI response objects.

Pure functions (no HTTP): the server (`engine.server`) and the chat app call them. A body's fields are
checked one by one, and a bad one raises `RequestError` naming it (HTTP 400). Chat prompts are rendered as
training renders rows (the deploy `--template` / `--system`, or what the checkpoint was trained with).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from swift_jax.data.errors import DataError
from swift_jax.data.frontend import prompt_of
from swift_jax.data.media import content_parts
from swift_jax.data.tool_calls import parse_tool_calls
from swift_jax.data.vision import prompt_inputs
from swift_jax.engine.params import GenerationConfig, GenerationOutput


class RequestError(ValueError):
    """A client mistake, answered with an OpenAI-style error body (`status`: 400, or 404 for an unknown model)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def _number(body: dict, name: str, kind: type, default):
    """Field `name` of `body` as `kind` (int or float), or `default` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise RequestError(f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r:.60}", param=name)
    return kind(value)


def _strings(body: dict, name: str) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RequestError(f"'{name}' must be a string or a list of strings, got {value!r:.60}", param=name)


def sampling_config(body: dict[str, Any], defaults, eos: tuple[int, ...], stop_words: tuple[str, ...]) -> GenerationConfig:
    """The request's generation settings; absent fields take the server's `defaults` (its GenerationArgs).
    Generation also stops at `eos` and the template's `stop_words`, as for infer."""
    if not isinstance(body.get("stream", False), bool):
        raise RequestError(f"'stream' must be true or false, got {body['stream']!r:.60}", param="stream")
    ids = body.get("stop_token_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise RequestError(f"'stop_token_ids' must be a list of integers, got {ids!r:.60}", param="stop_token_ids")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, (bool, int)):
        raise RequestError(f"'logprobs' must be a boolean (chat) or an integer (completions), got {logprobs!r:.60}", param="logprobs")
    top = _number(body, "top_logprobs", int, 0)
    if isinstance(logprobs, int) and not isinstance(logprobs, bool):  # /v1/completions: logprobs = how many alternatives
        top, logprobs = logprobs, True
    stop = _strings(body, "stop")
    if body.get("ignore_eos"):  # vLLM's extra: generate max_tokens whatever comes
        eos, stop_words = (), ()
    max_tokens = _number(body, "max_completion_tokens", int, None) or _number(body, "max_tokens", int, None) or defaults.max_new_tokens
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", float, defaults.temperature),
        top_k=_number(body, "top_k", int, defaults.top_k),
        top_p=_number(body, "top_p", float, defaults.top_p),
        min_p=_number(body, "min_p", float, 0.0),
        repetition_penalty=_number(body, "repetition_penalty", float, defaults.repetition_penalty),
        presence_penalty=_number(body, "presence_penalty", float, 0.0),
        frequency_penalty=_number(body, "frequency_penalty", float, 0.0),
        seed=_number(body, "seed", int, defaults.seed),
        stop=stop + tuple(w for w in stop_words if w not in stop),
        stop_token_ids=tuple(ids),
        eos_token_ids=eos,
        n=_number(body, "n", int, 1),
        logprobs=bool(logprobs) or top > 0,
        top_logprobs=top,
    )
    try:
        config.check()
    except ValueError as err:
        raise RequestError(str(err), param=str(err).split("=")[0]) from None
    return config


def chat_prompt(body: dict[str, Any], encoder, vision=None):
    """Prompt ids of a chat request's `messages` (and `tools`), normalised and rendered as training renders
    rows; with a vision-language model (`vision`), `image_url` / `video_url` parts (local paths, data URLs)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {'role', 'content'} objects", param="messages")
    try:
        if vision is not None:
            messages, media = content_parts(messages)
            request = {"messages": messages, "tools": body.get("tools"), "chat_template_kwargs": body.get("chat_template_kwargs")}
            prompt = prompt_of(request, where="request", media=True)
            if prompt.reference is not None:
                prompt.messages.append({"role": "assistant", "content": prompt.reference})
            return prompt_inputs(vision, encoder, prompt.messages, prompt.tools, media, "request", prompt.chat_template_kwargs)
        flat = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only (this server runs a text model)
                kinds = sorted({p.get("type") for p in content if isinstance(p, dict) and p.get("type") != "text"})
                if kinds:
                    raise RequestError(f"messages[{i}] has {kinds} content parts; this model reads text only", param=f"messages[{i}]")
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            flat.append({**m, "content": content})
        request = {"messages": flat, "tools": body.get("tools"), "chat_template_kwargs": body.get("chat_template_kwargs")}
        prompt = prompt_of(request, where="request")
        if prompt.reference is not None:  # a request may end with an assistant message: it is history here
            prompt.messages.append({"role": "assistant", "content": prompt.reference})
        return encoder.prompt_ids(prompt.messages, prompt.tools, prompt.chat_template_kwargs)
    except DataError as err:
        raise RequestError(str(err), param="messages") from None


def completion_prompts(body: dict[str, Any], tokenizer) -> list[list[int]]:
    """The prompts of a `/v1/completions` request: a string, a list of strings, token ids or lists of them."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(p, (str, list)) for p in prompt):
        raise RequestError("'prompt' must be a string, a list of strings, or token ids (a list of integers, or lists of them)", param="prompt")
    out = []
    for p in prompt:
        ids = tokenizer.encode(p, add_special_tokens=False) if isinstance(p, str) else p
        if not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise RequestError("every prompt must be a non-empty string or a non-empty list of token ids", param="prompt")
        out.append(list(ids))
    return out


def head(kind: str, model: str, prefix: str = "chatcmpl") -> dict[str, Any]:
    """The fields every response object starts with."""
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(tokenizer, token_ids, logprobs, top_logprobs) -> dict | None:
    """OpenAI's chat `logprobs` object: per token its text, log-prob, bytes and the top alternatives."""
    if logprobs is None:
        return None

    def entry(token: int, lp: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    content = []
    for i, (token, lp) in enumerate(zip(token_ids, logprobs)):
        alternatives = top_logprobs[i] if top_logprobs else []
        content.append({**entry(token, lp), "top_logprobs": [entry(t, v) for t, v in alternatives]})
    return {"content": content}


def completion_logprobs(tokenizer, token_ids, logprobs, top_logprobs) -> dict | None:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs (token -> log-prob)."""
    if logprobs is None:
        return None
    tokens = [tokenizer.decode([t]) for t in token_ids]
    tops = [{tokenizer.decode([t]): v for t, v in alt} for alt in top_logprobs] if top_logprobs else None
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": tops, "text_offset": offsets}


def chat_message(out: GenerationOutput, tools: bool, agent) -> tuple[dict, str]:
    """The assistant message of one sample (with `tool_calls` when the request carried tools and the text
    holds calls, as ms-swift's deploy does) and its finish reason."""
    message: dict[str, Any] = {"role": "assistant", "content": out.text}
    if tools:
        calls = parse_tool_calls(out.text, agent)
        if calls:
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": c} for c in calls
            ]
    return message, out.finish_reason


def agent_of(encoder):
    """The chat template's agent template (for reading tool calls back), or None (the tokenizer's template)."""
    swift = getattr(encoder, "swift", None)
    try:
        return swift.agent if swift is not None else None
    except DataError:
        return None


@dataclasses.dataclass
class Prepared:
    """A validated request: its prompts (token ids or vision prompts), settings and adapter."""

    prompts: list
    config: GenerationConfig
    adapter: str | None
    stream: bool
    include_usage: bool
