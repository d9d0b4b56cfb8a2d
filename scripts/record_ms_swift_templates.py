"""Record ms-swift's own encodings (input_ids, labels, loss_scale) as golden files for tests/test_swift_templates.py.

Run with ms-swift's python (never from tests; CI does not install ms-swift):

    /opt/msswift/bin/python scripts/record_ms_swift_templates.py   # writes tests/golden/templates/*.json
    /opt/msswift/bin/python scripts/record_ms_swift_templates.py chat_template_kwargs   # only those cases

For every case (template, agent template, loss_scale, thinking controls) and every row of ROWS, ms-swift's
`get_template(...).encode(row)` is run in training mode (input_ids, labels, loss_scale) and, on the row without
its last answer, in inference mode (prompt_ids), on a tokenizer built offline: the bundled ChatML
tokenizer, or `tests/golden/templates/tokenizer` (a small byte-level BPE with the special tokens of every
template family, written here on first run and committed, so both sides tokenise identically). A row that
ms-swift refuses is recorded as {"error": message}.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "templates")
BUNDLED = os.path.join(ROOT, "swift_jax", "assets", "tokenizer")
MULTI = os.path.join(OUT, "tokenizer")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|begin_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<bos>", "<eos>",
            "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<s>", "</s>",
            "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<｜begin▁of▁sentence｜>", "<｜User｜>",
            "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<|observation|>", "<tool_call>", "</tool_call>", "<|im_sep|>"]
CORPUS = ["The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital.",
          "weather city Paris Tokyo sunny 21 degrees get_weather search query arguments name tool call response",
          "You are a helpful assistant. Think step by step: 2 + 2 = 4. Final Answer: Action Input Thought"]

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"name": "search", "description": "Search the web.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
ROWS = {
    "system_two_turns": {"messages": [
        {"role": "system", "content": "You are a terse bot."},
        {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And 2 + 2?"}, {"role": "assistant", "content": "4"}]},
    "three_turns_thinking": {"messages": [
        {"role": "user", "content": "Think: 2 + 2?"},
        {"role": "assistant", "content": "<think>\n2 plus 2 is 4.\n</think>\n\nIt is 4."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "<think>\n\n</think>\n\nParis."},
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Sunny.\n"}]},
    "tool_call_round": {"tools": TOOLS, "messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "tool_call", "content": json.dumps(CALL)},
        {"role": "tool_response", "content": json.dumps({"temperature": 21})},
        {"role": "assistant", "content": "It is 21 degrees in Paris."}]},
    "parallel_calls_loss_fields": {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "Let me check.", "loss": False},
        {"role": "tool_call", "content": json.dumps(CALL)},
        {"role": "tool_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Tokyo"}})},
        {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "rainy"},
        {"role": "assistant", "content": "Paris is sunny, Tokyo is rainy.", "loss_scale": 0.5},
        {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You are welcome.", "loss": True}]},
    "openai_tool_calls": {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Search for fox and weather in Paris."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "b", "type": "function", "function": {"name": "search", "arguments": "{\"query\": \"fox\"}"}},
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "a quick brown fox"},
        {"role": "assistant", "content": "Thought: done\nFinal Answer: sunny, and a fox."}]},
}
# ms-swift 4's per-row template switches (StdTemplateInputs.chat_template_kwargs)
ROWS["kwargs_thinking_off"] = {**ROWS["three_turns_thinking"], "chat_template_kwargs": {"enable_thinking": False}}
ROWS["kwargs_thinking_on"] = {**ROWS["three_turns_thinking"], "chat_template_kwargs": {"enable_thinking": True}}
ROWS["kwargs_preserve_off"] = {**ROWS["three_turns_thinking"], "chat_template_kwargs": {"preserve_thinking": False}}
ROWS["kwargs_response_prefix"] = {**ROWS["system_two_turns"], "chat_template_kwargs": {"response_prefix": "Answer: "}}
KWARGS_ROWS = ["kwargs_thinking_off", "kwargs_thinking_on", "kwargs_preserve_off", "kwargs_response_prefix"]
CHAT_ROWS = ["system_two_turns", "three_turns_thinking"]
AGENT_ROWS = ["tool_call_round", "parallel_calls_loss_fields", "openai_tool_calls"]
ALL_ROWS = CHAT_ROWS + AGENT_ROWS

TEMPLATES = ["chatml", "default", "dummy", "qwen", "qwen2_5", "qwen2_5_math", "qwq_preview", "qwq", "qwen3",
             "qwen3_thinking", "qwen3_nothinking", "llama", "llama3", "llama3_2", "mistral_nemo", "mistral_2501",
             "gemma", "gemma3_text", "phi3", "phi4", "deepseek_v2_5", "deepseek_r1", "deepseek_v3_1"]
AGENTS = ["hermes", "react_en", "react_zh", "qwen_en", "qwen_zh", "qwen_en_parallel", "qwen_zh_parallel", "glm4",
          "chatglm4", "llama3"]
LOSS_SCALES = ["default", "last_round", "all", "ignore_empty_think", "ignore_think_prefix",
               "last_round+ignore_empty_think", "react", "hermes", "qwen", "agentflan", "alpha_umi",
               "hermes+ignore_empty_think", "last_round+react", "all+qwen"]
AGENT_FOR_SCALE = {"react": "react_en", "last_round+react": "react_en", "qwen": "qwen_en", "all+qwen": "qwen_en",
                   "agentflan": "react_en", "alpha_umi": "react_en"}


def cases():
    """(case name, tokenizer, get_template kwargs, row names)."""
    for t in TEMPLATES:
        agent = None if t in ("qwen", "qwen2_5", "qwen3", "llama3", "llama3_2", "deepseek_v3_1") else "hermes"
        yield f"template-{t}", "multi", dict(template_type=t, agent_template=agent), ALL_ROWS
    for t in ("chatml", "qwen", "qwen2_5", "qwen3", "qwen3_thinking", "qwen3_nothinking"):
        yield f"template-{t}-bundled", "bundled", dict(template_type=t), CHAT_ROWS
    for a in AGENTS:
        base = "llama3" if a == "llama3" else "qwen2_5"
        yield f"agent-{a}", "multi", dict(template_type=base, agent_template=a), AGENT_ROWS
    for s in LOSS_SCALES:
        agent = AGENT_FOR_SCALE.get(s, "hermes")
        yield f"loss_scale-{s}", "multi", dict(template_type="qwen3", loss_scale=s, agent_template=agent), ALL_ROWS
    for name, kw in {"enable_thinking_true": dict(enable_thinking=True), "enable_thinking_false": dict(enable_thinking=False),
                     "preserve_thinking_true": dict(preserve_thinking=True), "preserve_thinking_false": dict(preserve_thinking=False),
                     "no_non_thinking_prefix": dict(add_non_thinking_prefix=False),
                     "last_round_preserve": dict(loss_scale="last_round", preserve_thinking=True)}.items():
        yield f"thinking-qwen3-{name}", "multi", dict(template_type="qwen3", **kw), CHAT_ROWS
    for t, scale in (("qwen3", "default"), ("qwen3", "last_round"), ("qwen3_thinking", "default"), ("qwen2_5", "default")):
        yield f"chat_template_kwargs-{t}-{scale}", "multi", dict(template_type=t, loss_scale=scale), KWARGS_ROWS
    yield "system-override-qwen2_5", "multi", dict(template_type="qwen2_5", default_system="Be brief."), ALL_ROWS
    yield "is_binary_false-qwen", "multi", dict(template_type="qwen", is_binary_loss_scale=False), ALL_ROWS


def multi_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not os.path.isdir(MULTI):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(CORPUS * 10, trainer=trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                       additional_special_tokens=SPECIALS[1:])
        fast.save_pretrained(MULTI)
    return PreTrainedTokenizerFast.from_pretrained(MULTI)


def load(kind):
    from transformers import AutoTokenizer

    tok = multi_tokenizer() if kind == "multi" else AutoTokenizer.from_pretrained(BUNDLED)
    tok.model_info = SimpleNamespace(config=None, task_type="causal_lm", max_model_len=100000, model_dir="/nonexistent")
    tok.model_meta = SimpleNamespace(is_multimodal=False)
    return tok


def main(only: list[str]):
    import swift
    from swift.arguments.base_args.template_args import TemplateArguments  # noqa: F401 (ms-swift's loss_scale rule)
    from swift.template import TEMPLATE_MAPPING, get_template

    tokenizers = {k: load(k) for k in ("multi", "bundled")}
    today = datetime.date.today().isoformat()
    total = 0
    for name, kind, kwargs, rows in cases():
        if only and not name.startswith(tuple(only)):
            continue
        meta = TEMPLATE_MAPPING[kwargs["template_type"]]
        loss_scale = kwargs.get("loss_scale", "default")
        if meta.is_thinking and meta.non_thinking_prefix and "ignore_empty_think" not in loss_scale:
            loss_scale += "+ignore_empty_think"  # TemplateArguments._set_loss_scale for hybrid thinking
        template = get_template(tokenizers[kind], **{**kwargs, "loss_scale": loss_scale})
        results = {}
        for row in rows:
            total += 1
            try:
                template.set_mode("train")
                enc = template.encode(json.loads(json.dumps(ROWS[row])))
                results[row] = {"input_ids": enc["input_ids"], "labels": enc["labels"],
                                "loss_scale": enc.get("loss_scale")}
            except Exception as e:  # ms-swift refuses the row: we must refuse it too
                results[row] = {"error": f"{type(e).__name__}: {e}"}
                continue
            # the inference prompt of the same conversation without its last answer (infer / deploy)
            template.set_mode("transformers")
            prompt = json.loads(json.dumps(ROWS[row]))
            prompt["messages"] = prompt["messages"][:-1]
            try:
                results[row]["prompt_ids"] = template.encode(prompt)["input_ids"]
            except Exception as e:
                results[row]["prompt_error"] = f"{type(e).__name__}: {e}"
        args = {k: v for k, v in kwargs.items() if v is not None}
        args["loss_scale"] = kwargs.get("loss_scale", "default")
        golden = {"case": name, "tokenizer": kind, "ms_swift": swift.__version__, "date": today, "args": args,
                  "rows": {r: ROWS[r] for r in rows}, "encoded": results}
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(golden, f, ensure_ascii=False, indent=None)
            f.write("\n")
    print(f"recorded {total} (case, row) encodings into {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])  # optional case-name prefixes: record only those cases
