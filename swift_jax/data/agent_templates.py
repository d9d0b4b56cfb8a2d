"""ms-swift's agent templates (`--agent_template`): how tools, tool calls and tool responses are written.

An agent template turns

- the row's `tools` into text appended to the system prompt (`format_tools`; llama3 writes them into the
  first user message instead),
- consecutive `tool_call` messages (JSON `{"name", "arguments"}`) into one assistant message
  (`format_tool_calls`),
- the `tool` (`tool_response`) messages after an assistant turn into the text that separates that turn from
  the next response (`format_tool_responses`: returns the possibly amended assistant text and the prompt
  pieces; the pieces are never trained).

Copied from ms-swift 4.6 `swift/agent_template/` (hermes, react_en/zh, qwen_en/zh[_parallel], glm4, chatglm4,
llama3), strings verbatim, so the rendering and the loss mask match ms-swift's.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from swift_jax.data.errors import DataError

_NULL_VALUE_KEYS = frozenset({"default", "const"})
_NULL_ITEM_KEYS = frozenset({"enum", "examples"})
_SCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")


def remove_arrow_padding(schema: Any) -> Any:
    """A tool schema without the `null` fields Arrow adds when it aligns the rows of a `tools` column to one
    struct type (ms-swift's `remove_arrow_padding`): nulls stay only where JSON Schema allows them."""
    if isinstance(schema, list):
        return [remove_arrow_padding(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    cleaned = {}
    for key, value in schema.items():
        if key in _NULL_VALUE_KEYS or key.startswith("x-"):
            cleaned[key] = value
        elif key in _NULL_ITEM_KEYS:
            if value is not None:
                cleaned[key] = value
        elif value is None:
            continue
        elif key in _SCHEMA_MAP_KEYS and isinstance(value, dict):
            cleaned[key] = {name: remove_arrow_padding(item) for name, item in value.items() if item is not None}
        else:
            cleaned[key] = remove_arrow_padding(value)
    return cleaned


def parse_json(text: Any) -> Any:
    """JSON (or a Python literal) from a string; non-strings pass through; None when unparsable."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)
        except Exception:
            return None


def unwrap_tool(tool: dict) -> dict:
    """The function schema of an OpenAI `{"type": "function", "function": {...}}` tool (or the tool itself)."""
    return tool["function"] if "type" in tool and "function" in tool else tool


def wrap_tool(tool: dict) -> dict:
    """A bare function schema as an OpenAI `{"type": "function", "function": {...}}` tool."""
    return {"type": "function", "function": tool} if "type" not in tool and "function" not in tool else tool


def parse_tool_call(content: Any) -> dict:
    """`{"name", "arguments"}` of one tool_call message (`parameters` accepted for `arguments`)."""
    obj = parse_json(content)
    if not isinstance(obj, dict) or "name" not in obj:
        raise DataError(f"a tool_call message must hold a JSON object with 'name' and 'arguments', got {content!r:.120}")
    arguments = obj.get("arguments")
    if arguments is None:
        arguments = obj.get("parameters")
    arguments = parse_json(arguments)
    if arguments is None:
        raise DataError(f"tool_call {obj['name']!r} has no parseable 'arguments': {content!r:.120}")
    return {"name": obj["name"], "arguments": arguments}


def _tool_desc(tool: dict, lang: str) -> dict:
    """ms-swift's ToolDesc of one tool (react / qwen templates)."""
    tool = unwrap_tool(tool)
    name = tool.get("name_for_model") or tool.get("name")
    description = tool.get("description")
    if description is None:
        description = tool.get("description_for_model")
    if name is None or description is None:
        raise DataError(f"a tool needs a 'name' and a 'description', got {json.dumps(tool, ensure_ascii=False):.120}")
    parameters = tool.get("parameters") or {}
    return {
        "name": name,
        "human": tool.get("name_for_human") or name,
        "description": description,
        "parameters": parameters if isinstance(parameters, str) else json.dumps(parameters, ensure_ascii=False),
        "args_format": "此工具的输入应为JSON对象。" if lang == "zh" else "Format the arguments as a JSON object.",
    }


class AgentTemplate:
    """ms-swift's BaseAgentTemplate with ReAct keywords: subclasses override the pieces that differ."""

    action, action_input, observation = "Action:", "Action Input:", "Observation:"

    def __init__(self, meta=None):
        self.meta = meta  # the chat template (hermes writes tool responses as a user turn of it)

    def format_tools(self, tools: list[dict], system: str | None, user_message: dict) -> str:
        """The system prompt with the tool descriptions (may instead amend `user_message`, as llama3 does)."""
        raise NotImplementedError

    def format_tool_calls(self, messages: list[dict]) -> str:
        """The assistant text of consecutive tool_call messages. ReAct: `Action: name\\nAction Input: {args}\\n` per call, then `Observation:`."""
        calls = [parse_tool_call(m["content"]) for m in messages]
        return "".join(f"{self.action} {c['name']}\n{self.action_input} {c['arguments']}\n" for c in calls) + self.observation

    def _with_action(self, content: str) -> bool:
        return self.action in content and self.action_input in content

    def format_tool_responses(self, assistant: str | list, tool_messages: list[dict]) -> tuple[str | list, list]:
        """(assistant content, prompt pieces) for the tool results after an assistant turn (ReAct style)."""
        if isinstance(assistant, list):  # merged assistant segments: amend the last
            last, pieces = self.format_tool_responses(assistant[-1], tool_messages)
            return assistant[:-1] + [last], pieces
        if not self._with_action(assistant):
            return assistant, [m["content"] for m in tool_messages]
        if not assistant.endswith(self.observation):
            assistant += ("" if assistant.endswith("\n") else "\n") + self.observation
        pieces = []
        for i, message in enumerate(tool_messages):
            if i > 0:
                pieces.append(self.observation)
            pieces.append(message["content"])
            if not message["content"].endswith("\n"):
                pieces.append("\n")
        return assistant, pieces

    def format_standalone_tool_responses(self, tool_messages: list[dict]) -> list:
        """Prompt pieces for tool results right after a user message (appended to that query)."""
        raise DataError(f"agent template {type(self).__name__} does not support tool messages right after a user message")


class ReactEn(AgentTemplate):
    lang = "en"

    def format_standalone_tool_responses(self, tool_messages):
        return [p for m in tool_messages for p in ("\n", self.observation, "\n", m["content"])]

    def format_tools(self, tools, system, user_message):
        descs = [_tool_desc(t, self.lang) for t in tools]
        names = ",".join(d["name"] for d in descs)
        if self.lang == "en":
            lines = [f"{d['name']}: Call this tool to interact with the {d['human']} API. What is the {d['human']} API "
                     f"useful for? {d['description']} Parameters: {d['parameters']} {d['args_format']}" for d in descs]
            return ("Answer the following questions as best you can. You have access to the following tools:\n\n"
                    + "\n\n".join(lines) + "\n\nUse the following format:\n\nQuestion: the input question you must "
                    "answer\nThought: you should always think about what to do\nAction: the action to take, should be "
                    f"one of [{names}]\nAction Input: the input to the action\nObservation: the result of the action\n"
                    "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\nThought: I "
                    "now know the final answer\nFinal Answer: the final answer to the original input question\n\nBegin!\n")
        lines = [f"{d['name']}: 调用此工具与 {d['human']} API 进行交互。{d['human']} 有什么用？{d['description']} "
                 f"输入参数：{d['parameters']} {d['args_format']}" for d in descs]
        return ("尽可能地回答以下问题。你可以使用以下工具:\n\n" + "\n\n".join(lines) + "\n\n请按照以下格式进行:\n\n"
                "Question: 需要你回答的输入问题\nThought: 你应该总是思考该做什么\nAction: 需要使用的工具，应该是"
                f"[{names}]中的一个\nAction Input: 传入工具的内容\nObservation: 行动的结果\n... (这个Thought/Action/Action "
                "Input/Observation可以重复N次)\nThought: 我现在知道最后的答案\nFinal Answer: 对原始输入问题的最终答案\n\n现在开始！\n")


class ReactZh(ReactEn):
    lang = "zh"


class QwenEn(AgentTemplate):
    """Qwen-Agent's function-calling prompt (✿FUNCTION✿ / ✿ARGS✿ / ✿RESULT✿)."""

    action, action_input, observation = "✿FUNCTION✿:", "✿ARGS✿:", "✿RESULT✿:"
    lang, parallel = "en", False

    def format_tools(self, tools, system, user_message):
        descs = [_tool_desc(t, self.lang) for t in tools]
        names = ",".join(d["name"] for d in descs)
        params = "Parameters" if self.lang == "en" else "输入参数"
        sep = ": " if self.lang == "en" else "："
        lines = [f"### {d['human']}\n\n{d['name']}: {d['description']} {params}{sep}{d['parameters']} {d['args_format']}"
                 for d in descs]
        head = "# Tools\n\n## You have access to the following tools:" if self.lang == "en" else "# 工具\n\n## 你拥有如下工具："
        return f"{system or ''}\n\n{head}\n\n" + "\n\n".join(lines) + "\n\n" + self._usage(names)

    def _usage(self, names: str) -> str:
        if self.lang == "en" and not self.parallel:
            return ("## When you need to call a tool, please insert the following command in your reply, which can be "
                    f"called zero or multiple times according to your needs:\n\n✿FUNCTION✿: The tool to use, should be "
                    f"one of [{names}]\n✿ARGS✿: The input of the tool\n✿RESULT✿: Tool results\n✿RETURN✿: Reply based on "
                    "tool results. Images need to be rendered as ![](url)")
        if self.lang == "en":
            return ("## Insert the following command in your reply when you need to call N tools in parallel:\n\n"
                    f"✿FUNCTION✿: The name of tool 1, should be one of [{names}]\n✿ARGS✿: The input of tool 1\n"
                    "✿FUNCTION✿: The name of tool 2\n✿ARGS✿: The input of tool 2\n...\n✿FUNCTION✿: The name of tool N\n"
                    "✿ARGS✿: The input of tool N\n✿RESULT✿: The result of tool 1\n✿RESULT✿: The result of tool 2\n...\n"
                    "✿RESULT✿: he result of tool N\n✿RETURN✿: Reply based on tool results. Images need to be rendered "
                    "as ![](url)")
        if not self.parallel:
            return (f"## 你可以在回复中插入零次、一次或多次以下命令以调用工具：\n\n✿FUNCTION✿: 工具名称，必须是[{names}]之一。\n"
                    "✿ARGS✿: 工具输入\n✿RESULT✿: 工具结果\n✿RETURN✿: 根据工具结果进行回复，需将图片用![](url)渲染出来")
        return (f"## 你可以在回复中插入以下命令以并行调用N个工具：\n\n✿FUNCTION✿: 工具1的名称，必须是[{names}]之一\n"
                "✿ARGS✿: 工具1的输入\n✿FUNCTION✿: 工具2的名称\n✿ARGS✿: 工具2的输入\n...\n✿FUNCTION✿: 工具N的名称\n"
                "✿ARGS✿: 工具N的输入\n✿RESULT✿: 工具1的结果\n✿RESULT✿: 工具2的结果\n...\n✿RESULT✿: 工具N的结果\n"
                "✿RETURN✿: 根据工具结果进行回复，需将图片用![](url)渲染出来")


class QwenZh(QwenEn):
    lang = "zh"


class QwenEnParallel(QwenEn):
    parallel = True


class QwenZhParallel(QwenEn):
    lang, parallel = "zh", True


class Hermes(AgentTemplate):
    """`<tool_call>` JSON calls and `<tool_response>` results in a user turn (Qwen2.5 / Qwen3)."""

    def format_tools(self, tools, system, user_message):
        descs = "\n".join(json.dumps(wrap_tool(t), ensure_ascii=False) for t in tools)
        return (f"{system or ''}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{descs}\n</tools>\n\n"
                "For each function call, return a json object with function name and arguments within "
                '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
                "<args-json-object>}\n</tool_call>")

    def format_tool_calls(self, messages):
        calls = [parse_tool_call(m["content"]) for m in messages]
        return "\n".join(f"<tool_call>\n{json.dumps(c, ensure_ascii=False)}\n</tool_call>" for c in calls)

    def _responses(self, tool_messages) -> str:
        return "\n".join(f"<tool_response>\n{m['content']}\n</tool_response>" for m in tool_messages)

    def _prompt_and_sep(self):
        if self.meta is None:
            return ["<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n"], ["<|im_end|>\n"]
        if self.meta.chat_sep is None:
            raise DataError(f"template {self.meta.name!r} is single-round, so hermes tool responses cannot follow a "
                            "tool call; use a multi-round template")
        return self.meta.prompt, self.meta.chat_sep

    def format_tool_responses(self, assistant, tool_messages):
        if isinstance(assistant, str) and self._with_action(assistant):
            return super().format_tool_responses(assistant, tool_messages)
        prompt, chat_sep = self._prompt_and_sep()
        responses = self._responses(tool_messages)
        return assistant, list(chat_sep) + [p.replace("{{QUERY}}", responses) if isinstance(p, str) else p for p in prompt]

    def format_standalone_tool_responses(self, tool_messages):
        if self.meta is None:
            return super().format_standalone_tool_responses(tool_messages)
        prompt, pieces = self.meta.prompt, list(self.meta.chat_sep or [])
        for part in prompt:
            if isinstance(part, str) and "{{QUERY}}" in part:
                head = part.split("{{QUERY}}", 1)[0]
                return pieces + ([head] if head else []) + [self._responses(tool_messages)]
            pieces.append(part)
        raise DataError(f"template prompt {prompt} has no {{{{QUERY}}}}")


class ChatGLM4(AgentTemplate):
    is_glm4_0414 = False

    def format_tools(self, tools, system, user_message):
        descs = []
        for tool in tools:
            tool = unwrap_tool(tool)
            name = tool.get("name_for_model") or tool.get("name")
            descs.append(f"## {name}\n\n{json.dumps(tool, ensure_ascii=False, indent=4)}\n在调用上述函数时，请使用 Json 格式表示调用的参数。")
        glm4_system = ("你是一个名为 GLM-4 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求"
                       "提供适当的答复和支持。\n\n")
        return ("" if self.is_glm4_0414 else glm4_system) + "# 可用工具\n\n" + "\n".join(descs)

    def format_tool_calls(self, messages):
        calls = [parse_tool_call(m["content"]) for m in messages]
        return "<|assistant|>".join(f"{c['name']}\n{c['arguments']}" for c in calls) + "<|observation|>"

    def format_tool_responses(self, assistant, tool_messages):
        if isinstance(assistant, str) and self._with_action(assistant):
            return super().format_tool_responses(assistant, tool_messages)
        pieces = ["\n"]
        for i, message in enumerate(tool_messages):
            if i > 0:
                pieces.append("<|observation|>\n")
            pieces.append(message["content"])
        return assistant, pieces + ["<|assistant|>\n"]

    def format_standalone_tool_responses(self, tool_messages):
        return [p for m in tool_messages for p in ("<|observation|>\n", m["content"])]


class GLM4(ChatGLM4):
    is_glm4_0414 = True


class Llama3(AgentTemplate):
    """Llama 3.1's JSON tool calls: the tools go into the first user message; results are `tool` turns."""

    def format_tools(self, tools, system, user_message):
        descs = "\n\n".join(json.dumps(t, ensure_ascii=False, indent=4) for t in tools)
        user_message["content"] = (
            "Given the following functions, please respond with a JSON for a function call with its proper arguments "
            'that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": '
            f"dictionary of argument name and its value}}. Do not use variables.\n\n{descs}\n\n{user_message['content']}")
        return system or ""

    def format_tool_calls(self, messages):
        calls = []
        for message in messages:
            call = parse_tool_call(message["content"])
            calls.append(json.dumps({"name": call["name"], "parameters": call["arguments"]}, ensure_ascii=False))
        return "\n".join(calls)

    def format_tool_responses(self, assistant, tool_messages):
        if isinstance(assistant, str) and self._with_action(assistant):
            return super().format_tool_responses(assistant, tool_messages)
        pieces = ["<|eot_id|>"] + [f"<|start_header_id|>tool<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in tool_messages]
        return assistant, pieces + ["<|start_header_id|>assistant<|end_header_id|>\n\n"]


AGENT_TEMPLATES: dict[str, type[AgentTemplate]] = {
    "react_en": ReactEn,
    "react_zh": ReactZh,
    "qwen_en": QwenEn,
    "qwen_zh": QwenZh,
    "qwen_en_parallel": QwenEnParallel,
    "qwen_zh_parallel": QwenZhParallel,
    "hermes": Hermes,
    "chatglm4": ChatGLM4,
    "glm4": GLM4,
    "llama3": Llama3,
}
"""`--agent_template` name -> class (ms-swift's agent_template_map, the text-model subset)."""


def get_agent_template(name: str | None, meta) -> AgentTemplate:
    """The agent template `name` (default: the chat template's own), bound to the chat template `meta`."""
    name = name or meta.agent_template
    if name is None:
        raise DataError(f"template {meta.name!r} has no default agent template for rows with tools/tool calls; "
                        f"pass --agent_template, one of {sorted(AGENT_TEMPLATES)}")
    if name not in AGENT_TEMPLATES:
        raise DataError(f"--agent_template {name!r} is not supported; choose one of {sorted(AGENT_TEMPLATES)}")
    return AGENT_TEMPLATES[name](meta)


class DeepSeekV31(AgentTemplate):
    """DeepSeek-V3.1's `<｜tool▁calls▁begin｜>` calls and `<｜tool▁output▁begin｜>` results."""

    def format_tools(self, tools, system, user_message):
        descs = []
        for tool in tools:
            tool = unwrap_tool(tool)
            name = tool.get("name_for_model") or tool.get("name")
            params = json.dumps(tool.get("parameters", {}), ensure_ascii=False)
            descs.append(f"### {name}\nDescription: {tool.get('description', '')}\n\nParameters: {params}")
        return (f"{system or ''}\n\n## Tools\nYou have access to the following tools:\n\n" + "\n\n".join(descs)
                + "\n\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
                "tool_call_name<｜tool▁sep｜>tool_call_arguments<｜tool▁call▁end｜>{additional_tool_calls}<｜tool▁calls▁end｜>"
                "\n\nWhere:\n- `tool_call_name` must be an exact match to one of the available tools\n- "
                "`tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n- For "
                "multiple tool calls, chain them directly without separators or spaces")

    def format_tool_calls(self, messages):
        calls = [parse_tool_call(m["content"]) for m in messages]
        body = "".join(f"<｜tool▁call▁begin｜>{c['name']}<｜tool▁sep｜>{json.dumps(c['arguments'], ensure_ascii=False)}"
                       "<｜tool▁call▁end｜>" for c in calls)
        return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"

    def format_tool_responses(self, assistant, tool_messages):
        if isinstance(assistant, str) and self._with_action(assistant):
            return super().format_tool_responses(assistant, tool_messages)
        outputs = "".join(f"<｜tool▁output▁begin｜>{m['content']}<｜tool▁output▁end｜>" for m in tool_messages)
        return assistant, ["<｜end▁of▁sentence｜>", outputs]


AGENT_TEMPLATES["deepseek_v3_1"] = DeepSeekV31
