"""ms-swift 4.6's arguments that are no field here: what each becomes, and why (the acceptance table of the CLI).

Every argument of ms-swift's `swift sft|pt|rlhf|infer|deploy|eval|export|merge-lora` (recorded from its argument
dataclasses into tests/golden/ms_swift_arguments.json by scripts/record_ms_swift_arguments.py) is, per command,
one of:

    a field     of the command's dataclass, with ms-swift's meaning (`--lora_rank`, `--template`, ...)
    mapped      renamed to a field (`MAPPED`, e.g. sft's `--max_new_tokens` -> `--predict_max_new_tokens`), or
                handled by the parser itself (`--ignore_args_error`, `--external_plugins`)
    noted       accepted with one warning line naming it and why (`notes_for`): where the flag has no effect
                here ("ignored: ..."), or where ms-swift's meaning is not implemented and a value other than
                off would change the result ("... the result differs from ms-swift's: ...")

so "unrecognized option" is never the answer to an ms-swift argument. When a note's argument becomes a field, the
test that no name is both a field and a note shows the note to delete.
"""

from __future__ import annotations

import dataclasses

TRAIN = ("sft", "pt", "rlhf")
INFER = ("infer", "deploy", "eval")
EXPORT = ("export", "merge-lora")
COMMANDS = TRAIN + INFER + EXPORT

OFF_VALUES = frozenset({"", "false", "none", "null", "0", "0.0", "[]", "{}", "no"})
"""Values that switch an unimplemented feature off (ms-swift's defaults), so they change nothing."""


@dataclasses.dataclass(frozen=True)
class Note:
    """Why an ms-swift argument is no field of a command here."""

    reason: str
    differs: bool = False
    """ms-swift's meaning is not implemented here: a value other than off changes the result."""

    def message(self, name: str, value: str | None) -> str:
        """The one warning line for `--name value` (value None: the bare flag, a boolean's true)."""
        if self.differs and (value is None or value.strip().lower() not in OFF_VALUES):
            given = f"--{name}" if value is None else f"--{name} {value}"
            return f"{given}: not implemented in swift-jax, so the result differs from ms-swift's: {self.reason}"
        return f"ignoring --{name}: {self.reason}"


_GROUPS: list[tuple[tuple[str, ...], str, bool, str]] = []
"""(commands, reason, differs, names): the notes, grouped by reason."""


def _note(commands: tuple[str, ...], reason: str, names: str, differs: bool = False) -> None:
    _GROUPS.append((commands, reason, differs, names))


# -- Devices, processes and memory: the mesh and XLA replace DeepSpeed, DDP, FSDP-torch and accelerate. --------
_MESH = ("sharding comes from the mesh: --fsdp_size (default -1 shards parameters, gradients and optimizer state "
         "over every device, ZeRO-3's layout; ZeRO-2 trains the same model), --data_parallel_size, "
         "--tensor_parallel_size; there is no DeepSpeed or torch FSDP")
_note(TRAIN, _MESH, "deepspeed fsdp fsdp_config zero_hpz_partition_size deepspeed_autotp_size accelerator_config "
      "parallelism_config ds3_gather_for_generation")
_note(("rlhf",), _MESH, "teacher_deepspeed")
_note(COMMANDS, "the model is placed on the JAX mesh, not by a torch device map", "device_map max_memory")
_note(TRAIN, "there is no torch DDP: JAX runs the collectives of the mesh (NCCL on GPU, ICI on TPU, gloo on CPU)",
      "ddp_backend ddp_find_unused_parameters ddp_timeout ddp_broadcast_buffers ddp_bucket_cap_mb ddp_static_graph "
      "local_rank")
_note(INFER + EXPORT, "there is no torch process group", "ddp_backend ddp_timeout")
_note(TRAIN, "grain reads and tokenises rows in background threads (--dataset_num_proc) and prefetches batches; "
      "there are no torch DataLoader workers or CUDA pinned memory",
      "dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers dataloader_prefetch_factor "
      "dataloader_multiprocessing_context dataloader_in_order")
_note(TRAIN, "steps are compiled by XLA (jax.jit); there is no torch.compile",
      "torch_compile torch_compile_backend torch_compile_mode")
_note(TRAIN, "JAX manages device memory (XLA_PYTHON_CLIENT_MEM_FRACTION); there is no PyTorch cache allocator",
      "torch_empty_cache_steps skip_memory_metrics")
_note(TRAIN, "matrix products use XLA's default precision for --dtype", "tf32")
_note(TRAIN, "JAX picks the platform (set JAX_PLATFORMS=cpu to run on the CPU)", "use_cpu")
_note(COMMANDS, "there are no NPU model patches: models are JAX modules", "enable_npu_model_patch")
_note(TRAIN, "the loss is a chunked cross-entropy already (--loss_chunk_size); Liger kernels are PyTorch",
      "use_liger_kernel liger_kernel_config use_logits_to_keep")
_note(TRAIN, "--gradient_checkpointing takes a jax.checkpoint_policies name instead", "gradient_checkpointing_kwargs")
_note(TRAIN, "the batch size is what you set; halving it on out-of-memory is not done", "auto_find_batch_size", differs=True)
_note(TRAIN, "the loss is always the token mean over the global batch (ms-swift's default)",
      "average_tokens_across_devices")
_note(TRAIN, "runs are deterministic given --seed and --data_seed", "full_determinism")
_note(TRAIN, "orbax checkpoints are written asynchronously already", "use_flash_ckpt save_on_each_node enable_jit_checkpoint")
_note(TRAIN, "every process logs through the main one", "log_level log_level_replica log_on_each_node")
_note(TRAIN, "the progress bar is always shown on the main process", "disable_tqdm")
_note(INFER + EXPORT, "attention backends are chosen per device (--attn_impl auto in training)", "attn_impl")
_note(COMMANDS, "the architecture comes from the checkpoint's config.json model_type", "model_type")
_note(COMMANDS, "MoE experts run in the JAX MoE layer (--expert_parallel_size shards them)", "experts_impl")

# -- Hubs and downloads. ---------------------------------------------------------------------------------------
_note(COMMANDS, "model hub ids are always Hugging Face ids (set HF_TOKEN for private models; --use_hf and "
      "--hub_token choose the hub of datasets)", "model_revision local_repo_path download_mode")
_note(INFER + EXPORT, "the dataset entries of infer, eval and export are read in turn, not mixed",
      "interleave_prob stopping_strategy", differs=True)
_note(TRAIN, "models are read from local folders or the hub without a ModelScope check", "check_model")
_note(("rlhf",), "hub ids are always Hugging Face ids (set HF_TOKEN for private models)",
      "ref_model_revision reward_model_revision teacher_model_revision")
_note(TRAIN, "checkpoints are not pushed to a hub during training; upload the output folder afterwards",
      "push_to_hub hub_model_id hub_private_repo hub_strategy hub_always_push hub_revision")

# -- Logging and reporting. ------------------------------------------------------------------------------------
_note(TRAIN, "logs go to the run folder (logging.jsonl, tensorboard events, images/) and --report_to",
      "logging_dir logging_strategy logging_nan_inf_filter project run_name trackio_bucket_id trackio_space_id "
      "trackio_static_space_id include_num_input_tokens_seen")
_note(("rlhf",), "completions are logged with --log_completions", "wandb_log_unique_prompts")
_note(TRAIN, "SwanLab's account, workspace and notification settings are not used (--report_to swanlab logs "
      "with --swanlab_project, --swanlab_exp_name, --swanlab_mode and swanlab's own login)",
      "swanlab_token swanlab_workspace swanlab_notification_method "
      "swanlab_webhook_url swanlab_secret swanlab_sender_email swanlab_receiver_email swanlab_smtp_server "
      "swanlab_smtp_port swanlab_email_language")
_note(TRAIN, "the trainer runs the steps of the command (training, then evaluation on --val_dataset)",
      "do_train do_eval do_predict")
_note(TRAIN, "evaluation during training reports the loss (and token accuracy) on --val_dataset",
      "batch_eval_metrics eval_do_concat_batches eval_use_gather_object prediction_loss_only label_names "
      "include_for_metrics eval_accumulation_steps bf16_full_eval fp16_full_eval eval_delay eval_on_start "
      "sortish_sampler generation_max_length generation_num_beams generation_config debug")
_note(TRAIN, "benchmarks (evalscope) run with `swift-jax eval` after training, not inside it",
      "eval_use_evalscope eval_dataset eval_dataset_args eval_limit eval_metric eval_generation_config extra_eval_args")
_note(TRAIN, "there are no trainer callbacks; plugins are files passed with --external_plugins",
      "callbacks restore_callback_states_from_checkpoint")

# -- Data (training). ------------------------------------------------------------------------------------------
_note(TRAIN, "rows are tokenised lazily by the grain pipeline on every run; there is no datasets map cache",
      "lazy_tokenize load_from_cache_file packing_num_proc remove_unused_columns length_column_name")
_note(TRAIN, "column names are mapped automatically (messages, query/response, ...); --columns renames them",
      "disable_auto_column_mapping", differs=True)
_note(TRAIN, "options of ms-swift's decision-making datasets, which are not read here",
      "decision_drop_instructions decision_shuffle_fields decision_state_as_text decision_subsample_options", differs=True)
_note(TRAIN, "batches have static shapes: every step's batch is full", "dataloader_drop_last")
_note(TRAIN, "samples are shuffled (--dataset_shuffle, --train_dataloader_shuffle) or kept in order; no other "
      "sampling strategy", "train_sampling_strategy", differs=True)
_note(COMMANDS, "grounding boxes in rows are not rescaled", "norm_bbox", differs=True)
_note(COMMANDS, "--template names an ms-swift template (the swift backend); without it the tokenizer's own Jinja "
      "template renders prompts (the jinja backend)", "template_backend")
_note(TRAIN, "a checkpoint's args.json is read only by infer, eval, deploy and export (ms-swift's training "
      "default: false)", "load_args load_data_args")

# -- Training algorithms not implemented here. -----------------------------------------------------------------
_note(TRAIN, "GaLore is not implemented; the optimizer is --optim's on the trainable parameters", "use_galore", differs=True)
_note(TRAIN, "options of GaLore (--use_galore), which is not implemented",
      "galore_target_modules galore_rank galore_update_proj_gap galore_scale galore_proj_type galore_optim_per_parameter "
      "galore_with_embedding galore_quantization galore_proj_quant galore_proj_bits galore_proj_group_size "
      "galore_cos_threshold galore_gamma_proj galore_queue_size")
_note(TRAIN, "LISA (training a few random layers at a time) is not implemented", "lisa_activated_layers", differs=True)
_note(TRAIN, "option of LISA (--lisa_activated_layers), which is not implemented", "lisa_step_interval")
_note(TRAIN, "ms-swift's optimizer plugins are not implemented (--lorap_lr_ratio gives LoRA+); the optimizer is --optim's",
      "optimizer optim_args optim_target_modules", differs=True)
_note(TRAIN, "the loss is the (loss_scale-weighted) cross-entropy; channel, DFT and Matryoshka losses are not implemented",
      "enable_channel_loss enable_dft_loss mrl_dims label_smoothing_factor", differs=True)
_note(TRAIN, "training stops after --num_train_epochs or --max_steps", "max_epochs", differs=True)
_note(TRAIN, "--tuner_type is lora, qlora or full here; these configure ms-swift's other tuners",
      "adalora_target_r adalora_init_r adalora_tinit adalora_tfinal adalora_deltaT adalora_beta1 adalora_beta2 "
      "adalora_orth_reg_weight adapter_act adapter_length boft_block_size boft_block_num boft_n_butterfly_factor "
      "boft_dropout fourier_n_frequency fourier_scaling llamapro_num_new_blocks llamapro_num_groups lora_ga_batch_size "
      "lora_ga_iters lora_ga_max_length lora_ga_direction lora_ga_scale lora_ga_stable_gamma reft_layer_key "
      "reft_layers reft_rank reft_intervention_type reft_args vera_rank vera_projection_prng_key vera_dropout "
      "vera_d_initial")
_note(COMMANDS, "adapters are JAX parameter trees (PEFT's format on disk); there is no peft/unsloth backend",
      "tuner_backend use_swift_lora")
_note(INFER + EXPORT, "the model's task is causal language modelling here (sft trains --task_type "
      "seq_cls; a classifier's checkpoint loads with its score head)", "task_type num_labels problem_type", differs=True)
_note(INFER, "reranker heads are not implemented", "reranker_use_activation")
_note(COMMANDS, "ms-swift's model_kwargs set model-specific environment variables; use the named flags "
      "(--max_pixels, ...)", "model_kwargs", differs=True)
_note(COMMANDS, "weights missing from a checkpoint are an error here, not initialised", "init_strategy", differs=True)
_note(TRAIN, "the KV cache is used by generation only", "use_cache")
_note(TRAIN + INFER, "bitsandbytes, HQQ, EETQ and quanto bases are not read; --tuner_type qlora quantizes the frozen "
      "base with qwix (--quant_bits), and export writes rtn/gptq/fp8", "quant_method", differs=True)
_note(TRAIN + INFER, "options of ms-swift's bitsandbytes/HQQ loading (--quant_method)",
      "bnb_4bit_compute_dtype bnb_4bit_quant_type bnb_4bit_use_double_quant bnb_4bit_quant_storage hqq_axis")
_note(EXPORT, "options of ms-swift's bitsandbytes/HQQ loading; export quantizes with --quant_method rtn|gptq|fp8",
      "bnb_4bit_compute_dtype bnb_4bit_quant_type bnb_4bit_use_double_quant bnb_4bit_quant_storage hqq_axis")
_note(INFER, "quantized checkpoints are read from their config.json (--quant_bits belongs to training and export)",
      "quant_bits")
_note(COMMANDS, "Ray placement is not used; one JAX process per host runs the mesh", "use_ray ray_exp_name device_groups")

# -- RLHF methods and GRPO variants not implemented here. ------------------------------------------------------
_note(("rlhf",), "options of --rlhf_type ppo, which is not implemented",
      "cliprange cliprange_value gamma kl_coef lam local_rollout_forward_batch_size missing_eos_penalty "
      "num_mini_batches num_ppo_epochs num_sample_generations response_length vf_coef whiten_rewards")
_note(("rlhf",), "options of --rlhf_type gkd (a teacher model), which is not implemented",
      "gkd_logits_topk lmbda seq_kd sft_alpha teacher_model teacher_adapters teacher_model_type teacher_model_server "
      "offload_teacher_model teacher_kl_coef teacher_tag_key")
_note(("rlhf",), "the reference and reward models are read from their folders' config.json",
      "ref_model_type reward_model_type")
_note(("rlhf",), "reward models are value-head checkpoints (--reward_model) with their own template; LoRA reward "
      "adapters and a separate reward template are not implemented", "reward_adapters reward_template", differs=True)
_note(("rlhf",), "this GRPO variant is not implemented here",
      "advantage_reweight chord_sft_dataset chord_sft_per_device_train_batch_size chord_enable_phi_function "
      "chord_mu_warmup_steps chord_mu_decay_steps chord_mu_peak chord_mu_valley rlsd_lambda rlsd_lambda_warmup_steps "
      "rlsd_lambda_decay_steps rlsd_negative_only rlsd_reweight_clip_range fipo_clip_range fipo_clip_high_only "
      "fipo_decay_rate fipo_safety_threshold sdar_loss_coef sdar_gate_beta tau_pos tau_neg real_tau "
      "off_policy_sequence_mask_delta rollout_importance_sampling_mode top_entropy_quantile sync_ref_model "
      "reward_model_plugin multi_turn_scheduler max_turns gym_env use_gym_env", differs=True)
_note(("rlhf",), "options of GRPO variants that are not implemented here",
      "rollout_importance_sampling_threshold ref_model_mixup_alpha ref_model_sync_steps completion_length_limit_scope "
      "log_entropy log_rollout_offpolicy_metrics num_generations_eval")
_note(("rlhf",), "one generation phase per optimizer step: every rollout batch is trained on once per "
      "--num_iterations", "steps_per_generation generation_batch_size", differs=True)
_note(("rlhf",), "sampling keeps --top_k and --top_p; min-p is not implemented", "min_p", differs=True)

# -- Generation engines (issue 29): rollouts and inference run on the JAX engine. ------------------------------
_ENGINE = "generation runs on the JAX engine on the run's own devices (issue 29: --infer_backend and the vllm_* options)"
_note(("rlhf",) + INFER, _ENGINE,
      "vllm_gpu_memory_utilization vllm_tensor_parallel_size vllm_pipeline_parallel_size vllm_data_parallel_size "
      "vllm_enable_expert_parallel vllm_max_num_seqs vllm_max_model_len vllm_disable_custom_all_reduce "
      "vllm_enforce_eager vllm_limit_mm_per_prompt vllm_max_lora_rank vllm_enable_prefix_caching "
      "vllm_use_async_engine vllm_quantization vllm_reasoning_parser vllm_disable_cascade_attn "
      "vllm_mm_processor_cache_gb vllm_speculative_config vllm_engine_kwargs")
_note(("rlhf",), _ENGINE,
      "use_vllm vllm_mode vllm_enable_lora vllm_server_host vllm_server_port vllm_server_base_url vllm_server_timeout "
      "vllm_server_group_port vllm_server_pass_dataset async_generate sleep_level offload_model offload_optimizer "
      "move_model_batches enable_flattened_weight_sync")
_note(INFER, _ENGINE,
      "infer_backend lmdeploy_tp lmdeploy_session_len lmdeploy_cache_max_entry_count lmdeploy_quant_policy "
      "lmdeploy_vision_batch_size sglang_tp_size sglang_pp_size sglang_dp_size sglang_ep_size sglang_enable_ep_moe "
      "sglang_mem_fraction_static sglang_context_length sglang_disable_cuda_graph sglang_quantization "
      "sglang_kv_cache_dtype sglang_enable_dp_attention sglang_disable_custom_all_reduce sglang_speculative_algorithm "
      "sglang_speculative_num_steps sglang_speculative_eagle_topk sglang_speculative_num_draft_tokens")

# -- Inference, deployment and evaluation. ---------------------------------------------------------------------
_note(INFER, "a training data option: it has no effect here (as in ms-swift's inference)", "data_seed strict")
_note(INFER + EXPORT, "a training data option: it has no effect here (as in ms-swift's inference)",
      "dataset_num_proc dataset_shuffle val_dataset_shuffle shuffle_buffer_size streaming "
      "model_name model_author loss_scale is_binary_loss_scale disable_ignore_empty_think packing tuner_type "
      "sequence_parallel_size lazy_tokenize packing_num_proc remove_unused_columns load_from_cache_file "
      "disable_auto_column_mapping decision_drop_instructions decision_shuffle_fields decision_state_as_text "
      "decision_subsample_options padding_side packing_length padding_free")
_note(INFER, "pass the rows to answer as --val_dataset (ms-swift answers the held-out split of --dataset)",
      "dataset split_dataset_ratio", differs=True)
_note(("infer", "deploy"), "prompts are not truncated: a prompt longer than the model's context is an error",
      "max_length", differs=True)
_note(INFER, "prompts are not truncated: a prompt longer than the model's context is an error",
      "truncation_strategy", differs=True)
_note(INFER, "prompts are always rendered with the chat template (--template, else the tokenizer's)",
      "use_chat_template", differs=True)
_note(INFER, "images are sized by the model's image processor", "max_pixels", differs=True)
_note(EXPORT, "export does not sample", "seed")
_note(INFER, "results are written as they are generated", "write_batch_size")
_note(INFER, "no metric summary is printed after infer; the results (with each row's reference) are in --result_path",
      "metric")
_note(INFER, "token log-probabilities are not returned", "logprobs top_logprobs", differs=True)
_note(("deploy", "eval"), "token log-probabilities are not returned", "max_logprobs")
_note(("deploy", "eval"), "every process logs through the main one", "log_level")
_note(("deploy", "eval"), "the server is plain HTTP on --host/--port without authentication; put a proxy in front "
      "for TLS or API keys", "api_key ssl_certfile ssl_keyfile", differs=True)
_note(("deploy", "eval"), "the server's request log is not summarised", "log_interval verbose owned_by")
_note(("eval",), "eval runs the model in process; there is no server", "host port served_model_name")
_note(("eval",), "tasks are the jsonl files of --eval_dataset, scored in process; evalscope, OpenCompass and "
      "VLMEvalKit backends (issue: evaluation backends) are not used", "eval_backend eval_url local_dataset",
      differs=True)
_note(("eval",), "the results go to --result_path", "eval_output_dir eval_num_proc")
_note(("eval",), "the rows to score are --eval_dataset's", "val_dataset val_dataset_sample cached_dataset cached_val_dataset")
_note(("infer", "deploy"), "only the validation part of cached datasets is read (--cached_val_dataset), as ms-swift's "
      "infer reads them", "cached_dataset")
_note(EXPORT, "Megatron-Core and Ollama conversions are not implemented (export writes HF, PEFT, quantized and "
      "cached-dataset folders)", "to_mcore to_hf mcore_model mcore_adapter to_ollama", differs=True)
_note(EXPORT, "--to_cached_dataset caches the rows of --dataset / --val_dataset; cached folders are read by training",
      "cached_dataset cached_val_dataset", differs=True)
_note(EXPORT, "options of the Megatron conversion (--to_mcore), which is not implemented",
      "test_convert_precision test_convert_dtype thread_count save_missing_weights")

# -- Generation, loss and saving settings a command has no use for. --------------------------------------------
_note(("sft", "pt"), "prediction after training (--num_predict_samples) decodes greedily",
      "temperature top_k top_p repetition_penalty stop_words stream logprobs top_logprobs")
_note(("rlhf",), "rollouts generate up to --max_completion_length tokens with --temperature, --top_k, --top_p",
      "max_new_tokens stream logprobs top_logprobs")
_note(("rlhf",), "rollouts stop at the eos and the template's stop words", "stop_words", differs=True)
_note(COMMANDS, "regex-structured outputs are not implemented", "structured_outputs_regex", differs=True)
_note(TRAIN, "checkpoints are orbax folders plus the PEFT adapter or HF safetensors; export shards with --max_shard_size",
      "max_shard_size safe_serialization")
_note(INFER, "options of --merge_lora (merged weights are safetensors)", "max_shard_size safe_serialization")
_note(TRAIN, "samples are packed first-fit by the grain pipeline (--packing)", "packing_strategy", differs=True)
_note(INFER + EXPORT, "a packing option: no effect here", "packing_strategy")
_note(("eval",), "eval's generation settings are the flags (--max_new_tokens, --temperature, ...); evalscope's "
      "dataset and extra arguments are not used", "eval_generation_config eval_dataset_args extra_eval_args", differs=True)
_note(("eval",), "eval prints its table when every task is scored", "stream")
_note(EXPORT, "export does not generate", "max_new_tokens temperature top_k top_p repetition_penalty stop_words stream "
      "logprobs top_logprobs max_pixels num_beams")
_note(TRAIN, "it configures ms-swift's --predict_with_generate evaluation (see that flag); prediction after training "
      "decodes greedily and rollouts sample", "num_beams")
_note(("eval",), "adapters are applied unmerged, which gives the same answers as merging them first", "merge_lora")

MAPPED: dict[tuple[str, ...], dict[str, str]] = {
    ("sft", "pt"): {"max_new_tokens": "predict_max_new_tokens", "loss_type": "task_loss_type"},
}
"""ms-swift names that are a field of another name here, per command group."""

PARSER_FLAGS = ("ignore_args_error", "external_plugins")
"""Handled by `swift_jax.cli.parse_config` itself (where no field of the command has the name)."""


def command_classes(command: str) -> list[type]:
    """The argument dataclasses a command parses (rlhf: the preference group's and GRPO's)."""
    from swift_jax.config import TrainArguments

    if command in ("sft", "pt"):
        return [TrainArguments]
    if command == "rlhf":
        from swift_jax.rlhf.__main__ import GRPOArguments, RLHFArguments

        return [RLHFArguments, GRPOArguments]
    if command in EXPORT:
        from swift_jax.export import ExportArgs

        return [ExportArgs]
    from swift_jax.deploy import DeployArgs
    from swift_jax.eval import EvalArgs
    from swift_jax.infer import InferArgs

    return [{"infer": InferArgs, "deploy": DeployArgs, "eval": EvalArgs}[command]]


def notes_for(command: str) -> dict[str, Note]:
    """name -> Note for the ms-swift arguments of `command` that are no field here."""
    out: dict[str, Note] = {}
    for commands, reason, differs, names in _GROUPS:
        if command in commands:
            for name in names.split():
                if name in out:
                    raise AssertionError(f"{command}: --{name} has two notes ({out[name].reason!r} and {reason!r})")
                out[name] = Note(reason, differs)
    return out


def aliases_for(command: str) -> dict[str, str]:
    """ms-swift name -> field name for `command` (beside the 3.x names of `swift_jax.config.ALIASES`)."""
    return {k: v for commands, table in MAPPED.items() if command in commands for k, v in table.items()}
