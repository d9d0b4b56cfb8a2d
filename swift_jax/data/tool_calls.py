"""Tool calls read back out of a generated response, as ms-swift's `agent_template.get_toolcall` reads them.

The server answers a request that carried `tools` with the calls the response holds (`message.tool_calls`):
hermes `<tool_call>{json}</tool_call>`, llama3's `{"name", "parameters"}` objects, DeepSeek-V3.1's
`<｜tool▁call▁begin｜>` blocks, and the ReAct keywords (`Action:` / `Action Input:`, Qwen's `✿FUNCTION✿:` /
`✿ARGS✿:`), which every template falls back to, as ms-swift's do.
"""

from __future__ import annotations

import json
import re

from swift_jax.data.agent_templates import DeepSeekV31, Hermes, Llama3, QwenEn, parse_json

REACT = ("Action:", "Action Input:", "Observation:")
QWEN = ("✿FUNCTION✿:", "✿ARGS✿:", "✿RESULT✿:")


def _react(text: str, keyword: tuple[str, str, str]) -> list[dict]:
    """ms-swift's `_split_action_action_input`: each action followed by its action input is one call."""
    action, action_input, observation = keyword
    pattern = "(" + "|".join(re.escape(k) for k in keyword) + ")"
    parts = re.split(pattern, text)
    calls, name = [], None
    for i in range(1, len(parts) - 1, 2):
        key, content = parts[i], parts[i + 1]
        if name is None and key == action:
            name = content
        elif name is not None and key == action_input:
            calls.append({"name": name.strip(), "arguments": content.strip()})
            name = None
    return calls


def _json_calls(blocks, name_key: str, args_key: str) -> list[dict]:
    calls = []
    for block in blocks:
        obj = parse_json(block.strip())
        if isinstance(obj, dict) and name_key in obj and args_key in obj:
            calls.append({"name": str(obj[name_key]).strip(), "arguments": obj[args_key]})
    return calls


def parse_tool_calls(text: str, agent=None) -> list[dict]:
    """The tool calls in a response: `[{"name", "arguments": JSON string}]` (empty when there are none).
    `agent`: the chat template's agent template (`data.agent_templates`), None for the tokenizer's template
    (hermes-style tags, the Qwen2.5 / Qwen3 chat templates' format, then ReAct)."""
    calls: list[dict] = []
    if agent is None or isinstance(agent, Hermes):
        calls = _json_calls(re.findall(r"<tool_call>(.+?)</tool_call>", text, re.DOTALL), "name", "arguments")
    elif isinstance(agent, Llama3):
        calls = _json_calls(re.findall(r'{[^{]*?"name":.*?"parameters":\s*?{.*?}\s*?}', text, re.DOTALL), "name", "parameters")
    elif isinstance(agent, DeepSeekV31):
        found = re.findall(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", text, re.DOTALL)
        calls = [{"name": n.strip(), "arguments": a.strip()} for n, a in found if parse_json(a.strip()) is not None]
    elif isinstance(agent, QwenEn):
        calls = _react(text, QWEN)
    calls = calls or _react(text, REACT)
    for call in calls:
        if not isinstance(call["arguments"], str):
            call["arguments"] = json.dumps(call["arguments"], ensure_ascii=False)
    return calls
