"""GRPO as a training method: a rollout phase makes each step's batches, the loss is the clipped policy loss.

`make_batches` (before each step) turns the step's prompt rows into training rows:
rollout (`rollout.py`) -> rewards (`swift_jax.rewards`) -> DAPO dynamic sampling -> reference log-probs
(LoRA adapters off, or a frozen copy of the initial weights for full fine-tuning) -> advantages; then
`loss` (inside the compiled step) recomputes the policy's log-probs and applies `grpo_loss.policy_loss`.

Prompt rows arrive as ms-swift's RepeatSampler gives them: each prompt `num_generations` times in a row,
`per_device_train_batch_size` rows (completions) per micro-batch. Host-side statistics (rewards, lengths,
rollout throughput) travel to the step as per-row constants under `metric/{name}` and come out of the
loss as `(sum, rows)` metrics under ms-swift's keys, so the trainer logs them like any other metric.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.data.errors import DataError

from swift_jax.rewards import build_reward_funcs, load_plugins, score_completions
from swift_jax.rewards.plugins import reward_name
from swift_jax.trainer.method import LossOutput, Method
from swift_jax.tuners.lora import adapters_disabled, lora_layers

from .advantages import compute_advantages, reward_metrics, weighted_rewards
from .dynamic_sampling import Round, concat_rounds, dynamic_sample, take_rows
from .grpo_args import GRPOArgs
from .grpo_loss import policy_loss
from .grpo_logps import completion_logps
from .memory import ProgramMemory, check_memory, program_memory
from .reward_model import ModelReward
from .rollout import Rollout, SamplingParams, compile_rollout, rollout

ROLLOUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "old_logps", "advantages", "truncated")


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("temperature",))
def _reference_logps(graphdef, state, prompt_ids, prompt_mask, completion_ids, *, temperature: float):
    """`[rows, C]` log-probs under the reference: the given weights with any LoRA adapters switched off."""
    model = nnx.merge(graphdef, state)
    model.eval()
    with adapters_disabled():
        return completion_logps(model, prompt_ids, prompt_mask, completion_ids, temperature)


def end_token_ids(tokenizer) -> tuple[int, ...]:
    """Tokens that end a completion: the tokenizer's eos and the chat end tokens it knows (ChatML, Llama 3)."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in ("<|im_end|>", "<|eot_id|>") if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


class GRPO(Method):
    """GRPO and its variants (DAPO, GSPO, Dr. GRPO, BNPO, RLOO, REINFORCE++) as chosen by `GRPOArgs`."""

    name = "grpo"

    def __init__(
        self,
        args: GRPOArgs,
        *,
        tokenizer=None,
        eos_ids: tuple[int, ...] = (),
        seed: int = 0,
        reward_funcs: list | None = None,
        max_length: int | None = None,
    ):
        self.args = args
        self.loss_config = args.loss_config()
        if args.external_plugins:
            load_plugins(args.external_plugins)
        self.reward_funcs = build_reward_funcs(args.reward_funcs if reward_funcs is None else reward_funcs, args)
        self.reward_funcs += [ModelReward(path, max_length=max_length) for path in args.reward_model]  # after the functions, as ms-swift
        if not self.reward_funcs:
            raise ValueError("GRPO needs at least one reward: pass --reward_funcs (e.g. accuracy), a plugin's name or --reward_model")
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        weights = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"--reward_weights has {len(weights)} values for {len(self.reward_funcs)} reward functions {self.reward_names}")
        self.reward_weights = np.asarray(weights, np.float32)
        self.tokenizer, self.eos_ids = tokenizer, tuple(eos_ids)
        # DAPO resampling draws new prompts from here (ms-swift's separate resample iterator); build_data
        # sets it. Without it, a resample rolls the same prompts out again with fresh keys.
        self.resample_batches: Iterator[dict] | None = None
        self.sampling = SamplingParams(args.temperature, args.top_p, args.top_k, args.repetition_penalty)
        self.metric_names = self._metric_names()
        self.batch_keys = ROLLOUT_KEYS + (("ref_logps",) if self._needs_reference else ()) + tuple(f"metric/{m}" for m in self.metric_names)
        self.completions_path: str | None = None  # completions.jsonl (with --log_completions)
        self._key = jax.random.key(seed)
        self._rollouts = 0  # rollouts made (resamples included)
        self._calls = 0  # make_batches calls; the step number when no trainer gives one
        self._checked = False  # the memory report ran
        self._buffer: list[dict] | None = None
        self._ref_state = None
        self._rollout_seconds, self._rollout_tokens = 0.0, 0

    @property
    def _needs_reference(self) -> bool:
        return self.args.beta != 0.0

    def _metric_names(self) -> list[str]:
        names = ["reward", "reward_std", "frac_reward_zero_std"]
        for n in self.reward_names:
            names += [f"rewards/{n}/mean", f"rewards/{n}/std"]
        names += ["completions/mean_length", "completions/min_length", "completions/max_length", "completions/clipped_ratio"]
        names += ["rollout_tokens_per_sec"]
        if self.args.kl_in_reward and self.args.beta != 0.0:
            names.append("kl")  # logged from the rewards (sum over tokens of old - ref), as ms-swift
        if self.args.dynamic_sample:
            names.append("num_resamples")
        return names

    def describe(self) -> str:
        a = self.args
        return (
            f"grpo: loss_type={a.loss_type} importance_sampling_level={a.importance_sampling_level} advantage_estimator="
            f"{a.advantage_estimator} scale_rewards={a.scale_rewards} beta={a.beta} num_generations={a.num_generations} "
            f"rewards={self.reward_names}"
        )

    def build_data(
        self, args, tokenizer, *, batch_size: int, seed: int, shuffle: bool = True, process_index: int = 0, process_count: int = 1, **_
    ):
        """Prompt micro-batches of `batch_size` completions from `args.dataset` (each prompt x num_generations);
        no validation batches (GRPO evaluation is not implemented)."""
        from swift_jax.data.resolve import LoadOptions

        from .grpo_data import PromptBatches, load_prompt_rows

        if getattr(args, "cached_dataset", None) or getattr(args, "cached_val_dataset", None):
            raise DataError("--cached_dataset is not supported for GRPO (as in ms-swift); pass the prompts with --dataset")
        if self.tokenizer is None:
            self.tokenizer = tokenizer
        if not self.eos_ids:
            self.eos_ids = end_token_ids(tokenizer)
        rows = load_prompt_rows(args.dataset, seed=getattr(args, "data_seed", 42), strict=getattr(args, "strict", True),
                                options=LoadOptions.of(args))
        make = lambda s: PromptBatches(
            rows, tokenizer, num_generations=self.args.num_generations, batch_size=batch_size,
            max_length=getattr(args, "max_length", None), seed=s, shuffle=shuffle, process_index=process_index, process_count=process_count,
        )
        if self.args.dynamic_sample:
            self.resample_batches = make(seed + 1).batches()
        return make(seed)

    # ----- the rollout phase (host) -----

    def make_batches(self, trainer, host_batches: list[dict]) -> list[dict]:
        """The step's training micro-batches from its prompt micro-batches (see `make_batches_for`). Before
        the first step, both compiled programs' memory is reported (and a configuration that cannot fit is
        refused); with `--log_completions`, completions.jsonl goes into the run folder."""
        from swift_jax.trainer.trainer import stack_batches

        model, step = trainer.current_model(), int(trainer.state.step) + 1
        if self.args.log_completions and trainer.main and self.completions_path is None:
            self.completions_path = os.path.join(trainer.run_dir, "completions.jsonl")
        if self._needs_reference and self._ref_state is None and not lora_layers(model):
            # full fine-tuning: the reference is the starting model (ms-swift's --ref_model defaults to --model),
            # loaded again, so a resumed run keeps the original reference
            from swift_jax.trainer.setup import build_model

            self._ref_state = nnx.state(build_model(trainer.args, trainer.mesh))
        if not self._checked:  # before the first rollout allocates anything
            self._checked = True
            rows, width = len(host_batches[0]["prompt_ids"]), host_batches[0]["prompt_ids"].shape[1]
            shapes = [self.placeholder_batch(rows, width) for _ in host_batches]
            device = stack_batches(shapes, self.batch_keys, trainer.mesh)
            update = trainer.train_step.lower(trainer.state, trainer.frozen, trainer.extra, device).compile()
            del device
            programs = [self.rollout_memory(model, rows * len(host_batches), width), program_memory("update", update)]
            trainer.say(check_memory(programs, self.args.max_device_memory_gib))
        return self.make_batches_for(model, host_batches, step=step)

    def placeholder_batch(self, rows: int, width: int) -> dict[str, np.ndarray]:
        """A micro-batch of zeros with the shapes and dtypes `make_batches_for` produces (to compile ahead)."""
        c = self.args.max_completion_length
        shapes = {
            "prompt_ids": ((rows, width), np.int32), "prompt_mask": ((rows, width), np.int32),
            "completion_ids": ((rows, c), np.int32), "completion_mask": ((rows, c), np.int32),
            "old_logps": ((rows, c), np.float32), "ref_logps": ((rows, c), np.float32),
            "advantages": ((rows,), np.float32), "truncated": ((rows,), np.bool_),
        }
        return {k: np.zeros(*shapes.get(k, ((rows,), np.float32))) for k in self.batch_keys}

    def make_batches_for(self, model: nnx.Module, host_batches: list[dict], step: int | None = None) -> list[dict]:
        """Roll out, score and weigh the completions of `host_batches` (prompt rows, each prompt repeated
        `num_generations` times); with `num_iterations` > 1 a rollout serves that many steps. The rollout's
        PRNG key is a function of the step, so a resumed run samples what the uninterrupted one would."""
        self._calls += 1
        step = self._calls if step is None else step
        if self._buffer is not None and (step - 1) % self.args.num_iterations:
            return self._buffer
        rows_per_batch = len(host_batches[0]["prompt_ids"])
        prompts = concat_rounds(host_batches)
        n = len(prompts["prompt_ids"])
        self.args.check_batch(n)
        self._rollout_seconds, self._rollout_tokens = 0.0, 0
        keys = iter(jax.random.split(jax.random.fold_in(self._key, step), self.args.max_resample_times + 1))
        first = self._score(model, prompts, next(keys))
        resamples = 0
        if self.args.dynamic_sample:
            fresh = lambda: concat_rounds([next(self.resample_batches) for _ in host_batches]) if self.resample_batches else prompts
            resample = lambda: self._score(model, fresh(), next(keys))
            first, resamples = dynamic_sample(
                first, resample, num_generations=self.args.num_generations, generation_batch_size=n, max_resample_times=self.args.max_resample_times
            )
        rows = self._finish(model, first, resamples, step)
        # segment_ids (host only, not sent to the step): the trainer counts real tokens from it (tokens/s, MFU)
        rows["segment_ids"] = np.concatenate([rows["prompt_mask"], rows["completion_mask"]], axis=1)
        self._buffer = [take_rows(rows, slice(i, i + rows_per_batch)) for i in range(0, n, rows_per_batch)]
        return self._buffer

    def _score(self, model: nnx.Module, prompts: Round, key: jax.Array) -> Round:
        """One rollout of the prompt rows, with its rewards: the round dynamic sampling inspects."""
        self._rollouts += 1
        start = time.perf_counter()
        out: Rollout = rollout(
            model, prompts["prompt_ids"], prompts["prompt_mask"], key,
            max_completion_length=self.args.max_completion_length, sampling=self.sampling, eos_ids=self.eos_ids,
        )
        out = jax.tree.map(np.asarray, out)  # waits for the device
        self._rollout_seconds += time.perf_counter() - start
        self._rollout_tokens += int(out.completion_mask.sum())
        ids = [row[: n].tolist() for row, n in zip(out.completion_ids, out.completion_mask.sum(-1))]
        texts = [self._decode(t) for t in ids]
        columns = {k: list(v) for k, v in prompts.items() if k not in ("prompt_ids", "prompt_mask")}
        columns.update(response_token_ids=ids, is_truncated=list(out.truncated))
        per_func = score_completions(self.reward_funcs, texts, columns)
        return {
            **prompts,
            "completion_ids": out.completion_ids,
            "completion_mask": out.completion_mask,
            "old_logps": out.old_logps,
            "truncated": out.truncated,
            "rewards_per_func": per_func,
            "rewards": np.asarray(weighted_rewards(per_func, self.reward_weights)),
            "completion_text": np.asarray(texts, dtype=object),
        }

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode([t for t in ids if t not in self.eos_ids], skip_special_tokens=True)

    def _finish(self, model: nnx.Module, rows: Round, resamples: int, step: int | None) -> Round:
        """Reference log-probs, advantages and the logged statistics of the rows the step trains on."""
        a = self.args
        if self._needs_reference:
            graphdef, state = nnx.split(model)
            if not lora_layers(model):  # full fine-tuning: the starting weights (without a trainer: a copy at
                if self._ref_state is None:  # the first rollout)
                    self._ref_state = jax.tree.map(jnp.copy, state)
                state = self._ref_state
            rows["ref_logps"] = np.asarray(
                _reference_logps(graphdef, state, rows["prompt_ids"], rows["prompt_mask"], rows["completion_ids"], temperature=a.temperature)
            )
        kl_values = None
        if a.kl_in_reward and a.beta != 0.0:
            kl_values = ((rows["old_logps"] - rows["ref_logps"]) * rows["completion_mask"]).sum(-1)
        advantages, rewards = compute_advantages(
            rows["rewards_per_func"], self.reward_weights, a.num_generations, advantage_estimator=a.advantage_estimator,
            scale_rewards=a.scale_rewards, kl_in_reward=a.kl_in_reward, beta=a.beta, kl_values=kl_values,
        )
        rows["advantages"] = np.asarray(advantages, np.float32)
        lengths = rows["completion_mask"].sum(-1)
        stats = reward_metrics(np.asarray(rewards), rows["rewards_per_func"], self.reward_names, a.num_generations, a.scale_rewards).as_logs()
        stats.update({
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(rows["truncated"].mean()),
            "rollout_tokens_per_sec": self._rollout_tokens / max(self._rollout_seconds, 1e-9),  # every rollout of the step
            "num_resamples": float(resamples),
        })
        if kl_values is not None:
            stats["kl"] = float(np.nanmean(kl_values))
        n = len(lengths)
        for name in self.metric_names:
            rows[f"metric/{name}"] = np.full(n, stats.get(name, 0.0), np.float32)
        if a.log_completions and self.completions_path:
            self._log_completions(rows, step)
        return {k: rows[k] for k in self.batch_keys}

    def _log_completions(self, rows: Round, step: int | None) -> None:
        """Append one ms-swift-style table (columns of equal length) to completions.jsonl."""
        table = {"step": [str(step)] * len(rows["rewards"])}
        if self.tokenizer is not None:
            table["prompt"] = [self.tokenizer.decode(i[m > 0]) for i, m in zip(rows["prompt_ids"], rows["prompt_mask"])]
        table["completion"] = list(rows["completion_text"])
        for i, name in enumerate(self.reward_names):
            table[name] = [None if np.isnan(v) else float(v) for v in rows["rewards_per_func"][:, i]]
        table["advantages"] = [float(v) for v in rows["advantages"]]
        if "solution" in rows:
            table["solution"] = [str(s) for s in rows["solution"]]
        os.makedirs(os.path.dirname(os.path.abspath(self.completions_path)), exist_ok=True)
        with open(self.completions_path, "a") as f:
            f.write(json.dumps(table, ensure_ascii=False) + "\n")

    # ----- the loss (traced) -----

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array], extra: Any) -> LossOutput:
        """The policy loss of one micro-batch of completions, with the rollout's statistics as metrics."""
        logps = completion_logps(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], self.args.temperature)
        # One update per rollout: the sampling policy is the current one (ratio 1, as ms-swift's old
        # log-probs from the same weights); more iterations use the stored rollout log-probs.
        old = jax.lax.stop_gradient(logps) if self.args.num_iterations == 1 else batch["old_logps"]
        loss_sum, count, metrics = policy_loss(
            logps, old, batch["advantages"], batch["completion_mask"], self.loss_config,
            ref_logps=batch.get("ref_logps"), truncated=batch["truncated"], overlong_filter=self.args.overlong_filter,
        )
        rows = jnp.asarray(batch["advantages"].shape[0], jnp.float32)
        for name in self.metric_names:
            metrics[name] = (batch[f"metric/{name}"].sum(), rows)
        return LossOutput(loss_sum, count, metrics)

    # ----- for the memory report -----

    def rollout_memory(self, model: nnx.Module, rows: int, width: int) -> ProgramMemory:
        """Memory of the compiled rollout of `rows` completions (one step's) of prompts `width` wide."""
        compiled = compile_rollout(
            model, rows, width, max_completion_length=self.args.max_completion_length, sampling=self.sampling, eos_ids=self.eos_ids
        )
        return program_memory("rollout", compiled)
