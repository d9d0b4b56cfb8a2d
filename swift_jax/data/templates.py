"""Render conversations with a chat template and derive the loss mask: `ChatEncoder`.

Two renderers. `--template NAME` with an ms-swift template name (`template_meta.TEMPLATES`) encodes exactly as
ms-swift does (`swift_template.SwiftTemplate`: agent templates, loss_scale weights, thinking controls). Without
`--template` (or with a .jinja file, or a built-in Jinja name below) the tokenizer's own Jinja template renders
the conversation, as inference engines do, and the loss mask is derived by rendering prefixes:

The mask must be right for any Jinja chat template, including those without generation markers. For
each assistant message i we render two prefixes with the tokenizer's own template:

    start = len(render(messages[:i], add_generation_prompt=True))   # the assistant header ends here
    end   = len(render(messages[:i + 1]))                            # the turn, its end token and separator

and train on characters [start, end) of the full rendering, as ms-swift does (for ChatML: the content,
`<|im_end|>` and `\\n`). Templates with a default system prompt work unchanged, since every prefix
carries it. Templates that rewrite earlier turns when a turn is added (Qwen3 drops the reasoning of
assistant turns before the last user message) break the prefix property for those turns; there the span
is found in the full rendering instead: the turn's content, searched after `start`, plus the text the
template puts after an assistant message (`turn_suffix`, measured once with a probe conversation).

The full string is tokenised once (so tokenisation matches inference, which also tokenises the whole
rendering), and a token is trained when any of its characters lies in a trained span: a token that
merges the end of a prompt with the start of the answer (`": Paris"` after a prompt ending in `": "`)
is trained rather than losing the answer's first token.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from swift_jax.data.agent_templates import parse_tool_call
from swift_jax.data.errors import DataError
from swift_jax.data.swift_template import Encoded, SwiftTemplate, ThinkingArgs, last_user_round
from swift_jax.data.template_meta import TEMPLATES, get_template_meta

log = logging.getLogger("swift_jax.data")
IGNORE = -100

def resolve_template(name: str | None, tokenizer) -> str:
    """The Jinja source to render with: a .jinja file, or the tokenizer's own."""
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "the tokenizer has no chat template; pass --template with an ms-swift template name (e.g. chatml, "
                "qwen2_5, llama3) or a .jinja file (or use rows with 'text' for pre-training)"
            )
        return tokenizer.chat_template
    if os.path.isfile(name):
        with open(name) as f:
            return f.read()
    raise DataError(f"--template {name!r} is neither an ms-swift template ({sorted(TEMPLATES)}) nor a .jinja file")


JINJA_LOSS_SCALES = ("default", "last_round", "all")


def jinja_tool_calls(messages: list[dict]) -> list[dict]:
    """`tool_call` messages -> assistant messages with OpenAI `tool_calls` (what HF chat templates read);
    consecutive calls, and the assistant text right before them, become one message."""
    out: list[dict] = []
    for message in messages:
        if message["role"] != "tool_call":
            out.append(message)
            continue
        call = parse_tool_call(message["content"])
        entry = {"type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
        if out and out[-1]["role"] == "assistant":
            out[-1] = {**out[-1], "tool_calls": list(out[-1].get("tool_calls") or []) + [entry]}
            continue
        out.append({"role": "assistant", "content": "", "tool_calls": [entry],
                    **{k: message[k] for k in ("loss", "loss_scale") if k in message}})
    return out


class ChatEncoder:
    """Turns normalised samples ({"messages"} or {"text"}) into token ids, labels and (ms-swift templates with a
    weighting loss_scale) per-token weights; `prompt_ids` renders a prompt for generation the same way."""

    def __init__(self, tokenizer, template: str | None = None, system: str | None = None, loss_on_prompt: bool = False,
                 *, agent_template: str | None = None, loss_scale: str = "default",
                 is_binary_loss_scale: bool | None = None, thinking: ThinkingArgs | None = None,
                 disable_ignore_empty_think: bool = False):
        self.tokenizer = tokenizer
        self.system = system
        if loss_on_prompt:
            loss_scale = "all" if loss_scale == "default" else loss_scale
        self.loss_scale = loss_scale
        self.swift: SwiftTemplate | None = None
        if template in TEMPLATES:
            meta = get_template_meta(template)
            if meta.is_hybrid_thinking and not disable_ignore_empty_think and "ignore_empty_think" not in loss_scale:
                loss_scale += "+ignore_empty_think"  # ms-swift's TemplateArguments._set_loss_scale
            self.swift = SwiftTemplate(tokenizer, meta, system=system, agent_template=agent_template,
                                       loss_scale=loss_scale, is_binary_loss_scale=is_binary_loss_scale, thinking=thinking)
        elif loss_scale not in JINJA_LOSS_SCALES:
            raise DataError(f"--loss_scale {loss_scale!r} needs an ms-swift template (--template, e.g. qwen2_5); "
                            f"the tokenizer's Jinja template supports {list(JINJA_LOSS_SCALES)}")
        elif agent_template is not None:
            raise DataError("--agent_template needs an ms-swift template (--template, e.g. qwen2_5); the tokenizer's "
                            "Jinja template renders tools and tool calls itself")
        self._template_name = template
        # Jinja templates read the thinking switches as variables (Qwen3: enable_thinking)
        self._jinja_kwargs = {k: v for k, v in vars(thinking).items() if k in ("enable_thinking", "preserve_thinking")
                              and v is not None} if thinking else {}
        self._template: str | None = None  # resolved on first chat sample: text-only data needs none
        self._suffix: str | None = None  # see turn_suffix
        self.eos_id = tokenizer.eos_token_id
        # templates read bos_token / eos_token; a base tokenizer may lack one (render it as nothing)
        self._token_strings = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}

    @property
    def template(self) -> str:
        if self._template is None:
            self._template = resolve_template(self._template_name, self.tokenizer)
        return self._template

    def render(self, messages: list[dict], tools=None, add_generation_prompt: bool = False,
               template_kwargs: dict | None = None) -> str:
        """The template's text for `messages` (a Jinja error becomes a DataError naming the template);
        `template_kwargs` (a row's chat_template_kwargs) are Jinja variables over the run's thinking switches."""
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **{**self._token_strings, **self._jinja_kwargs, **(template_kwargs or {})},
            )
        except DataError:
            raise
        except Exception as e:  # jinja2 raises TemplateError and plain exceptions from raise_exception()
            raise DataError(f"the chat template failed on this conversation: {type(e).__name__}: {e}") from None

    def trained_spans(self, messages: list[dict], tools=None, template_kwargs: dict | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The full rendering and the [start, end) character spans of the assistant turns."""
        kw = template_kwargs
        full = self.render(messages, tools, template_kwargs=kw)
        spans, cursor = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self.render(messages[:i], tools, True, kw) if i else self._empty_head(tools, kw)
            turn = self.render(messages[: i + 1], tools, template_kwargs=kw)
            head_ok = full.startswith(head) and len(head) >= cursor
            if head_ok and full.startswith(turn) and len(head) <= len(turn):
                spans.append((len(head), len(turn)))
            else:  # the template rewrites this turn once later turns follow: find it in the full rendering
                spans.append(self._search_turn(full, message, i, len(head) if head_ok else cursor, head_ok, tools))
            cursor = spans[-1][1]
        return full, spans

    def _search_turn(self, full: str, message: dict, index: int, start: int, head_ok: bool, tools) -> tuple[int, int]:
        """The span of assistant message `index` in `full`, searched from `start` (the end of its generation
        prompt when `head_ok`, else the end of the previous turn): through its (possibly reasoning-stripped)
        content, plus the template's turn suffix when that follows."""
        content = message["content"]
        for text in dict.fromkeys(c for c in (content, content.strip(), content.split("</think>")[-1].strip()) if c):
            at = full.find(text, start)
            if at < 0:
                continue
            end = at + len(text)
            suffix = self.turn_suffix()
            if suffix and full.startswith(suffix, end):
                end += len(suffix)
            return (start if head_ok else at), end
        raise DataError(
            f"the chat template rewrites assistant message {index} when later turns follow, and its content "
            "could not be found in the rendering, so the loss mask cannot be derived; pick --template "
            "chatml|llama3 or a .jinja template without history rewriting"
        )

    def turn_suffix(self) -> str:
        """What the template writes after an assistant message's content (ChatML: `<|im_end|>\\n`),
        measured once by rendering a probe conversation that ends with an assistant turn."""
        if self._suffix is None:
            marker = "\x00swift-jax-probe\x00"
            probe = self.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}])
            self._suffix = probe[probe.rindex(marker) + len(marker):] if marker in probe else ""
        return self._suffix

    def _empty_head(self, tools, template_kwargs: dict | None = None) -> str:
        """The generation prompt for a conversation that starts with the assistant."""
        try:
            return self.render([], tools, True, template_kwargs)
        except DataError:  # templates that index messages[0] cannot render an empty conversation
            return ""

    @property
    def weighted(self) -> bool:
        """Whether samples carry per-token `loss_scale` weights (ms-swift's non-binary loss_scale)."""
        return self.swift is not None and self.swift.weighted

    def encode(self, sample: dict) -> Encoded:
        """Tokens and labels of one sample. Text samples train on every token and end with eos; a chat sample's
        `chat_template_kwargs` apply to it alone (ms-swift 4's per-row template switches)."""
        if "text" in sample:
            ids = list(self.tokenizer(sample["text"]).input_ids)
            if self.eos_id is not None:
                ids.append(self.eos_id)
            ids = np.asarray(ids, np.int32)
            return Encoded(ids, ids.copy(), np.ones(len(ids), np.float32) if self.weighted else None)
        if self.swift is not None:
            return self.swift.encode(sample)
        messages = jinja_tool_calls(sample["messages"])
        if self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}] + messages
        if any(m.get("loss_scale") not in (None, 0.0, 1.0) for m in messages):
            raise DataError("a message has a 'loss_scale' other than 0 or 1, which needs an ms-swift template "
                            "(--template, e.g. qwen2_5) to weigh the loss")
        full, spans = self.trained_spans(messages, sample.get("tools"), sample.get("chat_template_kwargs"))
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], np.int32)
        if self.loss_scale == "all":
            return Encoded(ids, ids.copy())
        last_user = last_user_round(messages)
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        keep = [self._trained(messages[i], i > last_user) for i in assistants]
        spans = [span for span, k in zip(spans, keep) if k]
        offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)  # [n, 2] characters of each token
        starts, ends = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0] + 1)
        trained = np.zeros(len(ids), bool)
        for lo, hi in spans:
            trained |= (starts < hi) & (ends > lo)  # any overlap: a token merging prompt and answer is trained
        return Encoded(ids, np.where(trained, ids, IGNORE).astype(np.int32))

    def _trained(self, message: dict, last_round: bool) -> bool:
        """Whether an assistant message is trained on the Jinja path: its own `loss` / `loss_scale`, else the
        loss_scale base strategy (`last_round`: only after the last user or tool message)."""
        if message.get("loss") is not None:
            return message["loss"]
        if message.get("loss_scale") is not None:
            return message["loss_scale"] > 0
        return self.loss_scale != "last_round" or last_round

    def prompt_ids(self, messages: list[dict], tools=None, chat_template_kwargs: dict | None = None) -> list[int]:
        """Token ids of a generation prompt: the conversation with the assistant turn opened (with a row's
        `chat_template_kwargs`)."""
        if self.swift is not None and self.swift.meta.name != "dummy":  # dummy: the tokenizer's Jinja, as ms-swift
            return self.swift.prompt_ids(messages, tools, chat_template_kwargs)
        messages = jinja_tool_calls(messages)
        if self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}] + messages
        text = self.render(messages, tools, add_generation_prompt=True, template_kwargs=chat_template_kwargs)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
