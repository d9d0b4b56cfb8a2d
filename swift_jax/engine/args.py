"""How infer, deploy and eval size the engine: ms-swift's `--infer_backend` and its backends' options.

Every backend name (`pt`, `transformers`, `vllm`, `sglang`, `lmdeploy`) runs this engine. The backends'
options with a meaning here are mapped onto the engine's (`resolve`):

| engine                    | vLLM                          | SGLang                       | LMDeploy                          |
|---------------------------|-------------------------------|------------------------------|-----------------------------------|
| `max_model_len`           | `vllm_max_model_len`          | `sglang_context_length`      | `lmdeploy_session_len`            |
| `gpu_memory_utilization`  | `vllm_gpu_memory_utilization` | `sglang_mem_fraction_static` | `lmdeploy_cache_max_entry_count`  |
| `tensor_parallel_size`    | `vllm_tensor_parallel_size`   | `sglang_tp_size`             | `lmdeploy_tp`                     |
| `max_num_seqs`            | `vllm_max_num_seqs`, `max_batch_size` |                      |                                   |
| `enable_prefix_caching`   | `vllm_enable_prefix_caching`  |                              |                                   |

The others (`BACKEND_IGNORED`) are accepted with one line naming them.
"""

from __future__ import annotations

import dataclasses

BACKENDS = ("pt", "transformers", "vllm", "sglang", "lmdeploy")
_WHY = "a vLLM/SGLang/LMDeploy engine option with no counterpart in swift_jax's engine (it runs every --infer_backend)"
BACKEND_IGNORED = {name: _WHY for name in (
    "vllm_pipeline_parallel_size", "vllm_enable_expert_parallel", "vllm_disable_custom_all_reduce", "vllm_enforce_eager",
    "vllm_limit_mm_per_prompt", "vllm_max_lora_rank", "vllm_use_async_engine", "vllm_quantization", "vllm_reasoning_parser",
    "vllm_disable_cascade_attn", "vllm_mm_processor_cache_gb", "vllm_speculative_config", "vllm_engine_kwargs",
    "vllm_data_parallel_size", "vllm_enable_lora",
    "sglang_pp_size", "sglang_dp_size", "sglang_ep_size", "sglang_enable_ep_moe", "sglang_disable_cuda_graph",
    "sglang_quantization", "sglang_kv_cache_dtype", "sglang_enable_dp_attention", "sglang_disable_custom_all_reduce",
    "sglang_speculative_algorithm", "sglang_speculative_num_steps", "sglang_speculative_eagle_topk",
    "sglang_speculative_num_draft_tokens",
    "lmdeploy_quant_policy", "lmdeploy_vision_batch_size",
)}


@dataclasses.dataclass
class EngineArgs:
    """The generation engine's size (ms-swift's inference backend arguments, one engine behind them all)."""

    infer_backend: str = "pt"
    """pt | transformers | vllm | sglang | lmdeploy: ms-swift's backends; all run swift_jax's engine."""
    max_num_seqs: int | None = None
    """Sequences generated at once (engine slots). Default: --max_batch_size; fewer when --gpu_memory_utilization
    cannot hold them."""
    max_model_len: int | None = None
    """Tokens per sequence, prompt and response. Default: the model's max_position_embeddings, at most 4096."""
    gpu_memory_utilization: float = 0.9
    """Fraction of the accelerator's memory the parameters and the KV cache may take (the cache gets what the
    parameters leave); ignored where the device reports no memory limit (CPU)."""
    prefill_chunk_size: int = 512
    """Prompt tokens written per sequence and engine step: a long prompt is prefilled in chunks between the
    decode steps of running requests."""
    enable_prefix_caching: bool = True
    """A request whose prompt equals one still in a slot copies that slot's cache instead of prefilling."""
    tensor_parallel_size: int = 1
    """Shard the model over this many devices (the mesh's tensor axis)."""
    vllm_max_model_len: int | None = None
    """ms-swift's vLLM name of --max_model_len."""
    vllm_gpu_memory_utilization: float | None = None
    """ms-swift's vLLM name of --gpu_memory_utilization."""
    vllm_tensor_parallel_size: int | None = None
    """ms-swift's vLLM name of --tensor_parallel_size."""
    vllm_max_num_seqs: int | None = None
    """ms-swift's vLLM name of --max_num_seqs."""
    vllm_enable_prefix_caching: bool | None = None
    """ms-swift's vLLM name of --enable_prefix_caching."""
    sglang_context_length: int | None = None
    """SGLang's name of --max_model_len."""
    sglang_mem_fraction_static: float | None = None
    """SGLang's name of --gpu_memory_utilization."""
    sglang_tp_size: int | None = None
    """SGLang's name of --tensor_parallel_size."""
    lmdeploy_session_len: int | None = None
    """LMDeploy's name of --max_model_len."""
    lmdeploy_cache_max_entry_count: float | None = None
    """LMDeploy's name of --gpu_memory_utilization (its fraction is of the free memory, ours of the whole)."""
    lmdeploy_tp: int | None = None
    """LMDeploy's name of --tensor_parallel_size."""

    def resolve(self) -> "EngineArgs":
        """These arguments with the backend names folded into the engine's (an engine name given explicitly
        wins), the backend checked."""
        if self.infer_backend not in BACKENDS:
            raise ValueError(f"--infer_backend {self.infer_backend!r}: expected one of {', '.join(BACKENDS)} (all run swift_jax's engine)")
        pick = lambda own, default, *names: own if own != default else next((v for v in names if v is not None), own)
        return dataclasses.replace(
            self,
            max_num_seqs=pick(self.max_num_seqs, None, self.vllm_max_num_seqs),
            max_model_len=pick(self.max_model_len, None, self.vllm_max_model_len, self.sglang_context_length, self.lmdeploy_session_len),
            gpu_memory_utilization=pick(self.gpu_memory_utilization, 0.9, self.vllm_gpu_memory_utilization,
                                        self.sglang_mem_fraction_static, self.lmdeploy_cache_max_entry_count),
            tensor_parallel_size=pick(self.tensor_parallel_size, 1, self.vllm_tensor_parallel_size, self.sglang_tp_size, self.lmdeploy_tp),
            enable_prefix_caching=pick(self.enable_prefix_caching, True, self.vllm_enable_prefix_caching),
        )

    def generator(self, model, tokenizer, *, max_batch_size: int = 16, adapters=None):
        """A `Generator` for infer / eval: on the engine these arguments size when --max_model_len (or a backend's
        name of it) is given, else on one that sizes its slots for each call's prompts and max_new_tokens."""
        from swift_jax.generation import Generator

        a = self.resolve()
        slots = a.max_num_seqs or max_batch_size
        if a.max_model_len is None and not adapters:
            return Generator(model, tokenizer, max_batch_size=slots)
        engine = self.build_engine(model, tokenizer, max_batch_size=max_batch_size, adapters=adapters)
        return Generator(model, tokenizer, max_batch_size=slots, engine=engine)

    def build_engine(self, model, tokenizer, *, max_batch_size: int = 16, adapters=None, max_queue_size=None):
        """The engine these arguments describe, its slots capped by the memory budget."""
        from swift_jax.engine.core import Engine

        a = self.resolve()
        max_model_len = a.max_model_len or min(int(model.config.hf_config.get("max_position_embeddings") or 4096), 4096)
        slots = fit_slots(model, a.max_num_seqs or max_batch_size, max_model_len, a.gpu_memory_utilization)
        return Engine(model, tokenizer, max_num_seqs=slots, max_model_len=max_model_len, prefill_chunk=a.prefill_chunk_size,
                      max_queue_size=max_queue_size, adapters=adapters, prefix_caching=a.enable_prefix_caching)


def fit_slots(model, wanted: int, max_model_len: int, fraction: float) -> int:
    """How many of `wanted` slots of `max_model_len` tokens fit in `fraction` of the device's memory once the
    parameters are in; `wanted` where the device reports no limit (CPU)."""
    import jax

    from swift_jax.engine.slots import slot_bytes

    if not 0 < fraction <= 1:
        raise ValueError(f"--gpu_memory_utilization {fraction}: expected a fraction in (0, 1]")
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:
        return wanted
    room = fraction * limit - stats.get("bytes_in_use", 0)
    per_slot = slot_bytes(model.config, max_model_len, model.config.vocab_size) // max(jax.device_count(), 1)
    fits = int(room // max(per_slot, 1))
    if fits < 1:
        raise ValueError(f"one sequence of --max_model_len {max_model_len} needs {per_slot / 2**20:.0f} MiB of cache, but "
                         f"--gpu_memory_utilization {fraction} leaves {max(room, 0) / 2**20:.0f} MiB after the parameters: "
                         f"lower --max_model_len or raise --gpu_memory_utilization")
    if fits < wanted:
        print(f"[INFO] the KV cache holds {fits} sequences of {max_model_len} tokens in --gpu_memory_utilization {fraction} "
              f"(asked: {wanted})", flush=True)
    return min(fits, wanted)
