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

from swift_jax.arguments import AdapterArgs, GenerationArgs, ModelArgs, SavedArgs, TemplateArgs
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.data.cached import cached_rows
from swift_jax.data.frontend import encode_chat, prompt_of, read_rows, row_messages
from swift_jax.data.resolve import LoadOptions
from swift_jax.data.media import row_media
from swift_jax.data.vision import prompt_inputs, vision_for_inference
from swift_jax.engine.args import EngineArgs
from swift_jax.generation import Generator

__all__ = ["InferArgs", "encode_chat", "infer_dataset", "chat_loop", "load_for_inference", "read_rows", "row_messages"]


@dataclasses.dataclass
class InferArgs(ModelArgs, AdapterArgs, SavedArgs, TemplateArgs, GenerationArgs, EngineArgs):
    """Arguments of `swift_jax.infer`: the shared model, adapter, template and generation groups
    (`swift_jax.arguments`), the engine's size and ms-swift's backend options (`engine.args`), plus the dataset
    and batch settings of ms-swift's InferArguments."""

    stream: bool = False
    """Print tokens as they come (interactive chat)."""
    val_dataset: list[str] = dataclasses.field(default_factory=list)
    """Rows to answer (any format training reads); none: interactive chat."""
    val_dataset_sample: int | None = None
    """Use only the first N rows of each file."""
    cached_val_dataset: list[str] = dataclasses.field(default_factory=list)
    """Rows to answer from folders written by `export --to_cached_dataset true` (its DIR/val), before
    --val_dataset's, as ms-swift's infer reads them (`swift_jax.data.cached`)."""
    result_path: str | None = None
    """Batch results; default: infer_result.jsonl next to the dataset."""
    max_batch_size: int = 16
    """Prompts generated together (the engine's slots, unless --max_num_seqs says otherwise)."""
    merge_lora: bool = False
    """Merge --adapters into the base first (written once to FIRST_ADAPTER-merged, reused when it exists, as
    ms-swift), then answer with the merged model."""

    def trained_run(self) -> tuple[str | None, ...]:
        """The checkpoints whose args.json this run reads (`--adapters name=path`: the path)."""
        plain, named = named_adapters(self.adapters)
        return (*plain, *named.values(), self.model) if self.load_args else ()

    def chat_encoder(self, tokenizer):
        """The prompt renderer: these arguments, else what the checkpoint was trained with (its args.json)."""
        return self.trained_encoder(tokenizer, *self.trained_run())

    def load_data(self) -> None:
        """--load_data_args: the rows to answer (--val_dataset) and their --columns from the checkpoint's training
        run, where not given (ms-swift's `swift infer --load_data_args true`)."""
        from swift_jax.data.frontend import trained_args

        if self.load_data_args and self.load_args and not self.val_dataset:
            saved = trained_args(*self.trained_run())
            self.val_dataset = list(saved.get("val_dataset") or [])
            self.columns = self.columns or dict(saved.get("columns") or {})
            if not self.val_dataset:
                held_out = f" (it held out --split_dataset_ratio {saved['split_dataset_ratio']} of --dataset, which " \
                           "infer does not carve again)" if saved.get("split_dataset_ratio") else ""
                raise ValueError(f"--load_data_args true: the checkpoint's training run has no --val_dataset{held_out}; "
                                 "pass the rows to answer with --val_dataset")


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


def load_for_inference(model: str | None, adapters: Sequence[str] = (), dtype: str | None = None, adjust_config=None,
                       new_tokens: Sequence[str] = (), *, tensor_parallel_size: int = 1, named: Sequence[str] = ()):
    """Model (with LoRA adapters applied) and tokenizer, ready for `Generator`; `adjust_config`: see
    `ModelArgs.adjust_config` (--rope_scaling, --max_model_len); `new_tokens`: --new_special_tokens (a checkpoint
    trained with them brings its own tokenizer); with `tensor_parallel_size` > 1 sharded over that many devices
    (the mesh's tensor axis).

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
    from swift_jax.hf.special_tokens import add_new_special_tokens, checkpoint_tokenizer

    mesh = None
    if tensor_parallel_size > 1:
        from swift_jax.parallel import make_mesh

        mesh = make_mesh(fsdp_size=1, tensor_parallel_size=tensor_parallel_size)
    loaded = swift_jax.load_model(model, dtype=dtype, adjust_config=adjust_config, mesh=mesh)
    tokenizer = checkpoint_tokenizer(model, adapters)
    add_new_special_tokens(loaded, tokenizer, list(new_tokens))  # grows the vocabulary to the tokenizer's
    if adapters:
        loaded = _apply_adapters(loaded, adapters)
    return loaded, tokenizer


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
    """Answer every row of `args.cached_val_dataset` and `args.val_dataset`; write the rows with `response` added;
    return the path. `vision` (`data.vision.VisionData`): the model reads the rows' images / videos."""
    sources = [(path, cached_rows(path)) for path in args.cached_val_dataset]
    sources += [(path, read_rows(path, args.val_dataset_sample, LoadOptions.of(args, shuffle=False))) for path in args.val_dataset]
    result_path = args.result_path or os.path.join(os.path.dirname(os.path.abspath(sources[0][0])), "infer_result.jsonl")
    encoder = args.chat_encoder(gen.tokenizer)
    rows, prompts = [], []
    for path, path_rows in sources:
        for i, row in enumerate(path_rows):
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


def merged_for_inference(args: InferArgs) -> InferArgs:
    """`--merge_lora`: the arguments with the adapters merged into `FIRST_ADAPTER-merged` (export's merge; an
    existing folder is reused, as ms-swift's merge_lora skips it) as the model, and no adapters."""
    if not (args.merge_lora and args.adapters):
        return args
    from swift_jax.export import ExportArgs, export

    merged = f"{os.path.abspath(args.adapters[0]).rstrip('/')}-merged"
    if not os.path.isdir(merged):
        export(ExportArgs(model=args.model, adapters=list(args.adapters), dtype=args.dtype, merge_lora=True, output_dir=merged))
    print(f"[INFO] --merge_lora: answering with {merged}")
    return dataclasses.replace(args, model=merged, adapters=[])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_config(InferArgs, argv, aliases=ALIASES, command="infer")
    args.load_data()
    args = merged_for_inference(args)
    plain, named = named_adapters(args.adapters)
    model, tokenizer = load_for_inference(args.model, plain, args.dtype, args.adjust_config(), args.new_special_tokens,
                                          tensor_parallel_size=args.resolve().tensor_parallel_size, named=list(named.values()))
    vision, args = vision_for_inference(args, model.config)
    gen = args.generator(model, tokenizer, max_batch_size=args.max_batch_size)
    if args.val_dataset or args.cached_val_dataset:
        infer_dataset(gen, args, vision)
    else:
        chat_loop(gen, args)


if __name__ == "__main__":
    main()
