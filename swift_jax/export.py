"""`python -m swift_jax.export`: merged HF checkpoints, PEFT adapters, quantized weights.

    python -m swift_jax.export --adapters output/vN-.../checkpoint-100 --merge_lora true --output_dir merged
    python -m swift_jax.export --adapters output/vN-.../checkpoint-100 --to_peft true --output_dir peft
    python -m swift_jax.export --model merged --quant_method rtn --quant_bits 4 --output_dir merged-int4
    python -m swift_jax.export --adapters CKPT --quant_method gptq --quant_bits 4 --group_size 128 \
        --dataset calib.jsonl --quant_n_samples 128 --max_length 2048 --output_dir merged-gptq-int4

As in ms-swift, `--adapters CKPT` alone is enough: the base model comes from the adapter's config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

from swift_jax.arguments import AdapterArgs, ModelArgs, TemplateArgs
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.hf.hub import copy_tokenizer_files



@dataclasses.dataclass
class ExportArgs(ModelArgs, AdapterArgs, TemplateArgs):
    """Arguments of `swift_jax.export`: the shared model, adapter and template groups (`swift_jax.arguments`;
    the template renders GPTQ calibration rows) plus ms-swift's ExportArguments."""

    output_dir: str = ""
    """Where to write the exported folder (must not exist, or be empty)."""
    merge_lora: bool = False
    """Fold the adapters into the base weights and write a full HF model folder."""
    to_peft: bool = False
    """Write the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors)."""
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


def export(args: ExportArgs) -> str:
    """Run the export the arguments describe; returns the output folder."""
    import swift_jax
    from swift_jax.hf.peft import save_peft_adapter
    from swift_jax.tuners import base_model_of, load_adapter, merge_lora

    if not args.output_dir:
        raise ValueError("--output_dir is required")
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir):
        raise FileExistsError(f"--output_dir {args.output_dir} exists and is not empty; choose a new folder")
    chosen = [name for name, on in (("merge_lora", args.merge_lora), ("to_peft", args.to_peft), ("quant_method", args.quant_method)) if on]
    if not chosen:
        raise ValueError("nothing to export: pass --merge_lora true, --to_peft true or --quant_method rtn|gptq|fp8")
    if args.to_peft and (args.merge_lora or args.quant_method):
        raise ValueError("--to_peft writes only the adapter; do not combine it with --merge_lora or --quant_method")
    if (args.merge_lora or args.to_peft) and not args.adapters:
        raise ValueError("--merge_lora/--to_peft need --adapters CKPT")
    base = args.model or base_model_of(args.adapter_paths()[0])
    spec = None
    if args.quant_method:  # bad settings and unsupported models fail before anything is loaded
        from swift_jax.quant import QuantSpec

        spec = QuantSpec(args.quant_method, args.quant_bits, args.group_size)
        if spec.method == "gptq" and not args.dataset:
            raise ValueError("--quant_method gptq needs calibration data: pass --dataset FILE.jsonl")
    model = swift_jax.load_model(base, dtype=args.dtype)
    for path in args.adapter_paths():
        load_adapter(model, path)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.to_peft:  # the adapter's own modules_to_save / bias tensors travel with it
        from swift_jax.hf.peft import read_peft_config

        saved = read_peft_config(args.adapter_paths()[-1])
        save_peft_adapter(model, args.output_dir, base_model_name_or_path=base, dtype=args.dtype,
                          modules_to_save=saved.get("modules_to_save") or (), lora_bias=saved.get("bias", "none"),
                          target_regex=saved["target_modules"] if isinstance(saved.get("target_modules"), str) else None)
        _save_template_args(args, args.output_dir)
        return args.output_dir
    merge_lora(model)
    if args.quant_method:
        from swift_jax.quant.export import save_quantized

        calibration = None
        if spec.method == "gptq":
            from swift_jax.quant.calibration import calibration_rows

            tokenizer = swift_jax.load_tokenizer(base)
            encoder = args.trained_encoder(tokenizer, *args.adapter_paths(), args.model)
            calibration = calibration_rows(encoder, args.dataset, n_samples=args.quant_n_samples, seq_len=args.max_length,
                                           columns=args.columns)
        save_quantized(
            model, args.output_dir, spec, calibration=calibration, batch_size=args.quant_batch_size,
            dtype=args.dtype, max_shard_size=args.max_shard_size,
        )
    else:
        swift_jax.save_pretrained(model, args.output_dir, dtype=args.dtype, max_shard_size=args.max_shard_size)
    copy_tokenizer_files(base, args.output_dir)
    _save_template_args(args, args.output_dir)
    return args.output_dir


def _save_template_args(args: ExportArgs, output_dir: str) -> None:
    """Record the template the run used (given, or trained with) in output_dir/args.json, so infer, eval and
    deploy on the exported folder render prompts as training did (ms-swift's export carries args.json too)."""
    fields = {k: v for k, v in args.trained_template_fields(*args.adapter_paths(), args.model).items() if v is not None}
    if fields:
        with open(os.path.join(output_dir, "args.json"), "w") as f:
            json.dump({"data": fields}, f, indent=2, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> str:
    out = export(parse_config(ExportArgs, argv, aliases=ALIASES))
    print(f"exported to {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
