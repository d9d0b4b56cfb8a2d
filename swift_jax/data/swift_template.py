"""Encode a conversation the way ms-swift's `Template` does (`--template NAME`): token ids, labels, weights.

The conversation is cut into query/response rounds and laid out with the template's parts
(`template_meta.TemplateMeta`); each piece gets a weight from `--loss_scale` (0 = not trained); pieces of
equal weight are joined and each joined piece is tokenised on its own, exactly as ms-swift does, so the ids
and labels equal ms-swift's (tests compare with ms-swift's own encodings, `tests/golden/templates/`).

Before the layout, as in ms-swift: OpenAI `tool_calls` become `tool_call` messages; consecutive `tool_call`
messages become one assistant message (agent template); `tool` messages after an assistant turn become the
next query (never trained); consecutive user messages are joined, consecutive assistant messages become
segments of one response (each with its own `loss` / `loss_scale`); hybrid-thinking templates prefix
responses with the non-thinking marker; earlier rounds lose their reasoning unless thinking is preserved;
the row's `tools` are written into the system prompt by the agent template.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np

from swift_jax.data.agent_templates import get_agent_template, remove_arrow_padding, wrap_tool
from swift_jax.data.errors import DataError
from swift_jax.data.loss_scale import OTHER, RESPONSE, SUFFIX, LossScale
from swift_jax.data.template_meta import TemplateMeta

IGNORE = -100
ROW_THINKING_KEYS = ("enable_thinking", "preserve_thinking", "response_prefix")
"""The `chat_template_kwargs` keys ms-swift's own templates read per row (Jinja templates receive them all)."""


@dataclasses.dataclass
class Encoded:
    """One tokenised sample: `input_ids`, HF-style unshifted `labels` (IGNORE where not trained) and, when the
    loss_scale strategy weighs tokens, `loss_scale` (a weight per token, aligned with labels)."""

    input_ids: np.ndarray  # [n] int32
    labels: np.ndarray  # [n] int32
    loss_scale: np.ndarray | None = None  # [n] float32


@dataclasses.dataclass
class ThinkingArgs:
    """ms-swift's thinking controls (TemplateArguments): None means the template's own default."""

    enable_thinking: bool | None = None
    preserve_thinking: bool | None = None
    add_non_thinking_prefix: bool = True
    response_prefix: str | None = None


def last_user_round(messages: list[dict], include_tool: bool = True) -> int:
    """Index of the last user (or tool) message, -1 when none."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user" or include_tool and messages[i]["role"] == "tool":
            return i
    return -1


def openai_tool_calls(messages: list[dict]) -> list[dict]:
    """Assistant messages with OpenAI `tool_calls` -> the assistant text (if any) and one `tool_call` message
    per call; their tool responses are put in call order when `tool_call_id`s allow (ms-swift's
    normalize_openai_tool_calls)."""
    out, messages = [], list(messages)
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if not calls:
            out.append(message)
            continue
        order = {call.get("id"): i for i, call in enumerate(calls)}
        end = index + 1
        while end < len(messages) and messages[end].get("role") in ("tool", "tool_response"):
            end += 1
        responses = messages[index + 1 : end]
        if None not in order and len(order) == len(calls) == len(responses) and set(order) == {r.get("tool_call_id") for r in responses}:
            messages[index + 1 : end] = sorted(responses, key=lambda r: order[r["tool_call_id"]])
        if message.get("content"):
            out.append({k: v for k, v in message.items() if k in ("role", "content", "loss", "loss_scale")})
        for call in calls:
            function = call.get("function", call)
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            new = {"role": "tool_call", "content": {"name": function["name"], "arguments": arguments}}
            new.update({k: message[k] for k in ("loss", "loss_scale") if k in message})
            out.append(new)
    return out


class SwiftTemplate:
    """ms-swift's template `meta` on `tokenizer`: `encode(sample)` for training, `prompt_ids(...)` for inference."""

    def __init__(self, tokenizer, meta: TemplateMeta, *, system: str | None = None, agent_template: str | None = None,
                 loss_scale: str = "default", is_binary_loss_scale: bool | None = None,
                 thinking: ThinkingArgs | None = None, training: bool = True):
        if system is not None and not meta.support_system:
            raise DataError(f"template {meta.name!r} has no system prompt; drop --system (or pick another --template)")
        self.tokenizer, self.meta, self.training = tokenizer, meta, training
        if system is not None:
            meta.default_system = system
        self.loss_scale = LossScale(loss_scale)
        self.weighted = not (self.loss_scale.is_binary if is_binary_loss_scale is None else is_binary_loss_scale)
        self.thinking = thinking or ThinkingArgs()
        self.enable_thinking = self.thinking.enable_thinking
        if self.enable_thinking is None:
            self.enable_thinking = meta.is_thinking and not meta.non_thinking_prefix
        self._agent_name = agent_template
        self._agent = None
        self._resolve_tokens()

    # -- template parts -> token ids, stop words (ms-swift's TemplateMeta.init) ---------------------------
    def _resolve_tokens(self) -> None:
        meta, tok = self.meta, self.tokenizer

        def ids(part):
            if part is None:
                return None
            return [[getattr(tok, x) if isinstance(x, str) else x for x in p] if isinstance(p, list) else p for p in part]

        for key in ("prefix", "prompt", "chat_sep", "suffix", "system_prefix", "system_prompt"):
            setattr(meta, key, ids(getattr(meta, key)))
        stop = meta.suffix[-1] if meta.suffix else None
        stop = stop.strip() if isinstance(stop, str) else stop
        meta.stop_words = list(meta.stop_words)
        if stop and stop not in meta.stop_words:
            meta.stop_words.append(stop)
        if tok.eos_token not in meta.stop_words:
            meta.stop_words.append(tok.eos_token)
        self.suffix_ids = self._tokenize_pieces(meta.suffix)

    @property
    def agent(self):
        """The agent template (resolved on first use: rows without tools need none)."""
        if self._agent is None:
            self._agent = get_agent_template(self._agent_name, self.meta)
        return self._agent

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _tokenize_pieces(self, pieces) -> list[int]:
        return [t for p in pieces for t in (self._tokenize(p) if isinstance(p, str) else p)]

    # -- message preprocessing (ms-swift's _swift_prepare_inputs and the thinking rules) -----------------
    def _merge_tool_calls(self, messages: list[dict]) -> None:
        i = 0
        while i < len(messages):
            if messages[i]["role"] != "tool_call":
                i += 1
                continue
            start = i
            while i + 1 < len(messages) and messages[i + 1]["role"] == "tool_call":
                i += 1
            calls = messages[start : i + 1]
            merged = {"role": "assistant", "content": self.agent.format_tool_calls(calls)}
            for call in calls:
                for key in ("loss", "loss_scale"):
                    if key in call and key not in merged:
                        merged[key] = call[key]
            messages[start : i + 1] = [merged]
            i = start + 1

    def _fold_standalone_tools(self, messages: list[dict]) -> None:
        """Tool results right after a user message are appended to that query (ms-swift)."""
        i = 0
        while i < len(messages):
            if messages[i]["role"] != "tool" or i > 0 and messages[i - 1]["role"] in ("assistant", "tool"):
                i += 1
                continue
            start = i
            while i + 1 < len(messages) and messages[i + 1]["role"] == "tool":
                i += 1
            if start == 0 or messages[start - 1]["role"] != "user":
                raise DataError("a tool message must follow an assistant (tool call) or a user message")
            pieces = self.agent.format_standalone_tool_responses(messages[start : i + 1])
            messages[start - 1]["content"] = (messages[start - 1]["content"] or "") + "".join(pieces)
            del messages[start : i + 1]
            i = start

    def _prepare(self, messages: list[dict]) -> None:
        self._merge_tool_calls(messages)
        self._fold_standalone_tools(messages)
        i = 1
        while i < len(messages):
            pre, cur = messages[i - 1], messages[i]
            if pre["role"] == "assistant" and cur["role"] == "tool":
                start = i
                while i + 1 < len(messages) and messages[i + 1]["role"] == "tool":
                    i += 1
                pre["content"], pieces = self.agent.format_tool_responses(pre["content"], messages[start : i + 1])
                messages[start : i + 1] = [{"role": "tool", "content": pieces}]
                i = start + 1
            elif pre["role"] == cur["role"] == "assistant":
                for key in ("content", "loss", "loss_scale"):
                    a, b = pre.get(key), cur.get(key)
                    pre[key] = (a if isinstance(a, list) else [a]) + (b if isinstance(b, list) else [b])
                messages.pop(i)
            elif pre["role"] == cur["role"] == "user":
                pre["content"] = pre["content"] + cur["content"]
                messages.pop(i)
            else:
                i += 1

    def _preserve_thinking(self) -> bool:
        if self.thinking.preserve_thinking is not None:
            return self.thinking.preserve_thinking
        if self.meta.preserve_thinking is not None:
            return self.meta.preserve_thinking
        if self.meta.is_thinking or self.enable_thinking:
            return self.training and self.loss_scale.base != "last_round"
        return True

    def _add_non_thinking_prefix(self, messages: list[dict], thinking_prefix: str = "<think>") -> None:
        prefix = self.meta.non_thinking_prefix
        if not prefix:
            return
        only_last = (not self.training or self.loss_scale.base == "last_round") and not self.meta.preserve_thinking
        start = last_user_round(messages) if only_last else -1
        for i, message in enumerate(messages):
            if not (i >= start and message["role"] == "assistant"):
                continue
            if self.meta.non_thinking_prefix_only_after_user and not (i > 0 and messages[i - 1]["role"] == "user"):
                continue
            content = message["content"]
            if isinstance(content, list):
                if content and isinstance(content[0], str) and not content[0].startswith((thinking_prefix, prefix)):
                    content[0] = prefix + content[0]
            elif isinstance(content, str) and not content.startswith((thinking_prefix, prefix)):
                message["content"] = prefix + content

    def _remove_history_thinking(self, messages: list[dict]) -> None:
        strip = lambda text: self.meta.history_thinking_prefix + text.split("</think>")[-1].strip()
        last = last_user_round(messages)
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and i < last:
                content = message["content"]
                if isinstance(content, list) and content and isinstance(content[0], str):
                    content[0] = strip(content[0])
                elif isinstance(content, str):
                    message["content"] = strip(content)

    def _response_prefix(self) -> str:
        if self.thinking.response_prefix is not None:
            return self.thinking.response_prefix
        return self.meta.thinking_prefix if self.enable_thinking else self.meta.non_thinking_prefix

    # -- layout (ms-swift's _swift_encode) --------------------------------------------------------------
    def _layout(self, messages: list[dict], system: str | None, tools) -> tuple[list, list[str]]:
        """The conversation as template pieces and their context types."""
        meta = self.meta
        if meta.system_in_first_query:  # Gemma 3
            if system is not None:
                messages[0]["content"] = system + "\n\n" + messages[0]["content"]
                system = None
            for message in messages:
                if message["role"] == "assistant" and isinstance(message["content"], str):
                    message["content"] = message["content"].strip("\n")
        if self.thinking.add_non_thinking_prefix:
            self._add_non_thinking_prefix(messages)
        if not self._preserve_thinking():
            self._remove_history_thinking(messages)
        if system is not None and not meta.support_system:
            raise DataError(f"template {meta.name!r} has no system prompt, but the row has one")
        if system is None:
            system = meta.default_system
        if tools:
            system = self.agent.format_tools(tools, system, messages[0])
        if messages and messages[0]["role"] == "assistant":
            messages.insert(0, {"role": "user", "content": ""})
        if len(messages) % 2 == 1:
            messages.append({"role": "assistant", "content": None})
        if len(messages) > 2 and not meta.support_multi_round:
            del messages[:-2]

        pieces, types = [], []
        sep_token = None
        if meta.auto_add_bos:
            everything = list(self.tokenizer.encode("a"))
            single = self._tokenize("a")
            at = everything.index(single[0])
            bos, sep_token = everything[:at], everything[at + 1 :]
            if bos:
                pieces.append(bos)
                types.append(OTHER)
        prefix = meta.prefix if meta.is_post_system or not system else meta.system_prefix
        if prefix is None:  # the system prompt came from the agent template's tool list
            raise DataError(f"template {meta.name!r} has no system prompt, so the row's tools cannot be written; "
                            "use a template with a system prompt (or an agent template that puts tools elsewhere)")
        _concat(prefix, pieces, types, system=system)
        n_round = len(messages) // 2
        response = None
        for i in range(n_round):
            query_msg, response_msg = messages[2 * i], messages[2 * i + 1]
            if query_msg["role"] not in ("user", "tool") or response_msg["role"] != "assistant":
                raise DataError(f"messages must alternate user/tool and assistant; got {query_msg['role']!r} then "
                                f"{response_msg['role']!r} at message {2 * i}")
            query, response = query_msg["content"], response_msg["content"]
            if query_msg["role"] == "tool":
                prompt, query = query, ""
            elif meta.is_post_system and i == n_round - 1:
                prompt = meta.system_prompt
            else:
                prompt = meta.prompt
            context = list(prompt)
            extra, extra_type = [], None
            if i < n_round - 1:
                context.append("{{RESPONSE}}")
                if messages[2 * (i + 1)]["role"] != "tool":
                    extra, extra_type = meta.chat_sep, OTHER
            elif response is not None:
                context.append("{{RESPONSE}}")
                text = response if isinstance(response, str) else response[-1]
                ends_with_stop = any(text.endswith(w) for w in meta.stop_words if isinstance(w, str))
                if self.training and not sep_token and not ends_with_stop:
                    extra, extra_type = meta.suffix, SUFFIX
            elif self._response_prefix():
                context.append(self._response_prefix())
            _concat(context, pieces, types, query=query, response=response, system=system, round0=i)
            pieces += list(extra)
            types += [extra_type] * len(extra)
        if meta.auto_add_bos and sep_token:
            pieces.append(sep_token)
            types.append(SUFFIX)
        return pieces, types

    def _conversation(self, sample: dict) -> tuple[list[dict], str | None, list | None]:
        """Messages (system split off, tool roles normalised), system and wrapped tools of a sample."""
        messages = openai_tool_calls(copy.deepcopy(sample["messages"]))
        system = None
        if messages and messages[0]["role"] == "system":
            system = messages.pop(0)["content"]
        for message in messages:
            if message["role"] == "tool_response":
                message["role"] = "tool"
            if message["role"] in ("tool_call", "tool") and not isinstance(message["content"], str):
                message["content"] = json.dumps(message["content"], ensure_ascii=False)
        tools = sample.get("tools")
        if tools:
            tools = [wrap_tool(remove_arrow_padding(t)) for t in tools]
        if any(m["role"] in ("tool_call", "tool") for m in messages) or tools:
            self.agent  # fail early, naming the missing --agent_template
        return messages, system, tools

    def _pieces(self, sample: dict) -> tuple[list, list[float]]:
        messages, system, tools = self._conversation(sample)
        self._prepare(messages)
        pieces, types = self._layout(messages, system, tools)
        pieces, weights = self.loss_scale(pieces, types, messages)
        return _join_equal_weights(pieces, weights)

    def for_row(self, chat_template_kwargs: dict | None) -> "SwiftTemplate":
        """This template with a row's `chat_template_kwargs` applied: its enable_thinking, preserve_thinking and
        response_prefix win over the run's for that row (ms-swift's _get_enable_thinking and siblings)."""
        row = {k: v for k, v in (chat_template_kwargs or {}).items() if k in ROW_THINKING_KEYS and v is not None}
        if not row:
            return self
        view = copy.copy(self)
        view.thinking = dataclasses.replace(self.thinking, **row)
        view.enable_thinking = row.get("enable_thinking", self.enable_thinking)
        return view

    def encode(self, sample: dict) -> Encoded:
        """Token ids, labels and (when weighted) per-token weights of one `{"messages", "tools"}` sample (and its
        optional `chat_template_kwargs`)."""
        if sample.get("chat_template_kwargs"):
            return self.for_row(sample["chat_template_kwargs"])._encode(sample)
        return self._encode(sample)

    def _encode(self, sample: dict) -> Encoded:
        pieces, weights = self._pieces(sample)
        ids, labels, scale = [], [], []
        for piece, weight in zip(pieces, weights):
            tokens = self._tokenize(piece) if isinstance(piece, str) else list(piece)
            ids += tokens
            labels += tokens if weight > 0 else [IGNORE] * len(tokens)
            scale += [weight] * len(tokens)
        _add_dynamic_eos(ids, labels, scale if self.weighted else None, self.suffix_ids)
        if labels:
            labels[0], scale[0] = IGNORE, 0.0
        return Encoded(np.asarray(ids, np.int32), np.asarray(labels, np.int32),
                       np.asarray(scale, np.float32) if self.weighted else None)

    def prompt_ids(self, messages: list[dict], tools=None, chat_template_kwargs: dict | None = None) -> list[int]:
        """Token ids of the prompt for generation: the conversation with the assistant turn opened (with the
        row's `chat_template_kwargs` applied)."""
        if self.meta.name == "dummy":
            raise DataError("ms-swift's `dummy` template renders prompts with the tokenizer's chat template at inference")
        view = copy.copy(self.for_row(chat_template_kwargs))
        view.training = False
        pieces, _ = view._pieces({"messages": messages, "tools": tools})
        return [t for p in pieces for t in (self._tokenize(p) if isinstance(p, str) else p)]


def _concat(parts, pieces: list, types: list, *, system=None, query=None, response=None, round0=None) -> None:
    """Append template parts with their placeholders filled (ms-swift's _concat_context_list)."""
    values = {"{{SYSTEM}}": system, "{{QUERY}}": query,
              "{{ROUND0}}": None if round0 is None else str(round0), "{{ROUND1}}": None if round0 is None else str(round0 + 1)}
    for part in parts:
        if isinstance(part, str):
            if part == "{{RESPONSE}}":
                pieces.append(response)
                types.append(RESPONSE)
                continue
            for key, value in values.items():
                if value is not None and key in part:
                    part = part.replace(key, value)
        if len(part) == 0:
            continue
        pieces.append(part)
        types.append(OTHER)


def _join_equal_weights(pieces: list, weights: list[float]) -> tuple[list, list[float]]:
    """Join neighbouring text pieces of equal weight (token-id pieces stay apart), as ms-swift tokenises them."""
    out, out_w, text, text_w = [], [], [], 0.0
    for piece, weight in zip(pieces, weights):
        if isinstance(piece, str) and weight == text_w:
            text.append(piece)
            continue
        if text:
            out.append("".join(text))
            out_w.append(text_w)
            text = []
        if isinstance(piece, str):
            text.append(piece)
        else:
            out.append(piece)
            out_w.append(weight)
        text_w = weight
    if text:
        out.append("".join(text))
        out_w.append(text_w)
    return out, out_w


def _add_dynamic_eos(ids: list[int], labels: list[int], scale: list[float] | None, suffix: list[int]) -> None:
    """Train the template suffix where it closes a response but was given weight 0 (ms-swift's _add_dynamic_eos)."""
    n, start = len(suffix), 0
    for i in range(1, len(labels) + 1):
        if labels[i - 1] >= 0 and i < len(labels) and labels[i] == IGNORE:
            start = i
        elif start > 0 and labels[i - 1] == IGNORE and (i == len(labels) or labels[i] >= 0):
            if i - start >= n and ids[start : start + n] == suffix:
                labels[start : start + n] = suffix
                if scale and scale[start : start + n] == [0] * n:
                    scale[start : start + n] = [1] * n
