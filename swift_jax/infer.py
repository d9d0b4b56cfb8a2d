"""`python -m swift_jax.infer`: interactive chat or batch inference over a dataset, ms-swift style.

    python -m swift_jax.infer --model Qwen/Qwen2.5-0.5B-Instruct --stream true
    python -m swift_jax.infer --model out/merged --val_dataset data.jsonl --result_path result.jsonl

Batch results are the input rows, each with a `response` field added (ms-swift's infer result format).
Rows are in any format training reads (messages, sharegpt, alpaca, query/response/history, `prompt`, ...:
`swift_jax.data.frontend`); a final assistant message (or `response` / `output`) is the reference answer and
is left out of the prompt. Prompts are rendered with `--template` / `--system` exactly as training renders
them; given a checkpoint trained here, the template and system prompt saved in its args.json are reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

import tyro

from swift_jax.data.frontend import encode_chat, prompt_of, read_rows, row_messages
from swift_jax.data.media import row_media
from swift_jax.data.vision import prompt_inputs, vision_for_inference
from swift_jax.generation import GenerationConfig, Generator

__all__ = ["InferArgs", "encode_chat", "infer_dataset", "chat_loop", "load_for_inference", "read_rows", "row_messages"]


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
    template: str | None = None  # ms-swift template name (or .jinja file); default: the trained one, else the tokenizer's
    agent_template: str | None = None  # how tools / tool calls are written (with --template)
    enable_thinking: bool | None = None  # thinking templates: open the response thinking (true) or not (false)
    response_prefix: str | None = None  # text every response starts with
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # rename row fields first (as training's --columns)
    stream: bool = False  # print tokens as they come (interactive chat)
    val_dataset: list[str] = dataclasses.field(default_factory=list)  # jsonl/json/parquet files
    val_dataset_sample: int | None = None  # use only the first N rows of each file
    result_path: str | None = None  # batch results; default: infer_result.jsonl next to the dataset
    max_batch_size: int = 16

    def chat_encoder(self, tokenizer):
        """The prompt renderer: these arguments, else what the checkpoint was trained with (its args.json)."""
        from swift_jax.data.frontend import chat_encoder, trained_template_args
        from swift_jax.data.swift_template import ThinkingArgs

        given = {k: getattr(self, k) for k in ("template", "system", "agent_template", "enable_thinking", "response_prefix")}
        saved = trained_template_args(*self.adapters, self.model)
        merged = {k: given[k] if given.get(k) is not None else saved.get(k) for k in set(given) | set(saved)}
        thinking = ThinkingArgs(merged.get("enable_thinking"), merged.get("preserve_thinking"), True, merged.get("response_prefix"))
        return chat_encoder(tokenizer, merged.get("template"), merged.get("system"),
                            agent_template=merged.get("agent_template"), thinking=thinking)

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
# The two modes
# ---------------------------------------------------------------------------------------------------


def infer_dataset(gen: Generator, args: InferArgs, vision=None) -> str:
    """Answer every row of `args.val_dataset`; write the rows with `response` added; return the path.
    `vision` (`data.vision.VisionData`): the model reads the rows' images / videos."""
    result_path = args.result_path or os.path.join(os.path.dirname(os.path.abspath(args.val_dataset[0])), "infer_result.jsonl")
    encoder = args.chat_encoder(gen.tokenizer)
    rows, prompts = [], []
    for path in args.val_dataset:
        for i, row in enumerate(read_rows(path, args.val_dataset_sample)):
            where = f"{path} row {i}"
            prompt = prompt_of(row, where=where, columns=args.columns, media=vision is not None)
            rows.append(row)
            media = row_media(row, where, base=os.path.dirname(os.path.abspath(path))) if vision else None
            prompts.append(prompt_inputs(vision, encoder, prompt.messages, prompt.tools, media, where))
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
    encoder = args.chat_encoder(gen.tokenizer)  # applies --system to every turn
    history: list[dict] = []
    while True:
        stdout.write("<<< ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            break
        query = line.rstrip("\n")
        if query.strip() == "clear":
            history = []
            continue
        history.append({"role": "user", "content": query})
        prompt = encoder.prompt_ids(history)
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
    vision, args = vision_for_inference(args, model.config)
    gen = Generator(model, tokenizer, max_batch_size=args.max_batch_size)
    if args.val_dataset:
        infer_dataset(gen, args, vision)
    else:
        chat_loop(gen, args)


if __name__ == "__main__":
    main()
