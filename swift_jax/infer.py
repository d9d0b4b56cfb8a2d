"""`python -m swift_jax.infer`: interactive chat or batch inference over a dataset, ms-swift style.

    python -m swift_jax.infer --model Qwen/Qwen2.5-0.5B-Instruct --stream true
    python -m swift_jax.infer --model out/merged --val_dataset data.jsonl --result_path result.jsonl

Batch results are the input rows, each with a `response` field added (ms-swift's infer result format).
Rows are `messages` lists, `query`(+`system`) or alpaca `instruction`(+`input`); a final assistant
message (or `response` / `output`) is the reference answer and is left out of the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import tyro

from swift_jax.generation import GenerationConfig, Generator


@dataclasses.dataclass
class InferArgs:
    """Arguments of `swift_jax.infer` (names follow ms-swift's InferArguments)."""

    model: str | None = None  # HF model folder or hub id; default: the base model of --adapters
    adapters: list[str] = dataclasses.field(default_factory=list)  # LoRA checkpoint folders
    dtype: str | None = None  # float32 | bfloat16; default: the checkpoint's
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 42
    stop_words: list[str] = dataclasses.field(default_factory=list)
    system: str | None = None  # default system prompt (rows with their own keep it)
    stream: bool = False  # print tokens as they come (interactive chat)
    val_dataset: list[str] = dataclasses.field(default_factory=list)  # jsonl/json/parquet files
    val_dataset_sample: int | None = None  # use only the first N rows of each file
    result_path: str | None = None  # batch results; default: infer_result.jsonl next to the dataset
    max_batch_size: int = 16

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
            stop=tuple(self.stop_words),
        )


def parse_args(cls, argv: Sequence[str] | None = None):
    """tyro parsing that also accepts ms-swift's lower-case booleans (`--stream true`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    bools = {f"__{f.name}" for f in dataclasses.fields(cls) if f.type in (bool, "bool")}
    for i in range(1, len(argv)):
        if argv[i - 1].replace("-", "_") in bools and argv[i].lower() in ("true", "false"):
            argv[i] = argv[i].capitalize()
    return tyro.cli(cls, args=argv, config=(tyro.conf.FlagConversionOff,))


def load_for_inference(model: str | None, adapters: Sequence[str] = (), dtype: str | None = None):
    """Model (with LoRA adapters applied) and tokenizer, ready for `Generator`.

    Without `model`, the base model recorded in the first adapter's adapter_config.json is used (as
    ms-swift: `--adapters CKPT` alone is enough).
    """
    import swift_jax
    from swift_jax.tuners import base_model_of

    for path in adapters:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--adapters {path}: no such folder; expected a LoRA checkpoint folder")
    if not model:
        if not adapters:
            raise ValueError("--model is required (or --adapters CKPT, whose base model is then used)")
        model = base_model_of(adapters[0])
    loaded = swift_jax.load_model(model, dtype=dtype)
    if adapters:
        loaded = _apply_adapters(loaded, adapters)
    return loaded, swift_jax.load_tokenizer(model)


def _apply_adapters(model, adapters: Sequence[str]):
    """Attach saved LoRA adapters (PEFT folders, as our LoRA checkpoints hold) to `model`, unmerged."""
    from swift_jax.tuners import load_adapter

    for path in adapters:
        model = load_adapter(model, path)
    return model


# ---------------------------------------------------------------------------------------------------
# Dataset rows -> chat messages
# ---------------------------------------------------------------------------------------------------


def read_rows(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a local `.jsonl`, `.json` (a list) or `.parquet` file; the first `limit` if given."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset {path} does not exist; expected a local .jsonl, .json or .parquet file")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.endswith(".jsonl"):
        rows = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path} line {n}: not valid JSON ({err})") from err
    elif path.endswith(".json"):
        with open(path) as f:
            rows = json.load(f)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows, found {type(rows).__name__}")
    else:
        raise ValueError(f"dataset {path}: unknown extension; expected .jsonl, .json or .parquet")
    return rows[:limit] if limit is not None else rows


def row_messages(row: dict[str, Any], *, where: str, system: str | None = None) -> tuple[list[dict], str | None]:
    """The prompt messages of a dataset row and its reference answer (None when the row has none)."""
    if "messages" in row:
        messages = list(row["messages"])
        if not messages or any(not isinstance(m, dict) or "role" not in m or "content" not in m for m in messages):
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        label = None
        if messages[-1]["role"] == "assistant":
            label = messages.pop()["content"]
    elif "query" in row or "instruction" in row:
        query = row.get("query") or "\n\n".join(x for x in (row.get("instruction"), row.get("input")) if x)
        messages = [{"role": "user", "content": query}]
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": row["system"]})
        label = row.get("response", row.get("output"))
    else:
        raise ValueError(
            f"{where}: expected a 'messages' list, a 'query' or an 'instruction' field; found fields {sorted(row)}"
        )
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages, label


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids: the chat template with the assistant turn opened; plain text without a template."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode("\n".join(m["content"] for m in messages))


# ---------------------------------------------------------------------------------------------------
# The two modes
# ---------------------------------------------------------------------------------------------------


def infer_dataset(gen: Generator, args: InferArgs) -> str:
    """Answer every row of `args.val_dataset`; write the rows with `response` added; return the path."""
    result_path = args.result_path or os.path.join(os.path.dirname(os.path.abspath(args.val_dataset[0])), "infer_result.jsonl")
    rows, prompts = [], []
    for path in args.val_dataset:
        for i, row in enumerate(read_rows(path, args.val_dataset_sample)):
            messages, _ = row_messages(row, where=f"{path} row {i}", system=args.system)
            rows.append(row)
            prompts.append(encode_chat(gen.tokenizer, messages))
    outputs = gen.generate_ids(prompts, args.generation_config())
    os.makedirs(os.path.dirname(os.path.abspath(result_path)), exist_ok=True)
    with open(result_path, "w") as f:
        for row, out in zip(rows, outputs):
            f.write(json.dumps({**row, "response": out.text}, ensure_ascii=False) + "\n")
    print(f"[INFO] {len(rows)} responses written to {result_path}")
    return result_path


def chat_loop(gen: Generator, args: InferArgs, stdin=sys.stdin, stdout=sys.stdout) -> None:
    """Interactive multi-turn chat on stdin/stdout; `clear` forgets the history, `exit` quits."""
    config = args.generation_config()
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        stdout.write("<<< ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            break
        query = line.rstrip("\n")
        if query.strip() == "clear":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": query})
        prompt = encode_chat(gen.tokenizer, history)
        if args.stream:
            response = ""
            for piece in gen.stream(prompt, config):
                response += piece
                stdout.write(piece)
                stdout.flush()
            stdout.write("\n")
        else:
            response = gen.generate_ids([prompt], config)[0].text
            stdout.write(response + "\n")
        history.append({"role": "assistant", "content": response})


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(InferArgs, argv)
    model, tokenizer = load_for_inference(args.model, args.adapters, args.dtype)
    gen = Generator(model, tokenizer, max_batch_size=args.max_batch_size)
    if args.val_dataset:
        infer_dataset(gen, args)
    else:
        chat_loop(gen, args)


if __name__ == "__main__":
    main()
