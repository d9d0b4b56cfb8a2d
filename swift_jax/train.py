"""`python -m swift_jax.train --config configs/X.yaml [--key value ...]`: supervised fine-tuning.

The data path: arguments -> model (loaded into shards, or initialised) -> tuner (LoRA/QLoRA/full, a
transform of the module tree) -> data pipeline (template, loss mask, packing, grain) -> jit train step
(gradient accumulation, AdamW, clipping) -> orbax checkpoints, logs, plots, evaluation.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from swift_jax import flops
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments
from swift_jax.kernels.attention import use_impl
from swift_jax.modeling import init_model, load_model, load_tokenizer, read_hf_config, resolve_model_dir, save_pretrained
from swift_jax.parallel import (
    initialize_distributed,
    is_main_process,
    logical_to_spec,
    memory_report,
    mesh_from_args,
)
from swift_jax.hf.peft import save_peft_adapter
from swift_jax.hf.hub import copy_tokenizer_files
from swift_jax.trainer import checkpoint as ckpt
from swift_jax.trainer.logs import RunLogger, new_run_dir
from swift_jax.trainer.optim import learning_rate_schedule, make_optimizer
from swift_jax.trainer.step import TrainState, make_eval_step, make_train_step, router_aux_coef, split_model
from swift_jax.tuners import count_params, loraize

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def resolve_path(path: str) -> str:
    """A path as given, or relative to the installed package (bundled assets like `assets/quickstart`)."""
    if os.path.exists(path):
        return path
    bundled = os.path.join(PACKAGE_DIR, path.removeprefix("swift_jax/"))
    return bundled if os.path.exists(bundled) else path


def build_model(args: TrainArguments, mesh) -> nnx.Module:
    """The base model on the mesh: loaded from safetensors, or initialised from config.json."""
    m = args.model_args
    full = args.tuner.tuner_type == "full"
    # Full fine-tuning keeps float32 master weights whatever the compute dtype.
    param_dtype = "float32" if full and m.dtype not in (None, "float32", "fp32") else None
    path = resolve_path(m.model)
    if m.init_from_scratch:
        return init_model(read_hf_config(resolve_model_dir(path)), dtype=m.dtype, seed=args.training.seed, mesh=mesh, param_dtype=param_dtype)
    return load_model(path, dtype=m.dtype, mesh=mesh, param_dtype=param_dtype)


def apply_tuner(model: nnx.Module, args: TrainArguments):
    """Attach adapters as the tuner asks; returns the filter of trainable variables."""
    t = args.tuner
    if t.tuner_type == "full":
        if t.adapters:
            raise ValueError("--adapters needs --tuner_type lora (full fine-tuning trains the base weights)")
        return nnx.Param
    if t.tuner_type == "qlora":
        from swift_jax.tuners.qlora import quantize_base

        quantize_base(model, bits=t.quant_bits)
    loraize(
        model,
        target_modules=t.target_modules,
        rank=t.lora_rank,
        alpha=t.lora_alpha,
        dropout=t.lora_dropout,
        rngs=nnx.Rngs(params=args.training.seed, dropout=args.training.seed + 1),
    )
    for path in t.adapters:
        from swift_jax.tuners.adapters import load_adapter

        load_adapter(model, resolve_path(path))
    return nnx.LoRAParam


def _shard_like_params(optimizer, params, mesh):
    """Optimizer state with each per-parameter leaf sharded like its parameter, the rest replicated."""
    shapes = jax.eval_shape(optimizer.init, params)
    param_shardings = jax.tree.map(lambda p: p.sharding, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = optax.tree_map_params(
        optimizer, lambda _, s: s, shapes, param_shardings, transform_non_params=lambda _: replicated
    )
    return jax.jit(optimizer.init, out_shardings=shardings)(params)


def predict_held_out(model: nnx.Module, tokenizer, path: str, n: int, max_new_tokens: int, say) -> float | None:
    """Greedy answers to the first `n` rows of `path` (rows whose last message is the reference answer);
    prints a few pairs and returns the exact-match rate (the response equals the reference exactly)."""
    from swift_jax.generation import GenerationConfig, Generator
    from swift_jax.infer import encode_chat, read_rows, row_messages

    if not os.path.isfile(path):
        say(f"predict: {path} is not a local file; skipped")
        return None
    prompts, references = [], []
    for i, row in enumerate(read_rows(path, limit=n)):
        messages, reference = row_messages(row, where=f"{path} row {i}")
        if reference is not None:
            prompts.append((messages[-1]["content"], encode_chat(tokenizer, messages)))
            references.append(reference)
    if not prompts:
        say(f"predict: no rows of {path} end with an assistant answer; skipped")
        return None
    outputs = Generator(model, tokenizer).generate_ids([ids for _, ids in prompts], GenerationConfig(max_new_tokens=max_new_tokens))
    hits = [o.text.strip() == r.strip() for o, r in zip(outputs, references)]
    for (question, _), out, ref, hit in list(zip(prompts, outputs, references, hits))[:5]:
        say(f"  {question!r} -> {out.text.strip()!r} (reference {ref!r}{'' if hit else ', wrong'})")
    rate = sum(hits) / len(hits)
    say(f"held-out exact match: {rate:.4f} ({sum(hits)}/{len(hits)} greedy answers)")
    return rate


def _stack_batches(batches: list[dict[str, np.ndarray]], sharding) -> dict[str, jax.Array]:
    """`accum` host batches -> global `[accum, batch, seq]` arrays sharded over the batch axes."""
    stacked = {k: np.stack([b[k] for b in batches]).astype(np.int32) for k in ("input_ids", "labels", "segment_ids", "positions")}
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in stacked.items()}


class _Preemption:
    """Turns SIGTERM (TPU/cloud preemption) into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners)
            pass

    def _handle(self, *_):
        self.requested = True


def evaluate(eval_step, state: TrainState, frozen, batches, sharding) -> dict[str, float]:
    """Token-level loss and accuracy over the validation batches."""
    loss, count, correct = 0.0, 0, 0
    for batch in batches:
        arrays = {k: jax.make_array_from_process_local_data(sharding, np.asarray(v, np.int32)) for k, v in batch.items() if k in ("input_ids", "labels", "segment_ids", "positions")}
        l, n, c = eval_step(state.params, state.rng, frozen, arrays)
        loss, count, correct = loss + float(l), count + int(n), correct + int(c)
    return {"eval_loss": loss / max(count, 1), "eval_token_acc": correct / max(count, 1)}


def train(args: TrainArguments) -> dict[str, Any]:
    """Run one training job; returns the final metrics (also written to logging.jsonl)."""
    from swift_jax.data import build_data

    initialize_distributed(args.distributed)
    t = args.training
    mesh = mesh_from_args(args.mesh)
    jax.set_mesh(mesh)  # activation sharding constraints read the mesh from here
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    accum = args.accumulation_steps(batch_devices)

    tokenizer = load_tokenizer(resolve_path(args.model_args.model))
    model = build_model(args, mesh)
    model.model.remat = t.gradient_checkpointing
    trainable = apply_tuner(model, args)
    n_trainable, n_total = count_params(model, trainable), count_params(model)

    pipe = build_data(
        args.data,
        tokenizer,
        batch_size=t.per_device_train_batch_size * batch_devices // jax.process_count(),
        seed=t.seed,
        shuffle=t.train_dataloader_shuffle,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    steps_per_epoch = max(1, pipe.steps_per_epoch // accum)
    total_steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.num_train_epochs * steps_per_epoch))
    warmup = int(math.ceil(t.warmup_ratio * total_steps))
    schedule = learning_rate_schedule(t.lr_scheduler_type, t.learning_rate, total_steps, warmup)
    optimizer = make_optimizer(
        schedule,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
    )
    graphdef, params, rng, frozen = split_model(model, trainable)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=_shard_like_params(optimizer, params, mesh), rng=rng
    )
    iterator = pipe.train_iterator(num_epochs=None)
    if t.resume_from_checkpoint:
        run_dir, _ = ckpt.parse_checkpoint_dir(t.resume_from_checkpoint)
        state, data_state = ckpt.restore(t.resume_from_checkpoint, state)
        if data_state:
            iterator.set_state(data_state)
    else:
        run_dir = new_run_dir(t.output_dir) if is_main_process() else t.output_dir
    start_step = int(state.step)

    main = is_main_process()
    logger = RunLogger(run_dir, total_steps=total_steps, initial_step=start_step, enabled=main, tensorboard="tensorboard" in t.report_to)
    logger.write_args(args)
    seq_len = args.data.max_length
    say = logger.bar.write if main else (lambda _: None)
    say(f"run folder: {run_dir}")
    say(f"trainable params: {n_trainable:,} / {n_total:,} ({100 * n_trainable / n_total:.4f}%), tuner: {args.tuner.tuner_type}")
    say(f"data: {pipe.stats}")
    say(f"steps: {total_steps} (batch {t.per_device_train_batch_size} x {batch_devices} devices x {accum} accumulation, length {seq_len})")
    say(memory_report(state.params, state.opt_state, model.config, batch_per_device=t.per_device_train_batch_size, seq_len=seq_len, remat=t.gradient_checkpointing))

    batch_sharding = NamedSharding(mesh, logical_to_spec((None, "batch", "seq"), mesh))
    eval_sharding = NamedSharding(mesh, logical_to_spec(("batch", "seq"), mesh))
    with use_impl(args.model_args.attn_impl):
        aux_coef = router_aux_coef(model.config, t.router_aux_loss_coef)
        train_step = make_train_step(graphdef, optimizer, loss_chunk=t.loss_chunk_size, router_aux_loss_coef=aux_coef)
        eval_step = make_eval_step(graphdef, loss_chunk=t.loss_chunk_size)
    manager = ckpt.checkpoint_manager(run_dir, save_total_limit=t.save_total_limit) if main or jax.process_count() > 1 else None
    preemption = _Preemption()
    val_batches = pipe.val_batches()
    device_kind = jax.devices()[0].device_kind
    lora_params = n_trainable if args.tuner.tuner_type != "full" else 0

    pending: list[tuple[int, Any]] = []  # (step, device loss) since the last host check
    window_tokens, window_slots, window_flops, window_start = 0, 0, 0.0, time.perf_counter()
    window_compiles = flops.compile_count()
    run_start = time.perf_counter()
    final: dict[str, Any] = {}
    step = start_step

    def check_finite() -> None:
        for s, loss in pending:
            if not np.isfinite(float(loss)):
                raise FloatingPointError(
                    f"loss is {float(loss)} at step {s}; stopping. The last good checkpoint in {run_dir} is kept; "
                    "lower --learning_rate or check the data"
                )
        pending.clear()

    def save() -> None:
        check_finite()
        ckpt.save(manager, step, state, iterator.get_state())
        if not main:
            return
        manager.wait_until_finished()
        current = nnx.merge(graphdef, state.params, state.rng, frozen)
        folder = ckpt.step_dir(run_dir, step)
        if lora_params:  # LoRA checkpoints also hold the adapter in PEFT format (--adapters, peft)
            save_peft_adapter(current, folder, base_model_name_or_path=resolve_path(args.model_args.model), lora_dropout=args.tuner.lora_dropout)
        else:  # full fine-tuning: an HF model folder, as ms-swift, so --model checkpoint_STEP works everywhere
            save_pretrained(current, folder, dtype=args.model_args.dtype)
            copy_tokenizer_files(resolve_path(args.model_args.model), folder)

    try:
        while step < total_steps:
            host_batches = [next(iterator) for _ in range(accum)]
            for b in host_batches:
                lengths = flops.segment_lengths(b["segment_ids"])
                window_tokens += sum(lengths)
                window_slots += b["segment_ids"].size
                window_flops += flops.training_flops(model.config, lengths, full=lora_params == 0, lora_params=lora_params)
            with use_impl(args.model_args.attn_impl):
                state, metrics = train_step(state, frozen, _stack_batches(host_batches, batch_sharding))
            step += 1
            pending.append((step, metrics["loss"]))
            logger.advance()
            if step % t.logging_steps == 0 or step == total_steps:
                check_finite()
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "loss": float(metrics["loss"]),
                    "token_acc": float(metrics["token_acc"]),
                    "grad_norm": float(metrics["grad_norm"]),
                    "learning_rate": float(schedule(step - 1)),
                    "epoch": round(step / steps_per_epoch, 4),
                    "tokens_per_sec": window_tokens * jax.process_count() / elapsed,
                    "padding_ratio": round(1.0 - window_tokens / max(window_slots, 1), 4),
                    "compiles": flops.compile_count() - window_compiles,  # XLA compilations in this window
                    "elapsed": round(time.perf_counter() - run_start, 3),
                }
                utilisation = flops.mfu(window_flops * jax.process_count(), elapsed, device_kind, jax.device_count())
                if utilisation is not None:
                    record["mfu"] = utilisation
                logger.log(record)
                final.update(record)
                window_tokens, window_slots, window_flops, window_start = 0, 0, 0.0, time.perf_counter()
                window_compiles = flops.compile_count()
            if val_batches and (step % t.eval_steps == 0 or step == total_steps):
                with use_impl(args.model_args.attn_impl):
                    result = {"step": step, **evaluate(eval_step, state, frozen, val_batches, eval_sharding)}
                logger.log(result)
                final.update(result)
            if manager is not None and (step % t.save_steps == 0 or step == total_steps):
                save()
            if preemption.requested:
                say(f"SIGTERM: saving checkpoint at step {step} and stopping")
                if manager is not None:
                    save()
                break
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
        logger.close()
    if "eval_token_acc" in final:
        say(f"held-out token accuracy: {final['eval_token_acc']:.4f} (eval_loss {final['eval_loss']:.4f})")
    if t.num_predict_samples > 0 and args.data.val_dataset and main and step >= total_steps:
        current = nnx.merge(graphdef, state.params, state.rng, frozen)
        current.eval()
        path = resolve_path(args.data.val_dataset[0].split("#")[0])
        rate = predict_held_out(current, tokenizer, path, t.num_predict_samples, t.predict_max_new_tokens, say)
        if rate is not None:
            final["exact_match"] = rate
    say(f"finished {step} steps in {time.perf_counter() - run_start:.1f}s; outputs in {run_dir}")
    final["run_dir"] = run_dir
    return final


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_config(TrainArguments, argv, aliases=ALIASES).validate()
    return train(args)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
