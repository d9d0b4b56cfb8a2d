"""Held-out perplexity and folder size of a model's quantized exports (RTN / GPTQ int4 and int8, fp8).

    python scripts/quant_perplexity.py --model out/merged --calib train.jsonl --val val.jsonl \
        --group_sizes 128 --n_samples 128 --max_length 64 --out_dir /tmp/quant_report

Each variant is exported with `swift_jax.quant.export.save_quantized` (the folder `transformers` and vLLM
load) and scored with our forward on the dequantized kernels, which equals `transformers`' on the
exported folder to 1e-4 (tests/test_quant_export.py). Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import swift_jax
from swift_jax.eval import Scorer, eval_loss
from swift_jax.quant import QuantSpec
from swift_jax.data.frontend import chat_encoder
from swift_jax.quant.calibration import calibration_rows
from swift_jax.quant.export import save_quantized


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _weights_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True, help="calibration .jsonl (GPTQ)")
    p.add_argument("--val", required=True, help="held-out .jsonl scored as eval's `loss` task")
    p.add_argument("--group_sizes", type=int, nargs="+", default=[128])
    p.add_argument("--n_samples", type=int, default=128)
    p.add_argument("--max_length", type=int, default=2048)
    p.add_argument("--out_dir", default="quant_report")
    args = p.parse_args()
    tokenizer = swift_jax.load_tokenizer(args.model)
    val = _rows(args.val)
    calibration = calibration_rows(chat_encoder(tokenizer), [args.calib], n_samples=args.n_samples, seq_len=args.max_length)

    def score(model) -> dict:
        return eval_loss(Scorer(model, max_batch_size=32, max_length=args.max_length), tokenizer, val, "val")

    print(json.dumps({"variant": "unquantized", **score(swift_jax.load_model(args.model))}))
    specs = [QuantSpec(m, b, g) for g in args.group_sizes for b in (4, 8) for m in ("rtn", "gptq")] + [QuantSpec("fp8", 8)]
    for spec in specs:
        name = "fp8" if spec.is_float else f"{spec.method}-int{spec.bits}-g{spec.group_size}"
        folder = os.path.join(args.out_dir, name)
        shutil.rmtree(folder, ignore_errors=True)
        model = swift_jax.load_model(args.model)
        start = time.perf_counter()
        save_quantized(model, folder, spec, calibration=calibration)
        seconds = round(time.perf_counter() - start, 1)
        print(json.dumps({"variant": name, **score(model), "weights_bytes": _weights_bytes(folder), "seconds": seconds}))


if __name__ == "__main__":
    main()
