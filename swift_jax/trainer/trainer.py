"""`Trainer(args, method).train()`: the one training loop every method plugs into.

The trainer owns the run: the mesh, the model and tuner, the state, the jit step with accumulation, the
optimizer, logs, evaluation, preemption, checkpoints and their exports, resume, and multi-host agreement on
paths. What is trained and how (SFT, pre-training, DPO family, GRPO family) is the `Method`'s (see
`swift_jax/trainer/method.py`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from swift_jax import flops
from swift_jax.config import TrainArguments
from swift_jax.data.dataset_syntax import DatasetSpec
from swift_jax.kernels.attention import use_impl
from swift_jax.parallel import devices_for, initialize_distributed, is_main_process, logical_to_spec, memory_report, mesh_from_args
from swift_jax.trainer import checkpoint as ckpt
from swift_jax.trainer.best import BestMetric, EarlyStop
from swift_jax.trainer import run_folder
from swift_jax.trainer.logs import RunLogger, peak_memory_gib, progress_fields
from swift_jax.trainer.method import LanguageModeling, Method
from swift_jax.trainer.optim import learning_rate_schedule, make_optimizer, resolve_optim
from swift_jax.tuners.multimodal import lr_factors, set_vision_remat
from swift_jax.trainer.preemption import Preemption
from swift_jax.trainer.setup import apply_tuner, build_model, enable_compilation_cache, resolve_path
from swift_jax.trainer.step import TrainState, make_eval_step, make_train_step, router_aux_coef, split_model, summarize

STAGING = ".staging-"  # exports written at save time, moved into checkpoint-STEP once orbax finalises it


def default_method(args: TrainArguments, model) -> Method:
    """Supervised fine-tuning (or pre-training when the chat template is off)."""
    t = args.training
    name = "sft" if args.data.use_chat_template else "pt"
    from swift_jax.data.vision import vision_data_for

    vision = vision_data_for(resolve_path(args.model_args.model), model.config, args.data)
    return LanguageModeling(name, loss_chunk_size=t.loss_chunk_size, router_aux_loss_coef=router_aux_coef(model.config, t.router_aux_loss_coef),
                            vision=vision, acc_strategy=t.acc_strategy)


def init_optimizer_state(optimizer, params, mesh):
    """Optimizer state with each per-parameter leaf sharded like its parameter, the rest replicated."""
    shapes = jax.eval_shape(optimizer.init, params)
    param_shardings = jax.tree.map(lambda p: p.sharding, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = optax.tree_map_params(optimizer, lambda _, s: s, shapes, param_shardings, transform_non_params=lambda _: replicated)
    return jax.jit(optimizer.init, out_shardings=shardings)(params)


def check_sequence_split(max_length: int, shards: int) -> None:
    """Rows (packed: `max_length`; padded: multiples of the pad bucket, at most `max_length`) must split evenly
    over `--sequence_parallel_size` devices."""
    from swift_jax.data.batching import PAD_MULTIPLE

    if max_length % shards or PAD_MULTIPLE % shards:
        raise ValueError(
            f"--sequence_parallel_size {shards} does not split rows of --max_length {max_length} (padded rows are "
            f"multiples of {PAD_MULTIPLE}); use a size that divides both, e.g. "
            f"--max_length {max_length + (-max_length) % shards} with a power of two"
        )


def device_batch(host: dict[str, np.ndarray], keys, mesh, *, leading: tuple = ()) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays whose row axis is sharded over the batch axes of `mesh`
    (data x fsdp x expert) and whose second axis, when there is one, is the sequence; `leading` names unsharded axes
    before the rows (the accumulation axis)."""
    out = {}
    for key in keys:
        value = np.asarray(host[key])
        axes = (*leading, "batch", "seq")[: value.ndim] + (None,) * max(0, value.ndim - len(leading) - 2)
        out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, logical_to_spec(axes, mesh)), value)
    return out


def stack_batches(host_batches: list[dict], keys, mesh) -> dict[str, jax.Array]:
    """`accum` host batches -> global `[accum, rows, ...]` arrays (see `device_batch`)."""
    stacked = {key: np.stack([b[key] for b in host_batches]) for key in keys}
    return device_batch(stacked, keys, mesh, leading=(None,))


class Trainer:
    """One training run of `method` (default: SFT / pre-training) configured by `args`."""

    def __init__(self, args: TrainArguments, method: Method | None = None):
        self.args = args
        self.method = method
        self.main = True
        self.say = print

    # -- set-up ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Mesh, model, tuner, data, optimizer, state (restored when resuming), run folder and logger."""
        args, t = self.args, self.args.training
        initialize_distributed(args.distributed)
        enable_compilation_cache(t.compilation_cache_dir, t.output_dir)
        self.main = is_main_process()
        self.mesh = mesh_from_args(args.mesh)
        jax.set_mesh(self.mesh)  # activation sharding constraints read the mesh from here
        check_sequence_split(args.data.row_length(), self.mesh.shape["sequence"])
        self.batch_devices = devices_for("batch", self.mesh)  # data x fsdp x expert
        self.accum = args.accumulation_steps(self.batch_devices)

        from swift_jax.modeling import load_tokenizer

        self.tokenizer = load_tokenizer(resolve_path(args.model_args.model))
        self.model = build_model(args, self.mesh)
        if args.model_args.new_special_tokens:
            from swift_jax.hf.special_tokens import add_new_special_tokens

            added = add_new_special_tokens(self.model, self.tokenizer, args.model_args.new_special_tokens, self.mesh)
            print(f"added {added} new special tokens (vocabulary: {self.model.config.vocab_size})")
        self.model.model.remat = t.gradient_checkpointing
        vit_remat = args.tuner.vit_gradient_checkpointing
        set_vision_remat(self.model, t.gradient_checkpointing if vit_remat is None else vit_remat)
        self.plan = apply_tuner(self.model, args)
        self.trainable = self.plan.trainable
        self.method = self.method or default_method(args, self.model)
        self.method.prepare_model(self.model)
        self.is_lora = self.plan.is_lora

        rows = t.per_device_train_batch_size * self.batch_devices // jax.process_count()
        eval_rows = t.per_device_eval_batch_size * self.batch_devices // jax.process_count()
        self.pipe = self.method.build_data(
            args.data, self.tokenizer, batch_size=rows, eval_batch_size=eval_rows, batches_per_step=self.accum, seed=t.seed,
            shuffle=t.train_dataloader_shuffle, process_index=jax.process_index(), process_count=jax.process_count(),
        )
        # optimizer steps per epoch, as transformers counts them (a last partial accumulation is a step)
        self.steps_per_epoch = max(1, math.ceil(self.pipe.steps_per_epoch / self.accum))
        self.total_steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.num_train_epochs * self.steps_per_epoch))
        warmup = t.warmup_steps_for(self.total_steps)
        self.schedule = learning_rate_schedule(t.lr_scheduler_type, t.learning_rate, self.total_steps, warmup, t.scheduler_kwargs())
        optim_note = resolve_optim(t.optim)[1]
        if optim_note and self.main:
            print(optim_note)
        self.optimizer = make_optimizer(
            self.schedule, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2,
            adam_epsilon=t.adam_epsilon, max_grad_norm=t.max_grad_norm, lorap_lr_ratio=args.tuner.lorap_lr_ratio,
            masks=self.plan.masks, lr_factors=lr_factors(self.model, t.learning_rate, args.tuner), optim=t.optim,
        )
        self.graphdef, params, rng, self.frozen = split_model(self.model, self.trainable)
        opt_state = init_optimizer_state(self.optimizer, params, self.mesh)
        self.state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng,
                                carry=self.method.init_carry())
        self.iterator = self.pipe.train_iterator(num_epochs=None)
        self.optimizer_offset = 0  # steps taken before this optimizer state began
        if t.resume_from_checkpoint:
            self._resume(t.resume_from_checkpoint)
        self.extra = self.method.extra_state(self)

        self.run_dir = run_folder.create_run_dir(t.output_dir, add_version=t.add_version)
        self.logger = RunLogger(self.run_dir, total_steps=self.total_steps, initial_step=int(self.state.step),
                                enabled=self.main, tensorboard="tensorboard" in t.report_to)
        self.say = self.logger.bar.write if self.main else (lambda _: None)
        if self.main:
            run_folder.write_args(self.run_dir, args)
            val_rows = getattr(self.pipe, "split_val_rows", None)
            if val_rows:
                run_folder.write_rows(os.path.join(self.run_dir, "val_dataset.jsonl"), val_rows())
        self.manager = ckpt.checkpoint_manager(self.run_dir)
        with use_impl(args.model_args.attn_impl):
            self.train_step = make_train_step(self.graphdef, self.optimizer, self.method)
            self.eval_step = make_eval_step(self.graphdef, self.method)

    def _resume(self, path: str) -> None:
        """Restore from `path` (`--resume_from_checkpoint`) with ms-swift's meaning of `--resume_only_model`
        (weights only: a fresh optimizer) and `--ignore_data_skip` (the data stream starts over; with
        `--resume_only_model`, the step count too)."""
        t = self.args.training
        model_only = bool((run_folder.read_args(path) or {}).get("save_only_model"))
        if model_only and not t.resume_only_model:
            raise ValueError(f"--resume_from_checkpoint {path}: the checkpoint was saved with --save_only_model (no optimizer "
                             "state); resume it with --resume_only_model true")
        restored, data_state = ckpt.restore(path, self.state, with_data=not t.ignore_data_skip, model_only=model_only)
        if t.resume_only_model:
            step = jnp.zeros((), jnp.int32) if t.ignore_data_skip else restored.step
            self.state = TrainState(step=step, params=restored.params, opt_state=self.state.opt_state, rng=self.state.rng,
                                    carry=self.state.carry)
            self.optimizer_offset = int(step)  # a fresh optimizer: its schedule starts over, as transformers'
        else:
            self.state = restored
        if data_state:
            self.iterator.set_state(data_state)

    # -- the loop -------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the job; returns the final metrics (also written to logging.jsonl). The global mesh the run sets
        (activation sharding constraints read it) is cleared again at the end."""
        try:
            return self._train()
        finally:
            jax.set_mesh(None)

    def _train(self) -> dict[str, Any]:
        self.setup()
        args, t = self.args, self.args.training
        n_trainable, n_total = _count(self.state.params), _count(self.state.params) + _count(self.frozen)
        self.say(f"run folder: {self.run_dir}")
        self.say(f"trainable params: {n_trainable:,} / {n_total:,} ({100 * n_trainable / max(n_total, 1):.4f}%), "
                 f"tuner: {args.tuner.tuner_type}, method: {self.method.describe()}")
        self.say(f"data: {self.pipe.stats}")
        self.say(f"steps: {self.total_steps} (batch {t.per_device_train_batch_size} x {self.batch_devices} devices x "
                 f"{self.accum} accumulation, length {args.data.row_length()})")
        self.say(memory_report(self.state.params, self.state.opt_state, self.model.config, batch_per_device=t.per_device_train_batch_size,
                               seq_len=args.data.row_length(), remat=t.gradient_checkpointing,
                               sequence_parallel=self.mesh.shape["sequence"]))
        preemption = Preemption(t.preemption_save_timeout, self.say)
        lora_params = n_trainable if self.is_lora else 0
        device_kind = jax.devices()[0].device_kind
        self.pending: list[tuple[int, Any]] = []  # (step, device loss) since the last host check
        self.unfinished: int | None = None  # the step whose orbax save may still be in flight
        self.best = BestMetric(t.metric_for_best_model, t.greater_is_better)
        early_stop = EarlyStop(t.early_stop_interval, t.greater_is_better) if t.early_stop_interval else None
        stopped_early = False
        self.last_saved: int | None = None
        final: dict[str, Any] = {}
        start_step = step = int(self.state.step)
        window = _Window(phase=type(self.method).make_batches is not Method.make_batches)
        run_start = time.perf_counter()
        try:
            while step < self.total_steps:
                phase_start = time.perf_counter()
                host = self.method.make_batches(self, [next(self.iterator) for _ in range(self.accum)])
                window.phase_seconds += time.perf_counter() - phase_start
                window.add(host, self.model.config, lora_params)
                with use_impl(args.model_args.attn_impl):
                    self.state, metrics = self.train_step(self.state, self.frozen, self.extra, stack_batches(host, self.method.batch_keys, self.mesh))
                step += 1
                self.pending.append((step, metrics["loss"]))
                self.logger.advance()
                if step % t.logging_steps == 0 or step == self.total_steps or (step == 1 and t.logging_first_step):
                    self._check_finite()
                    record = {"step": step, **_defined({k: v for k, v in metrics.items() if k != "count"})}
                    record["learning_rate"] = float(self.schedule(step - self.optimizer_offset - 1))
                    record["epoch"] = round(step / self.steps_per_epoch, 4)
                    record.update(window.flush(device_kind))
                    elapsed = time.perf_counter() - run_start
                    record["elapsed"] = round(elapsed, 3)
                    record.update(progress_fields(step, self.total_steps, elapsed, step - start_step))
                    self.logger.log(record)
                    final.update(record)
                epoch_end = step % self.steps_per_epoch == 0 or step == self.total_steps
                improved = False
                if self.pipe.val_batches() and _due(t.eval_strategy, step, t.eval_steps, self.total_steps, epoch_end):
                    result = {"step": step, **self.evaluate()}
                    self.logger.log(result)
                    final.update(result)
                    improved = self.best.update(result, step)
                if improved if t.save_strategy == "best" else _due(t.save_strategy, step, t.save_steps, self.total_steps, epoch_end):
                    self.save(step)
                    if early_stop and early_stop.on_save(self.best.value) and step < self.total_steps:
                        self.say(f"early stop at step {step}: {t.metric_for_best_model} has not improved for "
                                 f"{t.early_stop_interval} checkpoint saves (best {self.best.value} at step {self.best.step})")
                        stopped_early = True
                        break
                elif self.unfinished is not None and not self.manager.is_saving_in_progress():
                    self._finalize()
                if preemption.agreed():
                    self.say(f"SIGTERM: saving checkpoint at step {step} and stopping")
                    preemption.start_deadline()
                    if self.last_saved != step:
                        self.save(step)
                    break
        finally:  # also on errors: the last good checkpoint gets its PEFT/HF files
            self._wait_and_finalize()
            self.manager.close()
            self.logger.close()
        finished = step >= self.total_steps or stopped_early
        if t.load_best_model_at_end and finished:
            self._load_best()
        if "eval_token_acc" in final:
            self.say(f"held-out token accuracy: {final['eval_token_acc']:.4f} (eval_loss {final['eval_loss']:.4f})")
        if t.num_predict_samples > 0 and args.data.val_dataset and self.main and finished:
            from swift_jax.trainer.predict import predict_held_out

            model = self.current_model()
            model.eval()
            spec = DatasetSpec.parse(args.data.val_dataset[0])
            path = str(dataclasses.replace(spec, path=resolve_path(spec.path)))
            rate = predict_held_out(model, self.tokenizer, args.data, path, t.num_predict_samples, t.predict_max_new_tokens, self.say)
            if rate is not None:
                final["exact_match"] = rate
        summary = self._summary(step)
        self.logger.summary(summary)
        self.say(f"finished {step} steps in {time.perf_counter() - run_start:.1f}s; outputs in {self.run_dir}")
        return {**final, **summary, "run_dir": self.run_dir}

    def evaluate(self) -> dict[str, float]:
        """The method's loss and metrics over the validation batches, as `eval_<name>`."""
        total, carry = None, self.state.carry
        with use_impl(self.args.model_args.attn_impl):
            for batch in self.pipe.val_batches():
                arrays = device_batch(batch, self.method.batch_keys, self.mesh)
                out, carry = self.eval_step(self.state.params, self.state.rng, self.frozen, self.extra, carry, arrays)
                total = out if total is None else jax.tree.map(jnp.add, total, out)
        self.state = dataclasses.replace(self.state, carry=carry)  # as TRL, evaluation updates running statistics
        return {f"eval_{k}": v for k, v in _defined(summarize(total, self.method)).items()}

    def current_model(self) -> nnx.Module:
        """The model with the current trained state (shares the arrays; do not donate them)."""
        return nnx.merge(self.graphdef, self.state.params, self.state.rng, self.frozen)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _check_finite(self) -> None:
        for s, loss in self.pending:
            if not np.isfinite(float(loss)):
                keep = f"the last good checkpoint, {ckpt.step_dir(self.run_dir, self.last_saved)}, is kept" if self.last_saved else "no checkpoint was saved before it"
                raise FloatingPointError(f"loss is {float(loss)} at step {s}; stopping ({keep}). Lower --learning_rate or check the data")
        self.pending.clear()

    def save(self, step: int) -> None:
        """Checkpoint `step`: wait for the previous save (saves never overlap, but stay asynchronous to the
        loop), stage the PEFT adapter / HF model files (gathered from every process, written by process 0),
        and start orbax's asynchronous save of the state and data position."""
        self._check_finite()
        self._wait_and_finalize()
        staging = os.path.join(self.run_dir, f"{STAGING}{step}")
        self._export(staging)
        state = dataclasses.replace(self.state, opt_state=None) if self.args.training.save_only_model else self.state
        ckpt.save(self.manager, step, state, self.iterator.get_state())
        self.unfinished, self.last_saved = step, step

    def _load_best(self) -> None:
        """`--load_best_model_at_end`: the trained weights become the best checkpoint's, as transformers'
        `_load_best_model` (and says so with its log line)."""
        best = self._best_dir()
        if best is None:
            self.say("--load_best_model_at_end: no checkpoint was evaluated; keeping the last weights")
            return
        self.say(f"Loading best model from {best} (score: {self.best.value}).")
        restored, _ = ckpt.restore(best, self.state, with_data=False, model_only=self.args.training.save_only_model)
        self.state = dataclasses.replace(self.state, params=restored.params)

    def _best_dir(self) -> str | None:
        """The folder of the best evaluated checkpoint, when it was saved."""
        if self.best.step is None or not os.path.isdir(ckpt.step_dir(self.run_dir, self.best.step)):
            return None
        return ckpt.step_dir(self.run_dir, self.best.step)

    def _export(self, folder: str) -> None:
        """What a checkpoint holds besides orbax's state, so `--adapters`/`--model` and peft/transformers read
        it: LoRA -> PEFT adapter; full fine-tuning -> HF model folder (as ms-swift). Every process takes part
        in gathering sharded parameters; only process 0 writes."""
        from swift_jax.hf.hub import copy_tokenizer_files
        from swift_jax.hf.peft import save_peft_adapter
        from swift_jax.modeling import save_pretrained

        model, m = self.current_model(), self.args.model_args
        if self.is_lora:
            save_peft_adapter(model, folder, base_model_name_or_path=resolve_path(m.model), lora_dropout=self.args.tuner.lora_dropout,
                              modules_to_save=self.args.tuner.modules_to_save, lora_bias=self.args.tuner.lora_bias,
                              target_regex=self.args.tuner.target_regex)
        else:
            save_pretrained(model, folder, dtype=m.dtype)
            if self.main:
                copy_tokenizer_files(resolve_path(m.model), folder)
        if self.main and m.new_special_tokens:  # the grown tokenizer, as transformers' Trainer saves it
            self.tokenizer.save_pretrained(folder)
        if self.main:
            run_folder.write_args(folder, self.args)

    def _wait_and_finalize(self) -> None:
        self.manager.wait_until_finished()
        self._finalize()
        self._rotate()

    def _finalize(self) -> None:
        """Move the staged export files into the finished `checkpoint-STEP` folder (process 0)."""
        if self.unfinished is None:
            return
        step, self.unfinished = self.unfinished, None
        staging, target = os.path.join(self.run_dir, f"{STAGING}{step}"), ckpt.step_dir(self.run_dir, step)
        if self.main and os.path.isdir(staging):
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), os.path.join(target, name))
            os.rmdir(staging)

    def _rotate(self) -> None:
        """`save_total_limit`: delete all but the newest N checkpoints, never the best one."""
        limit = self.args.training.save_total_limit
        best = [self.best.step] if self.best.step is not None else []
        for step in ckpt.steps_to_delete(self.manager.all_steps(), limit, keep=best):
            self.manager.delete(step)

    def _summary(self, step: int) -> dict[str, Any]:
        """ms-swift's last `logging.jsonl` line, with `--create_checkpoint_symlink`'s `last`/`best` links."""
        last = ckpt.step_dir(self.run_dir, self.last_saved) if self.last_saved else None
        best = self._best_dir()
        if self.args.training.create_checkpoint_symlink and self.main:
            last = run_folder.link(last, os.path.join(self.run_dir, "last")) if last else None
            best = run_folder.link(best, os.path.join(self.run_dir, "best")) if best else None
        return {
            "last_model_checkpoint": last,
            "best_model_checkpoint": best,
            "best_metric": self.best.value,
            "global_step": step,
            "memory": round(peak_memory_gib(), 4),
        }


def _due(strategy: str, step: int, every: int, total_steps: int, epoch_end: bool) -> bool:
    """transformers' DefaultFlowCallback: `steps` every N steps and at the last one, `epoch` at each epoch's end."""
    if strategy == "steps":
        return step % every == 0 or step == total_steps
    return strategy == "epoch" and epoch_end


def _defined(metrics: dict) -> dict[str, float]:
    """Metric values as floats, without those undefined for this step (NaN: see `Method.derived_metrics`)."""
    values = {k: float(v) for k, v in metrics.items()}
    return {k: v for k, v in values.items() if k == "loss" or not math.isnan(v)}


def _count(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


class _Window:
    """Token, slot and FLOP counts since the last log line, for tokens/s, padding ratio and MFU. With a method
    that makes its batches in a phase of its own (`phase`: GRPO's rollouts), `train_tokens_per_sec` counts the
    same tokens over the time outside that phase (the update)."""

    def __init__(self, phase: bool = False):
        self.phase = phase
        self.reset()

    def reset(self) -> None:
        self.tokens, self.slots, self.flops, self.start = 0, 0, 0.0, time.perf_counter()
        self.phase_seconds = 0.0  # spent in Method.make_batches
        self.compiles = flops.compile_count()

    def add(self, host_batches: list[dict], config, lora_params: int) -> None:
        for batch in host_batches:
            if "segment_ids" not in batch:
                continue
            lengths = flops.segment_lengths(batch["segment_ids"])
            self.tokens += sum(lengths)
            self.slots += batch["segment_ids"].size
            self.flops += flops.training_flops(config, lengths, full=lora_params == 0, lora_params=lora_params)

    def flush(self, device_kind: str) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        out = {
            "tokens_per_sec": self.tokens * jax.process_count() / elapsed,
            "padding_ratio": round(1.0 - self.tokens / max(self.slots, 1), 4),
            "compiles": flops.compile_count() - self.compiles,  # XLA compilations in this window
        }
        if self.phase:
            out["train_tokens_per_sec"] = self.tokens * jax.process_count() / max(elapsed - self.phase_seconds, 1e-9)
        utilisation = flops.mfu(self.flops * jax.process_count(), elapsed, device_kind, jax.device_count())
        if utilisation is not None:
            out["mfu"] = utilisation
        self.reset()
        return out
