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
from swift_jax.generation import Generator

__all__ = ["InferArgs", "encode_chat", "infer_dataset", "chat_loop", "load_for_inference", "read_rows", "row_messages"]


@dataclasses.dataclass
class InferArgs(ModelArgs, AdapterArgs, SavedArgs, TemplateArgs, GenerationArgs):
    """Arguments of `swift_jax.infer`: the shared model, adapter, template and generation groups
    (`swift_jax.arguments`) plus the dataset and batch settings of ms-swift's InferArguments."""

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
    """Prompts generated together."""
    merge_lora: bool = False
    """Merge --adapters into the base first (written once to FIRST_ADAPTER-merged, reused when it exists, as
    ms-swift), then answer with the merged model."""

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


def load_for_inference(model: str | None, adapters: Sequence[str] = (), dtype: str | None = None, adjust_config=None,
                       new_tokens: Sequence[str] = ()):
    """Model (with LoRA adapters applied) and tokenizer, ready for `Generator`; `adjust_config`: see
    `ModelArgs.adjust_config` (--rope_scaling, --max_model_len); `new_tokens`: --new_special_tokens (a checkpoint
    trained with them brings its own tokenizer).

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
    from swift_jax.hf.special_tokens import add_new_special_tokens, checkpoint_tokenizer

    loaded = swift_jax.load_model(model, dtype=dtype, adjust_config=adjust_config)
    tokenizer = checkpoint_tokenizer(model, adapters)
    add_new_special_tokens(loaded, tokenizer, list(new_tokens))  # grows the vocabulary to the tokenizer's
    architectures = loaded.config.hf_config.get("architectures") or []
    if any("ProcessRewardModel" in a for a in architectures):
        raise ValueError(f"--model {model}: a process reward model ({architectures[0]}); ms-swift returns its per-step "
                         "scores, which swift_jax does not compute yet (its per-token head is not loaded); reward models "
                         "with one score per conversation (*ForSequenceClassification, --rlhf_type rm) are supported")
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


def _result_path(args: InferArgs) -> str:
    first = [*args.cached_val_dataset, *args.val_dataset][0]
    return args.result_path or os.path.join(os.path.dirname(os.path.abspath(first)), "infer_result.jsonl")


def _write_results(result_path: str, rows: list[dict], responses: list) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(result_path)), exist_ok=True)
    with open(result_path, "w") as f:
        for row, response in zip(rows, responses):
            f.write(json.dumps({**row, "response": response}, ensure_ascii=False) + "\n")
    print(f"[INFO] {len(rows)} responses written to {result_path}")
    return result_path


def rows_to_answer(args: InferArgs):
    """(path, row index, row) of every row to answer: --cached_val_dataset's folders, then --val_dataset's files."""
    sources = [(path, cached_rows(path)) for path in args.cached_val_dataset]
    sources += [(path, read_rows(path, args.val_dataset_sample, LoadOptions.of(args, shuffle=False))) for path in args.val_dataset]
    for path, path_rows in sources:
        for i, row in enumerate(path_rows):
            yield path, i, row


def reward_conversation_ids(encoder, messages: list[dict], tools=None, where: str = "request") -> list[int]:
    """Token ids of a conversation a reward model scores: it must end with the assistant's answer."""
    from swift_jax.data.errors import DataError

    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: a reward model scores a conversation that ends with the assistant's answer; "
                        "this one does not (add the answer as the last assistant message)")
    return encoder.encode({"messages": messages, "tools": tools}).input_ids.tolist()


def score_dataset(model, tokenizer, args: InferArgs) -> str:
    """A reward model (value head) under infer: each row's conversation, answer included, gets its score as
    `response` (a number), as ms-swift's infer returns a reward model's output; returns the result path."""
    from swift_jax.rlhf.reward_model import last_token_scores

    if not (args.val_dataset or args.cached_val_dataset):
        raise ValueError("a reward model scores conversations: pass --val_dataset rows that end with the answer to score")
    encoder = args.chat_encoder(tokenizer)
    rows, encoded = [], []
    for path, i, row in rows_to_answer(args):
        prompt = prompt_of(row, where=f"{path} row {i}", columns=args.columns)
        answer = [] if prompt.reference is None else [{"role": "assistant", "content": prompt.reference}]
        encoded.append(reward_conversation_ids(encoder, prompt.messages + answer, prompt.tools, f"{path} row {i}"))
        rows.append(row)
    return _write_results(_result_path(args), rows, last_token_scores(model, encoded, args.max_batch_size))


def infer_dataset(gen: Generator, args: InferArgs, vision=None) -> str:
    """Answer every row of `args.cached_val_dataset` and `args.val_dataset`; write the rows with `response` added;
    return the path. `vision` (`data.vision.VisionData`): the model reads the rows' images / videos."""
    encoder = args.chat_encoder(gen.tokenizer)
    rows, prompts = [], []
    for path, i, row in rows_to_answer(args):
        where = f"{path} row {i}"
        prompt = prompt_of(row, where=where, columns=args.columns, media=vision is not None)
        rows.append(row)
        media = row_media(row, where, base=os.path.dirname(os.path.abspath(path))) if vision else None
        prompts.append(prompt_inputs(vision, encoder, prompt.messages, prompt.tools, media, where,
                                     prompt.chat_template_kwargs))
    outputs = gen.generate_ids(prompts, args.generation_config(gen, encoder))
    return _write_results(_result_path(args), rows, [out.text for out in outputs])


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

    merged = f"{os.path.abspath(args.adapter_paths()[0]).rstrip('/')}-merged"
    if not os.path.isdir(merged):
        export(ExportArgs(model=args.model, adapters=args.adapter_paths(), dtype=args.dtype, merge_lora=True, output_dir=merged))
    print(f"[INFO] --merge_lora: answering with {merged}")
    return dataclasses.replace(args, model=merged, adapters=[])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_config(InferArgs, argv, aliases=ALIASES, command="infer")
    args.load_data()
    args = merged_for_inference(args)
    model, tokenizer = load_for_inference(args.model, args.adapter_paths(), args.dtype, args.adjust_config(), args.new_special_tokens)
    vision, args = vision_for_inference(args, model.config)
    from swift_jax.tuners.value_head import has_value_head

    if has_value_head(model):  # a reward model: scores, not text (ms-swift's seq_cls inference)
        score_dataset(model, tokenizer, args)
        return
    gen = Generator(model, tokenizer, max_batch_size=args.max_batch_size)
    if args.val_dataset or args.cached_val_dataset:
        infer_dataset(gen, args, vision)
    else:
        chat_loop(gen, args)


if __name__ == "__main__":
    main()
