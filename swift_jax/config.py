"""Typed arguments of `python -m swift_jax.train` (names and defaults follow ms-swift's `swift sft`): the shared
groups of `swift_jax.arguments` (model, adapters, template inside DataArgs) nested with the training ones."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import Literal

from swift_jax.arguments import AdapterArgs, ModelArgs
from swift_jax.data.args import DataArgs
from swift_jax.parallel.distributed import DistributedArgs
from swift_jax.parallel.mesh import MeshArgs

# ms-swift 3.x names accepted as aliases of the 4.x ones.
ALIASES = {"train_type": "tuner_type", "torch_dtype": "dtype"}
TUNER_TYPES = ("full", "lora", "qlora")


@dataclasses.dataclass
class TrainModelArgs(ModelArgs):
    """The shared model group plus what only training reads. Full fine-tuning keeps float32 master weights and
    optimizer state and computes in --dtype."""

    init_from_scratch: bool = False
    """Randomly initialise the model from its config.json instead of loading weights (pre-training demos)."""
    scan_layers: bool | None = None
    """Run runs of identical decoder layers under one `jax.lax.scan` over stacked `[layers, ...]` parameters
    (compiles one layer body whatever the depth; models/scan.py); false: one module per layer. Default: scanned,
    except on CPU with --gradient_checkpointing false, where the unrolled layout's step is faster (measured:
    docs/benchmarks.md)."""
    attn_impl: str = "auto"
    """Attention backend: auto | xla | pallas_gpu | pallas_tpu | cudnn (see the README)."""


@dataclasses.dataclass
class TunerArgs(AdapterArgs):
    """The shared adapters group (training starts from them) plus how new adapters or full fine-tuning train."""

    tuner_type: str = "lora"
    """full | lora | qlora (3.x name: train_type)."""
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["all-linear"])
    """HF module names to adapt (q_proj, v_proj, ...) or all-linear (every linear layer but lm_head)."""
    quant_bits: int = 4
    """qlora: bits of the frozen quantized base (4 or 8)."""
    target_regex: str | None = None
    """Regex over HF module names (`model.layers.3.self_attn.q_proj`), matched in full; replaces target_modules."""
    target_parameters: list[str] | None = None
    """MoE expert parameters to adapt with per-expert LoRA, beside target_modules (PEFT's target_parameters,
    matched as a dotted suffix): mlp.experts.gate_up_proj mlp.experts.down_proj. Needs --lora_dropout 0."""
    modules_to_save: list[str] = dataclasses.field(default_factory=list)
    """Modules trained in full beside the adapters and saved in the adapter (e.g. embed_tokens lm_head)."""
    lora_bias: str = "none"
    """none | all (every bias of the model trains and is saved with the adapter; PEFT's bias)."""
    lora_dtype: str | None = None
    """float32 | bfloat16 | float16: dtype of the adapter weights (default: the base weights')."""
    lorap_lr_ratio: float | None = None
    """LoRA+: lora_B (and 1-D adapter parameters) learn at learning_rate x this ratio (paper: 16)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale lora_alpha / sqrt(lora_rank) instead of lora_alpha / lora_rank."""
    use_dora: bool = False
    """DoRA: a trained magnitude per output feature times the normalised adapted weight."""
    init_weights: str = "true"
    """true | false | gaussian | pissa | pissa_niter_N | olora: how new adapters start (PEFT's init_lora_weights)."""
    freeze_parameters: list[str] = dataclasses.field(default_factory=list)
    """full: HF parameter-name prefixes to freeze (model.embed_tokens, model.layers.0., ...)."""
    freeze_parameters_regex: str | None = None
    """full: freeze parameters whose HF name the regex searches."""
    freeze_parameters_ratio: float = 0.0
    """full: freeze this fraction of the parameter count from the bottom (embeddings, first layers) up."""
    trainable_parameters: list[str] = dataclasses.field(default_factory=list)
    """full: HF parameter-name prefixes that train even when a freeze rule matches them."""
    trainable_parameters_regex: str | None = None
    """full: parameters whose HF name the regex searches train even when a freeze rule matches them."""
    neftune_noise_alpha: float | None = None
    """NEFTune: uniform noise of magnitude alpha / sqrt(seq x hidden) on the input embeddings while training."""
    freeze_llm: bool = False
    """Vision-language models: freeze the language model (full), or keep LoRA all-linear off it."""
    freeze_vit: bool = True
    """Vision-language models: freeze the vision tower (full), or keep LoRA all-linear off it."""
    freeze_aligner: bool = True
    """Vision-language models: freeze the aligner/projector (full), or keep LoRA all-linear off it."""
    vit_lr: float | None = None
    """Vision-language models: learning rate of the vision tower (default: learning_rate)."""
    aligner_lr: float | None = None
    """Vision-language models: learning rate of the aligner (default: learning_rate)."""
    vit_gradient_checkpointing: bool | None = None
    """Vision-language models: recompute vision-tower layers in the backward pass (default: gradient_checkpointing)."""


    def validate(self) -> None:
        """Refuse flags that the chosen tuner would ignore (naming the flag), and bad values."""
        lora_only = ("target_regex", "target_parameters", "modules_to_save", "lorap_lr_ratio", "use_rslora", "use_dora", "lora_dtype")
        full_only = ("freeze_parameters", "freeze_parameters_regex", "freeze_parameters_ratio", "trainable_parameters",
                     "trainable_parameters_regex")
        given = lambda flag: getattr(self, flag) not in (None, False, 0.0, [], "none")
        wrong = [f for f in lora_only if given(f) and self.tuner_type == "full"]
        wrong += [f for f in full_only if given(f) and self.tuner_type != "full"]
        if self.lora_bias != "none" and self.tuner_type == "full":
            wrong.append("lora_bias")
        if wrong:
            kind = "LoRA" if self.tuner_type == "full" else "full fine-tuning"
            raise ValueError(f"--{wrong[0]} applies to {kind} only, but --tuner_type is {self.tuner_type}")
        if self.lora_dtype not in (None, "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"):
            raise ValueError(f"--lora_dtype {self.lora_dtype!r}: expected float32, bfloat16 or float16")
        if self.lorap_lr_ratio is not None and self.lorap_lr_ratio <= 0:
            raise ValueError(f"--lorap_lr_ratio must be positive, got {self.lorap_lr_ratio}")
        from swift_jax.tuners.init import check_init_weights

        self.init_weights = check_init_weights(self.init_weights)
        if self.use_dora and self.init_weights not in ("true", "false", "gaussian"):
            raise ValueError(f"--use_dora with --init_weights {self.init_weights}: PEFT cannot convert such an adapter to plain LoRA "
                             "on the original base (checkpoints hold that conversion: [A; A0], [B, -B0]), because DoRA's "
                             "output is not linear in its factors (the magnitude rescales the normalised W_res + s B A); "
                             "use DoRA with --init_weights true/gaussian, or PiSSA/OLoRA without DoRA")
        if self.target_parameters and (self.lora_dropout or self.use_dora or self.init_weights not in ("true", "false", "gaussian")):
            raise ValueError("--target_parameters: PEFT's ParamWrapper adapts expert parameters without dropout, DoRA or "
                             f"PiSSA/OLoRA; pass --lora_dropout 0 (got lora_dropout={self.lora_dropout}, "
                             f"use_dora={self.use_dora}, init_weights={self.init_weights})")
        if self.adapters and self.init_weights != "true":
            raise ValueError(f"--init_weights {self.init_weights} initialises new adapters; --adapters loads trained ones")


@dataclasses.dataclass
class TrainingArgs:
    output_dir: str = "output"
    """Each run writes output_dir/vN-YYYYMMDD-HHMMSS/."""
    learning_rate: float | None = None
    """Peak learning rate. Default: 1e-4 for lora/qlora, 1e-5 for full (as ms-swift)."""
    lr_scheduler_type: str = "cosine"
    """transformers' schedules: cosine | linear | constant_with_warmup | cosine_with_min_lr | cosine_with_restarts
    (linear warmup, then the decay to 0 or the floor) | constant (no warmup, as transformers)."""
    lr_scheduler_kwargs: str | None = None
    """JSON keyword arguments of the schedule: {"min_lr": 1e-6} or {"min_lr_rate": 0.1} (cosine_with_min_lr),
    {"num_cycles": N} (cosine, cosine_with_restarts)."""
    warmup_ratio: float = 0.0
    """Fraction of the optimizer steps spent in linear warmup (not together with --warmup_steps, as ms-swift)."""
    warmup_steps: float = 0
    """Warmup steps; a value below 1 is a fraction of the steps (transformers 5's float warmup_steps)."""
    optim: str = "adamw_torch"
    """transformers' optimizer names, run by their optax rule: adamw_torch | adamw_torch_fused (AdamW),
    adafactor, sgd, adagrad, rmsprop, lion_32bit; the 8-bit/4-bit names (adamw_8bit, adamw_bnb_8bit, lion_8bit,
    paged_*) run the 32-bit rule with one warning line."""
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: float = 3.0
    max_steps: int = -1
    """Optimizer steps to run; -1 = num_train_epochs over the training set."""
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimizer step. Default (as ms-swift): ceil(16 / global micro-batch)."""
    gradient_checkpointing: bool | str = True
    """Recompute each decoder layer in the backward pass (less memory, ~1/3 more compute): true | false, or a
    jax.checkpoint_policies name (nothing_saveable = true, dots_saveable, dots_with_no_batch_dims_saveable,
    offload_dot_with_no_batch_dims) to keep some activations."""
    loss_chunk_size: int = 1024
    """Sequence chunk of the cross-entropy: fp32 logits exist for one chunk at a time."""
    router_aux_loss_coef: float | None = None
    """MoE models: weight of the router load-balancing loss added to the training loss. Default: the
    model config's router_aux_loss_coef if its output_router_logits is true (as transformers), else 0."""
    logging_steps: int = 5
    logging_first_step: bool = True
    """Also log the first step (ms-swift's default, transformers' flag)."""
    save_strategy: Literal["steps", "epoch", "best", "no"] = "steps"
    """When to write checkpoints: every --save_steps and at the end | at each epoch's end | when the evaluated
    --metric_for_best_model improves | never."""
    save_steps: int = 500
    save_total_limit: int | None = None
    """Keep only the newest N checkpoints, and always the best by eval loss (so 1 may keep 2); None: all."""
    eval_steps: int | None = None
    """Evaluate every N steps (default: save_steps) when there is a validation split."""
    eval_strategy: Literal["steps", "epoch", "no"] | None = None
    """When to evaluate on the validation split: every --eval_steps and at the end | at each epoch's end | never.
    Default: --save_strategy (no without a validation split), as ms-swift."""
    save_only_model: bool = False
    """Checkpoints hold the trained weights but no optimizer state or data position (smaller; they resume only
    with --resume_only_model)."""
    metric_for_best_model: str | None = None
    """The eval metric that picks the best checkpoint (`loss`, `token_acc`, ...; eval_ may be omitted). Default: loss."""
    greater_is_better: bool | None = None
    """Whether a larger --metric_for_best_model is better. Default: false for metrics named *loss*, else true."""
    load_best_model_at_end: bool = False
    """After training, load the best checkpoint's weights (what --num_predict_samples then answers with), as
    transformers; needs --eval_strategy equal to --save_strategy."""
    early_stop_interval: int | None = None
    """Stop training after this many checkpoint saves in a row without a better --metric_for_best_model
    (ms-swift's EarlyStopCallback)."""
    resume_from_checkpoint: str | None = None
    """A checkpoint folder (output_dir/vN-.../checkpoint-STEP) to continue exactly from. As in ms-swift, the
    resumed run writes a new vN- folder whose log begins at the next step."""
    resume_only_model: bool = False
    """With --resume_from_checkpoint: restore the trained weights only (a fresh optimizer and schedule); the
    step count and data position still continue unless --ignore_data_skip."""
    ignore_data_skip: bool = False
    """With --resume_from_checkpoint: do not skip the data already trained on (the stream starts over); with
    --resume_only_model the step count starts over too (weights only)."""
    add_version: bool = True
    """Write the run into output_dir/vN-YYYYMMDD-HHMMSS/ (false: straight into output_dir)."""
    create_checkpoint_symlink: bool = False
    """At the end, link run_dir/last and run_dir/best to the last and the best (lowest eval loss) checkpoints."""
    compilation_cache_dir: str = "~/.cache/swift_jax/xla"
    """JAX's persistent compilation cache (a second run of the same job skips compilation); none disables it.
    Never inside output_dir. The JAX_COMPILATION_CACHE_DIR environment variable wins when set."""
    preemption_save_timeout: float = 600.0
    """Seconds the checkpoint after a SIGTERM may take before the process exits anyway (0: no limit); a second
    SIGTERM exits at once."""
    seed: int = 42
    train_dataloader_shuffle: bool = True
    """Shuffle the training samples every epoch."""
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])
    """tensorboard and/or none."""
    acc_strategy: Literal["token", "seq"] = "token"
    """Accuracy logged in training and evaluation: token (token_acc, the share of target tokens predicted) | seq
    (seq_acc, the share of samples whose every target token is predicted; packed samples counted apart)."""
    bf16: bool | None = None
    """true: compute in bfloat16 (ms-swift's mixed precision; full fine-tuning keeps float32 master weights)."""
    fp16: bool | None = None
    """true: JAX has no loss scaling (torch's GradScaler), so training computes in bfloat16 instead (one warning)."""
    group_by_length: bool = False
    """ms-swift/transformers' length-grouped batches: not implemented; one warning line (each batch is padded to its
    own length bucket already, and --packing removes padding)."""
    predict_with_generate: bool = False
    """ms-swift's generation metrics during evaluation: not implemented; one warning line (evaluation reports loss
    and accuracy; --num_predict_samples N answers held-out rows by generation after training)."""
    num_predict_samples: int = 0
    """After training, answer the first N rows of the first --val_dataset file greedily, print a few
    question/answer pairs and the exact-match rate (0: off)."""
    predict_max_new_tokens: int = 64

    def warmup_steps_for(self, total_steps: int) -> int:
        """transformers' get_warmup_steps: --warmup_steps when >= 1, else that fraction (or --warmup_ratio) of the
        optimizer steps, rounded up."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(total_steps * (self.warmup_steps or self.warmup_ratio))

    def scheduler_kwargs(self) -> dict:
        """--lr_scheduler_kwargs as a dict (a JSON object, or a dict from YAML)."""
        value = self.lr_scheduler_kwargs
        if not value:
            return {}
        try:
            parsed = json.loads(value) if isinstance(value, str) else dict(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--lr_scheduler_kwargs {value!r} is not a JSON object ({err}); e.g. '{{\"min_lr\": 1e-6}}'") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"--lr_scheduler_kwargs {value!r}: expected a JSON object")
        return parsed

    def validate(self, has_val: bool) -> None:
        """ms-swift's and transformers' checks and derived defaults of the schedule, optimizer, evaluation and
        checkpoint flags; `has_val`: a validation split will exist."""
        from swift_jax.trainer.optim import learning_rate_schedule, resolve_optim

        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("--warmup_ratio and --warmup_steps cannot be set at the same time (as ms-swift)")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        learning_rate_schedule(self.lr_scheduler_type, self.learning_rate, 2, 0, self.scheduler_kwargs())
        resolve_optim(self.optim)
        if self.eval_strategy is None:  # ms-swift: follow save_strategy, or never without validation data
            self.eval_strategy = ("steps" if self.save_strategy == "best" else self.save_strategy) if has_val else "no"
        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise ValueError("--save_strategy best saves when an evaluation improves; it needs --eval_strategy steps|epoch "
                             "and a validation split")
        if self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
        if self.greater_is_better is None:
            self.greater_is_better = "loss" not in self.metric_for_best_model
        if self.load_best_model_at_end:
            if self.save_strategy != "best" and self.eval_strategy != self.save_strategy:
                raise ValueError(f"--load_best_model_at_end requires --save_strategy and --eval_strategy to match, "
                                 f"got save_strategy={self.save_strategy} and eval_strategy={self.eval_strategy}")
            if self.save_strategy == "steps" and self.save_steps % self.eval_steps:
                raise ValueError(f"--load_best_model_at_end requires --save_steps to be a multiple of --eval_steps, got "
                                 f"{self.save_steps} and {self.eval_steps}")
        if self.group_by_length:
            print("--group_by_length: batches keep the shuffled order (length grouping is not implemented); each batch "
                  "is padded to its own length bucket", file=sys.stderr)
        if self.predict_with_generate:
            print("--predict_with_generate: evaluation reports loss and accuracy, not generated-text metrics; "
                  "--num_predict_samples N answers held-out rows by generation after training", file=sys.stderr)
        if self.early_stop_interval is not None and self.early_stop_interval < 1:
            raise ValueError(f"--early_stop_interval must be >= 1, got {self.early_stop_interval}")


@dataclasses.dataclass
class TrainArguments:
    """Everything `python -m swift_jax.train` reads; flags and YAML keys are the flat field names."""

    model_args: TrainModelArgs = dataclasses.field(default_factory=TrainModelArgs)
    tuner: TunerArgs = dataclasses.field(default_factory=TunerArgs)
    data: DataArgs = dataclasses.field(default_factory=DataArgs)
    training: TrainingArgs = dataclasses.field(default_factory=TrainingArgs)
    mesh: MeshArgs = dataclasses.field(default_factory=MeshArgs)
    distributed: DistributedArgs = dataclasses.field(default_factory=DistributedArgs)

    def validate(self) -> "TrainArguments":
        """Check values that types cannot, with the offending flag in the message; fill derived defaults."""
        if not self.model_args.model:
            raise ValueError("--model is required (an HF model folder or hub id)")
        if self.tuner.tuner_type not in TUNER_TYPES:
            raise ValueError(f"--tuner_type {self.tuner.tuner_type!r}: expected one of {TUNER_TYPES}")
        self.tuner.validate()
        t = self.training
        if t.learning_rate is None:
            t.learning_rate = 1e-5 if self.tuner.tuner_type == "full" else 1e-4
        if t.per_device_train_batch_size < 1:
            raise ValueError(f"--per_device_train_batch_size must be >= 1, got {t.per_device_train_batch_size}")
        if not 0 <= t.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
        if t.eval_steps is None:
            t.eval_steps = t.save_steps
        has_val = bool(self.data.val_dataset) or self.data.split_dataset_ratio > 0
        t.validate(has_val)
        if t.eval_strategy == "no" and self.data.split_dataset_ratio > 0:
            self.data.split_dataset_ratio = 0.0  # as ms-swift: nothing would read the held-out rows
        self._mixed_precision()
        d = self.data
        if d.padding_free and not d.packing:
            print("--padding_free true: samples are packed into --max_length rows (--packing true: the static-shape form "
                  "of a padding-free batch)", file=sys.stderr)
            d.packing = True
        if d.packing_length is not None and (not d.packing or d.packing_length < d.max_length):
            raise ValueError(f"--packing_length {d.packing_length} sets the length of packed rows: it needs --packing true "
                             f"and at least --max_length ({d.max_length})")
        from swift_jax.models.remat import check_remat

        try:
            t.gradient_checkpointing = check_remat(t.gradient_checkpointing)
        except ValueError as err:
            raise ValueError(f"--{err}") from None
        for flag in ("logging_steps", "save_steps", "eval_steps", "per_device_eval_batch_size"):
            if getattr(t, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(t, flag)}")
        if self.data.streaming and t.max_steps <= 0:
            raise ValueError("--streaming true needs --max_steps: a stream has no length to count epochs over (as ms-swift)")
        if (t.resume_only_model or t.ignore_data_skip) and not t.resume_from_checkpoint:
            flag = "--resume_only_model" if t.resume_only_model else "--ignore_data_skip"
            raise ValueError(f"{flag} needs --resume_from_checkpoint")
        return self

    def _mixed_precision(self) -> None:
        """--bf16 / --fp16 (ms-swift's autocast flags) as the compute dtype: bfloat16 either way, since JAX has no
        loss scaling for float16 (one line says so)."""
        t, m = self.training, self.model_args
        if t.bf16 and t.fp16:
            raise ValueError("--bf16 and --fp16 cannot both be true")
        if t.fp16:
            print("--fp16 true: JAX has no float16 loss scaling (torch's GradScaler); computing in bfloat16 instead",
                  file=sys.stderr)
        if (t.bf16 or t.fp16) and m.dtype not in ("bfloat16", "bf16"):
            if m.dtype is not None:
                flag = "--bf16" if t.bf16 else "--fp16"
                print(f"{flag} true with --dtype {m.dtype}: computing in bfloat16 (as ms-swift's autocast)", file=sys.stderr)
            m.dtype = "bfloat16"

    def accumulation_steps(self, batch_devices: int) -> int:
        """ms-swift's default: enough micro-batches for a global batch of 16 samples."""
        t = self.training
        if t.gradient_accumulation_steps is not None:
            return t.gradient_accumulation_steps
        return max(1, math.ceil(16 / (t.per_device_train_batch_size * batch_devices)))
