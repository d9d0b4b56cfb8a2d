"""`python -m swift_jax.infer`: interactive chat or batch inference over a dataset, ms-swift style.

    python -m swift_jax.infer --model Qwen/Qwen2.5-0.5B-Instruct --stream true
    python -m swift_jax.infer --model out/merged --val_dataset data.jsonl --result_path result.jsonl

Batch results are the input rows, each with a `response` field added (ms-swift's infer result format).
Rows are in any format training reads (messages, sharegpt, alpaca, query/response/history, `prompt`, ...:
`swift_jax.data.frontend`); a final assistant message (or `response` / `output`) is the reference answer and
is left out of the prompt. Prompts are rendered with `--template` / `--system` exactly as training renders
them; given a checkpoint trained here, the template and system prompt saved in its args.json are reused. A row's
`chat_template_kwargs` apply to that row; generation stops at the eos and at the template's stop words.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

from swift_jax.arguments import AdapterArgs, GenerationArgs, ModelArgs, TemplateArgs
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.data.frontend import encode_chat, prompt_of, read_rows, row_messages
from swift_jax.data.media import row_media
from swift_jax.data.vision import prompt_inputs, vision_for_inference
from swift_jax.engine.args import EngineArgs
from swift_jax.generation import Generator

__all__ = ["InferArgs", "encode_chat", "infer_dataset", "chat_loop", "load_for_inference", "read_rows", "row_messages"]


@dataclasses.dataclass
class InferArgs(ModelArgs, AdapterArgs, TemplateArgs, GenerationArgs, EngineArgs):
    """Arguments of `swift_jax.infer`: the shared model, adapter, template and generation groups
    (`swift_jax.arguments`), the engine's size and ms-swift's backend options (`engine.args`), plus the dataset
    and batch settings of ms-swift's InferArguments."""

    stream: bool = False
    """Print tokens as they come (interactive chat)."""
    val_dataset: list[str] = dataclasses.field(default_factory=list)
    """Rows to answer (any format training reads); none: interactive chat."""
    val_dataset_sample: int | None = None
    """Use only the first N rows of each file."""
    result_path: str | None = None
    """Batch results; default: infer_result.jsonl next to the dataset."""
    max_batch_size: int = 16
    """Prompts generated together (the engine's slots, unless --max_num_seqs says otherwise)."""

    def chat_encoder(self, tokenizer):
        """The prompt renderer: these arguments, else what the checkpoint was trained with (its args.json)."""
        plain, named = named_adapters(self.adapters)
        return self.trained_encoder(tokenizer, *plain, *named.values(), self.model)


def named_adapters(entries: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """`--adapters` entries split into plain folders (applied to the model) and `name=path` ones (served as
    separate models that a request's `model` field picks)."""
    plain, named = [], {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if sep and name and not os.path.isdir(entry):
            named[name] = path
        else:
            plain.append(entry)
    return plain, named


def adapter_variants(model, named: dict[str, str]) -> dict:
    """`name -> model with that adapter` for named adapters (each a copy of `model` sharing its base weights)."""
    from flax import nnx

    return {name: _apply_adapters(nnx.merge(*nnx.split(model)), [path]) for name, path in named.items()}


def load_for_inference(model: str | None, adapters: Sequence[str] = (), dtype: str | None = None, *,
                       tensor_parallel_size: int = 1, named: Sequence[str] = ()):
    """Model (with LoRA adapters applied) and tokenizer, ready for `Generator`; with `tensor_parallel_size` > 1
    sharded over that many devices (the mesh's tensor axis).

    Without `model`, the base model recorded in the first adapter's adapter_config.json is used (as
    ms-swift: `--adapters CKPT` alone is enough); `named`: the folders of named adapters, for that lookup.
    """
    import swift_jax
    from swift_jax.tuners import base_model_of

    for path in [*adapters, *named]:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--adapters {path}: no such folder; expected a LoRA checkpoint folder")
    if not model:
        if not adapters and not named:
            raise ValueError("--model is required (or --adapters CKPT, whose base model is then used)")
        model = base_model_of([*adapters, *named][0])
    mesh = None
    if tensor_parallel_size > 1:
        from swift_jax.parallel import make_mesh

        mesh = make_mesh(fsdp_size=1, tensor_parallel_size=tensor_parallel_size)
    loaded = swift_jax.load_model(model, dtype=dtype, mesh=mesh)
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
            prompts.append(prompt_inputs(vision, encoder, prompt.messages, prompt.tools, media, where,
                                         prompt.chat_template_kwargs))
    outputs = gen.generate_ids(prompts, args.generation_config(gen, encoder))
    os.makedirs(os.path.dirname(os.path.abspath(result_path)), exist_ok=True)
    with open(result_path, "w") as f:
        for row, out in zip(rows, outputs):
            f.write(json.dumps({**row, "response": out.text}, ensure_ascii=False) + "\n")
    print(f"[INFO] {len(rows)} responses written to {result_path}")
    return result_path


def chat_loop(gen: Generator, args: InferArgs, stdin=sys.stdin, stdout=sys.stdout) -> None:
    """Interactive multi-turn chat on stdin/stdout; `clear` forgets the history, `exit` quits."""
    encoder = args.chat_encoder(gen.tokenizer)  # applies --system to every turn
    config = args.generation_config(gen, encoder)
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
    args = parse_config(InferArgs, argv, aliases=ALIASES)
    plain, named = named_adapters(args.adapters)
    model, tokenizer = load_for_inference(args.model, plain, args.dtype, tensor_parallel_size=args.resolve().tensor_parallel_size,
                                          named=list(named.values()))
    vision, args = vision_for_inference(args, model.config)
    gen = args.generator(model, tokenizer, max_batch_size=args.max_batch_size)
    if args.val_dataset:
        infer_dataset(gen, args, vision)
    else:
        chat_loop(gen, args)


if __name__ == "__main__":
    main()
