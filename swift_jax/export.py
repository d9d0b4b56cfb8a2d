"""`python -m swift_jax.export`: merged HF checkpoints, PEFT adapters, quantized weights.

    python -m swift_jax.export --adapters output/vN-.../checkpoint-100 --merge_lora true   # -> checkpoint-100-merged
    python -m swift_jax.export --adapters output/vN-.../checkpoint-100 --to_peft_format true --output_dir peft
    python -m swift_jax.export --model merged --quant_method rtn --quant_bits 4 --output_dir merged-int4
    python -m swift_jax.export --adapters CKPT --quant_method gptq --quant_bits 4 --group_size 128 \
        --dataset calib.jsonl --quant_n_samples 128 --max_length 2048 --output_dir merged-gptq-int4
    python -m swift_jax.export --model M --to_cached_dataset true --dataset train.jsonl --split_dataset_ratio 0.01 \
        --max_length 2048 --output_dir cached      # -> cached/train, cached/val (`data.cached`)

As in ms-swift, `--adapters CKPT` alone is enough: the base model comes from the adapter's config, and the output
folder defaults to `CKPT-merged` (`-peft`, `-gptq-int4`, ...). `--push_to_hub true --hub_model_id USER/NAME` uploads
the result (or, with nothing else to export, the checkpoint itself).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

from swift_jax.arguments import AdapterArgs, ModelArgs, SavedArgs, TemplateArgs
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.hf.hub import copy_tokenizer_files



@dataclasses.dataclass
class ExportArgs(ModelArgs, AdapterArgs, SavedArgs, TemplateArgs):
    """Arguments of `swift_jax.export`: the shared model, adapter and template groups (`swift_jax.arguments`;
    the template renders GPTQ calibration rows) plus ms-swift's ExportArguments."""

    output_dir: str | None = None
    """Where to write the exported folder (must not exist, or be empty, unless --exist_ok). Default, as ms-swift:
    beside the checkpoint (the first --adapters, else --model, with an args.json), named CHECKPOINT-merged |
    -peft | -{quant_method}-int{quant_bits} (fp8: -fp8)."""
    exist_ok: bool = False
    """Write into an existing, non-empty --output_dir (files of the same name are overwritten)."""
    merge_lora: bool = False
    """Fold the adapters into the base weights and write a full HF model folder."""
    to_peft_format: bool = False
    """Write the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors; our name: to_peft)."""
    safe_serialization: bool = True
    """false (PyTorch .bin files) cannot be written without torch: safetensors are written, with one warning line."""
    push_to_hub: bool = False
    """Upload the exported folder (nothing else to export: the first --adapters, else --model) to the Hugging
    Face hub as --hub_model_id (token: the HF_TOKEN environment variable)."""
    hub_model_id: str | None = None
    """The hub repository to push to: USER/NAME."""
    hub_private_repo: bool = False
    """Create the hub repository as private."""
    commit_message: str = "update files"
    """The commit message of the upload."""
    dtype: str | None = None
    """Saved dtype (float32 | bfloat16); default: the model's."""
    max_shard_size: str = "5GB"
    quant_method: str | None = None
    """Weight-only quantization of every linear layer but lm_head, written in the compressed-tensors
    format: rtn | gptq (int4/int8 pack-quantized, group-wise scales) | fp8 (float8 e4m3, per-channel)."""
    quant_bits: int = 4
    """4 or 8 (fp8: 8)."""
    group_size: int = 128
    """Input features per scale (rtn/gptq); -1: one scale per output channel."""
    dataset: list[str] = dataclasses.field(default_factory=list)
    """GPTQ calibration data: datasets in any format training reads, rendered with the run's template (--template,
    else the one the checkpoint was trained with)."""
    quant_n_samples: int = 128
    """GPTQ calibration rows of --max_length tokens."""
    max_length: int = 2048
    """Tokens per calibration row."""
    quant_batch_size: int = 8
    """Calibration rows per forward pass while collecting GPTQ statistics."""
    to_cached_dataset: bool = False
    """Check --dataset (and --val_dataset, or a --split_dataset_ratio split) against the template once and save
    the rows training keeps, with their token counts, to OUTPUT_DIR/train and OUTPUT_DIR/val (HF `datasets`
    folders, as ms-swift's) for `--cached_dataset` (`swift_jax.data.cached`). Default --output_dir:
    CHECKPOINT-cached_dataset (./MODEL_NAME-cached_dataset for a model without args.json)."""
    template_mode: str = "train"
    """--to_cached_dataset: train (SFT / PT rows), rlhf (preference pairs: lengths [chosen, rejected]) or kto."""
    val_dataset: list[str] = dataclasses.field(default_factory=list)
    """--to_cached_dataset: validation rows, saved to OUTPUT_DIR/val."""
    split_dataset_ratio: float = 0.0
    """--to_cached_dataset: the share of --dataset held out as OUTPUT_DIR/val (as training splits it)."""
    data_seed: int = 42
    """--to_cached_dataset: seed of #N sampling and the split."""
    truncation_strategy: str = "delete"
    """--to_cached_dataset: rows longer than --max_length are dropped (delete) or kept to be cut (left, right)."""
    strict: bool = True
    """--to_cached_dataset: raise on a malformed row (false: skip it)."""
    use_chat_template: bool = True
    """--to_cached_dataset: false renders rows as pre-training text (`pt`)."""


def export(args: ExportArgs) -> str:
    """Run the export the arguments describe; returns the output folder."""
    import swift_jax
    from swift_jax.hf.peft import save_peft_adapter
    from swift_jax.tuners import base_model_of, load_adapter, merge_lora

    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id USER/NAME")
    if args.to_cached_dataset:
        return _export_cached_dataset(args)
    chosen = [name for name, on in (("merge_lora", args.merge_lora), ("to_peft_format", args.to_peft_format),
                                    ("quant_method", args.quant_method)) if on]
    if not chosen:
        if args.push_to_hub and (args.adapters or args.model):
            return push_to_hub(args.adapter_paths()[0] if args.adapters else args.model, args)
        raise ValueError("nothing to export: pass --merge_lora true, --to_peft_format true, --quant_method rtn|gptq|fp8 "
                         "or --push_to_hub true")
    if args.to_peft_format and (args.merge_lora or args.quant_method):
        raise ValueError("--to_peft_format writes only the adapter; do not combine it with --merge_lora or --quant_method")
    if (args.merge_lora or args.to_peft_format) and not args.adapters:
        raise ValueError("--merge_lora/--to_peft_format need --adapters CKPT")
    args.output_dir = args.output_dir or default_output_dir(args)
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.exist_ok:
        raise FileExistsError(f"--output_dir {args.output_dir} exists and is not empty; choose a new folder or pass --exist_ok true")
    if not args.safe_serialization:
        print("--safe_serialization false: PyTorch .bin files need torch; writing safetensors instead", file=sys.stderr)
    base = args.model or base_model_of(args.adapter_paths()[0])
    spec = None
    if args.quant_method:  # bad settings and unsupported models fail before anything is loaded
        from swift_jax.quant import QuantSpec

        spec = QuantSpec(args.quant_method, args.quant_bits, args.group_size)
        if spec.method == "gptq" and not args.dataset:
            raise ValueError("--quant_method gptq needs calibration data: pass --dataset FILE.jsonl")
    from swift_jax.hf.special_tokens import add_new_special_tokens, adapter_tokenizer_dir, checkpoint_tokenizer

    model = swift_jax.load_model(base, dtype=args.dtype, adjust_config=args.adjust_config())
    tokenizer = None  # a model folder without a tokenizer exports as long as nothing needs one
    if adapter_tokenizer_dir(args.adapter_paths()) or args.new_special_tokens or (spec is not None and spec.method == "gptq"):
        tokenizer = checkpoint_tokenizer(base, args.adapter_paths())
        add_new_special_tokens(model, tokenizer, args.new_special_tokens)  # grows the vocabulary to the tokenizer's
    for path in args.adapter_paths():
        load_adapter(model, path)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.to_peft_format:  # the adapter's own modules_to_save / bias tensors travel with it
        from swift_jax.hf.peft import read_peft_config

        saved = read_peft_config(args.adapter_paths()[-1])
        save_peft_adapter(model, args.output_dir, base_model_name_or_path=base, dtype=args.dtype,
                          modules_to_save=saved.get("modules_to_save") or (), lora_bias=saved.get("bias", "none"),
                          target_regex=saved["target_modules"] if isinstance(saved.get("target_modules"), str) else None)
        _save_template_args(args, args.output_dir)
        return push_to_hub(args.output_dir, args) if args.push_to_hub else args.output_dir
    merge_lora(model)
    if args.quant_method:
        from swift_jax.quant.export import save_quantized

        calibration = None
        if spec.method == "gptq":
            from swift_jax.data.resolve import LoadOptions
            from swift_jax.quant.calibration import calibration_rows

            encoder = args.trained_encoder(tokenizer, *args.trained_run())
            calibration = calibration_rows(encoder, args.dataset, n_samples=args.quant_n_samples, seq_len=args.max_length,
                                           columns=args.columns, options=LoadOptions.of(args))
        save_quantized(
            model, args.output_dir, spec, calibration=calibration, batch_size=args.quant_batch_size,
            dtype=args.dtype, max_shard_size=args.max_shard_size,
        )
    else:
        swift_jax.save_pretrained(model, args.output_dir, dtype=args.dtype, max_shard_size=args.max_shard_size)
    copy_tokenizer_files(base, args.output_dir)
    if tokenizer is not None and len(tokenizer) != len(swift_jax.load_tokenizer(base)):  # added tokens
        tokenizer.save_pretrained(args.output_dir)
    _save_template_args(args, args.output_dir)
    return push_to_hub(args.output_dir, args) if args.push_to_hub else args.output_dir


def default_output_dir(args: ExportArgs) -> str:
    """ms-swift's default export folder: beside the checkpoint (the first of --adapters / --model with an
    args.json, else ./MODEL_NAME), with the suffix of what is exported."""
    from swift_jax.trainer.run_folder import read_args

    ckpt = next((p for p in [*args.adapter_paths(), args.model] if p and read_args(p) is not None), None)
    ckpt = (ckpt or os.path.join(".", os.path.basename(str(args.model or args.adapter_paths()[0]).rstrip("/")))).rstrip("/")
    if args.to_cached_dataset:
        suffix = "cached_dataset"
    elif args.to_peft_format:
        suffix = "peft"
    elif args.quant_method:
        suffix = "fp8" if args.quant_method == "fp8" else f"{args.quant_method}-int{args.quant_bits}"
    else:
        suffix = "merged"
    return os.path.abspath(f"{ckpt}-{suffix}")


def push_to_hub(folder: str, args: ExportArgs) -> str:
    """Upload `folder` to the hub repository --hub_model_id (created if missing, --hub_private_repo); returns
    `folder`. A failed upload (offline, no token) is an error that names the repository and keeps the folder."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(args.hub_model_id, private=args.hub_private_repo, exist_ok=True)
        api.upload_folder(repo_id=args.hub_model_id, folder_path=folder, commit_message=args.commit_message)
    except Exception as err:  # offline, auth, permissions: all end here with the repository named
        raise RuntimeError(f"--push_to_hub: uploading {folder} to the hub repository {args.hub_model_id} failed "
                           f"({type(err).__name__}: {err}); the folder is kept. Set HF_TOKEN and check the network") from err
    print(f"pushed {folder} to https://huggingface.co/{args.hub_model_id}")
    return folder


def _export_cached_dataset(args: ExportArgs) -> str:
    """--to_cached_dataset true: OUTPUT_DIR/train (and /val) of rows checked against the template."""
    import swift_jax
    from swift_jax.data.args import DataArgs
    from swift_jax.data.cached import export_cached_dataset

    if not args.model:
        raise ValueError("--to_cached_dataset needs --model (its tokenizer renders the rows)")
    output_dir = args.output_dir or default_output_dir(args)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)) and not args.exist_ok:
        raise FileExistsError(f"--output_dir {output_dir} exists and is not empty; choose a new folder or pass --exist_ok true")
    data = DataArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataArgs) if hasattr(args, f.name)})
    tokenizer = swift_jax.load_tokenizer(args.model)
    for folder in export_cached_dataset(data, tokenizer, output_dir, args.template_mode):
        print(f"cached_{'val_' if folder.endswith('val') else ''}dataset: {folder}")
    return output_dir


def _save_template_args(args: ExportArgs, output_dir: str) -> None:
    """Record the template the run used (given, or trained with) in output_dir/args.json, so infer, eval and
    deploy on the exported folder render prompts as training did (ms-swift's export carries args.json too)."""
    fields = {k: v for k, v in args.trained_template_fields(*args.trained_run()).items() if v is not None}
    if fields:
        with open(os.path.join(output_dir, "args.json"), "w") as f:
            json.dump({"data": fields}, f, indent=2, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> str:
    out = export(parse_config(ExportArgs, argv, aliases={**ALIASES, "to_peft": "to_peft_format"}, command="export"))
    print(f"exported to {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
