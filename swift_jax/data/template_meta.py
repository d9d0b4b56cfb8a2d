"""ms-swift's chat templates as a table: `--template NAME` renders exactly what ms-swift's template NAME renders.

A template is ms-swift's `TemplateMeta`: a conversation is laid out as

    prefix | system_prefix(SYSTEM)        (system_prefix when there is a system prompt)
    prompt(QUERY) RESPONSE chat_sep       (every round but the last)
    prompt(QUERY) RESPONSE suffix         (the last round)

where each part is a list of strings (with `{{SYSTEM}}`, `{{QUERY}}`, `{{ROUND0}}`, `{{ROUND1}}` placeholders)
or of token ids / tokenizer attribute names (`["eos_token_id"]`). Thinking templates add a response prefix
(`thinking_prefix` / `non_thinking_prefix`) and say whether earlier rounds keep their reasoning.

The entries are copied from ms-swift 4.6 (`swift/template/templates/*.py`) for the text checkpoints of every
architecture swift_jax runs (llama, qwen2, qwen3, qwen3_moe, mistral, mixtral, gemma2/3, phi3, deepseek_v3);
`MODEL_TYPE_TEMPLATES` lists ms-swift's default template per HF `model_type`. Dates in two default prompts
(llama3_2, mistral_2501) are filled in when a template is looked up, as ms-swift does at start-up.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Union

from swift_jax.data.errors import DataError

Context = Union[str, list]
"""One piece of a template: text, or a list of token ids / tokenizer attribute names such as "eos_token_id"."""
Prompt = list  # list[Context]

DEFAULT_SYSTEM = "You are a helpful assistant."
LLAMA_DEFAULT_SYSTEM = (
    "You are a helpful, respectful and honest assistant. "
    "Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, "
    "explain why instead of answering something not correct. "
    "If you don't know the answer to a question, please don't share false information."
)
MISTRAL_2501_SYSTEM = (
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup "
    "headquartered in Paris.\n"
    "Your knowledge base was last updated on 2023-10-01. The current date is {{DATE:%Y-%m-%d}}.\n\n"
    "When you're not sure about some information, you say that you don't have the information and don't "
    "make up anything.\n"
    "If the user's question is not clear, ambiguous, or does not provide enough context for you to accurately answer "
    "the question, you do not try to answer it right away and you rather ask the user to clarify their request (e.g. "
    '"What are some good restaurants around me?" => "Where are you?" or "When is the next flight to Tokyo" => "'
    'Where do you travel from?")'
)
INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@dataclasses.dataclass
class TemplateMeta:
    """ms-swift's TemplateMeta (same field names and meaning), plus the few behaviours ms-swift puts in a
    Template subclass for the templates in this table (the last three fields)."""

    name: str
    prefix: Prompt
    prompt: Prompt
    chat_sep: Prompt | None
    suffix: Prompt = dataclasses.field(default_factory=lambda: [["eos_token_id"]])
    system_prefix: Prompt | None = None
    default_system: str | None = None
    auto_add_bos: bool = False
    stop_words: list = dataclasses.field(default_factory=list)
    agent_template: str | None = None
    is_thinking: bool = False
    thinking_prefix: str = ""
    non_thinking_prefix: str = ""
    preserve_thinking: bool | None = None
    history_thinking_prefix: str = ""
    system_in_first_query: bool = False
    """Gemma 3: no system turn; the system prompt is prepended to the first user message."""
    strip_response_newlines: bool = False
    """Gemma 3: assistant contents lose leading and trailing newlines."""
    non_thinking_prefix_only_after_user: bool = False
    """DeepSeek-V3.1: the non-thinking prefix only opens an assistant turn that follows a user turn."""

    def __post_init__(self):
        has_system = lambda part: any(isinstance(p, str) and "{{SYSTEM}}" in p for p in part)
        if has_system(self.prefix):
            self.system_prefix = self.prefix
            self.prefix = [p.replace("{{SYSTEM}}", "") if isinstance(p, str) else p for p in self.prefix]
        self.is_post_system = has_system(self.prompt)  # mistral_nemo: the system goes into the last query
        self.system_prompt = self.prompt if self.is_post_system else None
        if self.is_post_system:
            self.prompt = [p for p in self.prompt if not (isinstance(p, str) and "{{SYSTEM}}" in p)]
        self.support_system = self.system_prefix is not None or self.is_post_system
        self.support_multi_round = self.chat_sep is not None

    @property
    def is_hybrid_thinking(self) -> bool:
        """A model that thinks or not on request (Qwen3): ms-swift appends `+ignore_empty_think` to loss_scale."""
        return self.is_thinking and bool(self.non_thinking_prefix)


def chatml(name: str, **kw) -> dict:
    """ms-swift's ChatmlTemplateMeta (and QwenTemplateMeta when `qwen=True`), as TemplateMeta arguments."""
    qwen = kw.pop("qwen", False)
    defaults = dict(
        prefix=[],
        prompt=["<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n"],
        chat_sep=["<|im_end|>\n"],
        suffix=["<|im_end|>\n"],
        system_prefix=["<|im_start|>system\n{{SYSTEM}}<|im_end|>\n"],
        auto_add_bos=not qwen,
    )
    if qwen:
        defaults.update(default_system=DEFAULT_SYSTEM, stop_words=["<|endoftext|>"], agent_template="hermes")
    return dict(name=name, **{**defaults, **kw})


def llama3(name: str, **kw) -> dict:
    """ms-swift's Llama3TemplateMeta, as TemplateMeta arguments."""
    defaults = dict(
        prefix=["<|begin_of_text|>"],
        prompt=["<|start_header_id|>user<|end_header_id|>\n\n{{QUERY}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"],
        chat_sep=["<|eot_id|>"],
        suffix=["<|eot_id|>"],
        system_prefix=["<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{SYSTEM}}<|eot_id|>"],
        agent_template="llama3",
    )
    return dict(name=name, **{**defaults, **kw})


GEMMA_PROMPT = ["<start_of_turn>user\n{{QUERY}}<end_of_turn>\n<start_of_turn>model\n"]
DEEPSEEK_V2_5 = dict(
    prefix=["<｜begin▁of▁sentence｜>{{SYSTEM}}"],
    prompt=["<｜User｜>{{QUERY}}<｜Assistant｜>"],
    chat_sep=["<｜end▁of▁sentence｜>"],
    suffix=["<｜end▁of▁sentence｜>"],
)
MISTRAL3 = dict(
    prefix=["<s>"], prompt=["[INST]{{QUERY}}[/INST]"], chat_sep=["</s>"], suffix=["</s>"],
    system_prefix=["<s>[SYSTEM_PROMPT]{{SYSTEM}}[/SYSTEM_PROMPT]"],
)

_TABLE = [
    chatml("chatml"),
    dict(name="default", prefix=[], prompt=["### Human:\n{{QUERY}}\n\n### Assistant:\n"], chat_sep=["\n\n"],
                 default_system=DEFAULT_SYSTEM, system_prefix=["{{SYSTEM}}\n\n"], auto_add_bos=True),
    dict(name="dummy", prefix=[], prompt=["{{QUERY}}"], chat_sep=None, auto_add_bos=True),
    # Qwen
    chatml("qwen", qwen=True),
    chatml("qwen2_5", qwen=True, default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    chatml("qwen2_5_math", qwen=True, default_system="Please reason step by step, and put your final answer within \\boxed{}."),
    chatml("qwq_preview", qwen=True, default_system="You are a helpful and harmless assistant. You are Qwen developed by "
           "Alibaba. You should think step-by-step."),
    chatml("qwq", qwen=True, default_system=None, is_thinking=True, thinking_prefix="<think>\n"),
    chatml("qwen3", qwen=True, default_system=None, is_thinking=True, non_thinking_prefix="<think>\n\n</think>\n\n"),
    chatml("qwen3_thinking", qwen=True, default_system=None, is_thinking=True, thinking_prefix="<think>\n"),
    chatml("qwen3_nothinking", qwen=True, default_system=None),
    # Vision-language (ms-swift's MLLM templates; `<image>` / `<video>` tags: data/media.py)
    chatml("qwen2_vl", qwen=True),
    chatml("qwen2_5_vl", qwen=True),
    chatml("internvl2_5", default_system=INTERNVL2_5_SYSTEM),
    chatml("internvl3_5"),
    chatml("internvl_hf"),
    # Llama, Mistral, Mixtral
    dict(name="llama", prefix=["<s>[INST] "], prompt=["{{QUERY}} [/INST]"], chat_sep=["</s><s>[INST] "],
                 suffix=["</s>"], default_system=LLAMA_DEFAULT_SYSTEM,
                 system_prefix=["<s>[INST] <<SYS>>\n{{SYSTEM}}\n<</SYS>>\n\n"]),
    llama3("llama3"),
    llama3("llama3_2", prefix=["<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                               "December 2023\nToday Date: {{DATE:%d %b %Y}}\n\n{{SYSTEM}}<|eot_id|>"],
           system_prefix=None),
    dict(name="mistral_nemo", prefix=["<s>[INST] "], prompt=["{{SYSTEM}}\n\n", "{{QUERY}}[/INST]"],
                 chat_sep=["</s>[INST] "], suffix=["</s>"]),
    dict(name="mistral_2501", **MISTRAL3, default_system=MISTRAL_2501_SYSTEM),
    # Gemma
    dict(name="gemma", prefix=["<bos>"], prompt=GEMMA_PROMPT, chat_sep=["<end_of_turn>\n"], suffix=["<end_of_turn>"],
                 system_prefix=["<bos><start_of_turn>system\n{{SYSTEM}}<end_of_turn>\n"]),
    dict(name="gemma3_text", prefix=["<bos>"], prompt=GEMMA_PROMPT, chat_sep=["<end_of_turn>\n"],
                 suffix=["<end_of_turn>"], system_in_first_query=True, strip_response_newlines=True),
    dict(name="gemma3_vision", prefix=["<bos>"], prompt=GEMMA_PROMPT, chat_sep=["<end_of_turn>\n"],
                 suffix=["<end_of_turn>"], system_in_first_query=True, strip_response_newlines=True),
    # Phi
    dict(name="phi3", prefix=[], prompt=["<|user|>\n{{QUERY}}<|end|>\n<|assistant|>\n"], chat_sep=["<|end|>\n"],
                 suffix=["<|end|>"], system_prefix=["<|system|>\n{{SYSTEM}}<|end|>\n"], auto_add_bos=True),
    dict(name="phi4", prefix=[], prompt=["<|im_start|>user<|im_sep|>{{QUERY}}<|im_end|><|im_start|>assistant<|im_sep|>"],
                 chat_sep=["<|im_end|>"], suffix=["<|im_end|>"],
                 system_prefix=["<|im_start|>system<|im_sep|>{{SYSTEM}}<|im_end|>"], auto_add_bos=True),
    # DeepSeek
    dict(name="deepseek_v2_5", **DEEPSEEK_V2_5),
    dict(name="deepseek_r1", **DEEPSEEK_V2_5, is_thinking=True, thinking_prefix="<think>\n"),
    dict(name="deepseek_v3_1", **DEEPSEEK_V2_5, agent_template="deepseek_v3_1", is_thinking=True,
                 thinking_prefix="<think>", non_thinking_prefix="</think>", history_thinking_prefix="</think>",
                 non_thinking_prefix_only_after_user=True),
]
TEMPLATES: dict[str, dict] = {spec["name"]: spec for spec in _TABLE}
"""ms-swift template name -> its TemplateMeta arguments (built on lookup: `get_template_meta`)."""

MODEL_TYPE_TEMPLATES: dict[str, str] = {
    "llama": "llama3",
    "qwen2": "qwen2_5",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3",
    "mistral": "llama",
    "mixtral": "llama",
    "gemma2": "gemma",
    "gemma3_text": "gemma3_text",
    "phi3": "phi3",
    "deepseek_v3": "deepseek_v2_5",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "internvl": "internvl_hf",
    "gemma3": "gemma3_vision",
}
"""HF model_type -> the template ms-swift registers for that architecture's chat checkpoints (the flagship
group; ms-swift picks per checkpoint, e.g. Llama-2 -> `llama`, DeepSeek-R1 -> `deepseek_r1`, Qwen3-*-2507
-> `qwen3_thinking` / `qwen3_nothinking`: pass `--template` for those)."""


def _fill_dates(part, today: datetime.date):
    """`{{DATE:fmt}}` -> today's date in `fmt` (ms-swift computes these once, at import)."""
    if isinstance(part, str):
        while "{{DATE:" in part:
            start = part.index("{{DATE:")
            end = part.index("}}", start)
            part = part[:start] + today.strftime(part[start + 7 : end]) + part[end + 2 :]
        return part
    if isinstance(part, list):
        return [_fill_dates(p, today) for p in part]
    return part


def get_template_meta(name: str, today: datetime.date | None = None) -> TemplateMeta:
    """ms-swift's template `name` as a new TemplateMeta, dates filled with `today` (default: now)."""
    if name not in TEMPLATES:
        raise DataError(f"--template {name!r} is not a known template; choose one of {sorted(TEMPLATES)} "
                        "or give a .jinja file (or leave --template unset to use the tokenizer's own)")
    today = today or datetime.date.today()
    return TemplateMeta(**{key: _fill_dates(value, today) for key, value in TEMPLATES[name].items()})
