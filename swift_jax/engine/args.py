"""How infer, deploy and eval size the engine: ms-swift's `--infer_backend` and its backends' options.

Every backend name (`pt`, `transformers`, `vllm`, `sglang`, `lmdeploy`) runs this engine. The backends' options
with a meaning here are other names of the engine's (`BACKEND_NAMES`, in `swift_jax.ms_swift_args.MAPPED`):

| engine                    | vLLM                          | SGLang                       | LMDeploy                          |
|---------------------------|-------------------------------|------------------------------|-----------------------------------|
| `max_model_len`           | `vllm_max_model_len`          | `sglang_context_length`      | `lmdeploy_session_len`            |
| `gpu_memory_utilization`  | `vllm_gpu_memory_utilization` | `sglang_mem_fraction_static` | `lmdeploy_cache_max_entry_count`  |
| `tensor_parallel_size`    | `vllm_tensor_parallel_size`   | `sglang_tp_size`             | `lmdeploy_tp`                     |
| `max_num_seqs`            | `vllm_max_num_seqs`           |                              |                                   |
| `enable_prefix_caching`   | `vllm_enable_prefix_caching`  |                              |                                   |

The others are accepted with one line naming them (`swift_jax.ms_swift_args`).
"""

from __future__ import annotations

import dataclasses

BACKENDS = ("pt", "transformers", "vllm", "sglang", "lmdeploy")
BACKEND_NAMES = {
    "vllm_max_model_len": "max_model_len", "sglang_context_length": "max_model_len", "lmdeploy_session_len": "max_model_len",
    "vllm_gpu_memory_utilization": "gpu_memory_utilization", "sglang_mem_fraction_static": "gpu_memory_utilization",
    "lmdeploy_cache_max_entry_count": "gpu_memory_utilization",
    "vllm_tensor_parallel_size": "tensor_parallel_size", "sglang_tp_size": "tensor_parallel_size", "lmdeploy_tp": "tensor_parallel_size",
    "vllm_max_num_seqs": "max_num_seqs", "vllm_enable_prefix_caching": "enable_prefix_caching",
}
"""ms-swift's backend option -> the engine argument it sets."""


@dataclasses.dataclass
class EngineArgs:
    """The generation engine's size (ms-swift's inference backend arguments, one engine behind them all)."""

    infer_backend: str = "pt"
    """pt | transformers | vllm | sglang | lmdeploy: ms-swift's backends; all run swift_jax's engine."""
    max_num_seqs: int | None = None
    """Sequences generated at once (engine slots). Default: --max_batch_size; fewer when --gpu_memory_utilization
    cannot hold them. Each holds --max_model_len tokens, prompt and response (default: the model's
    max_position_embeddings, at most 4096)."""
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

    def resolve(self) -> "EngineArgs":
        """These arguments, the backend checked."""
        if self.infer_backend not in BACKENDS:
            raise ValueError(f"--infer_backend {self.infer_backend!r}: expected one of {', '.join(BACKENDS)} (all run swift_jax's engine)")
        return self

    @property
    def engine_max_model_len(self) -> int | None:
        """--max_model_len (a field of ModelArgs, which the commands that build an engine also inherit)."""
        return getattr(self, "max_model_len", None)

    def generator(self, model, tokenizer, *, max_batch_size: int = 16, adapters=None):
        """A `Generator` for infer / eval: on the engine these arguments size when --max_model_len (or a backend's
        name of it) is given, else on one that sizes its slots for each call's prompts and max_new_tokens."""
        from swift_jax.generation import Generator

        a = self.resolve()
        slots = a.max_num_seqs or max_batch_size
        if a.engine_max_model_len is None and not adapters:
            return Generator(model, tokenizer, max_batch_size=slots)
        engine = self.build_engine(model, tokenizer, max_batch_size=max_batch_size, adapters=adapters)
        return Generator(model, tokenizer, max_batch_size=slots, engine=engine)

    def build_engine(self, model, tokenizer, *, max_batch_size: int = 16, adapters=None, max_queue_size=None):
        """The engine these arguments describe, its slots capped by the memory budget."""
        from swift_jax.engine.core import Engine

        a = self.resolve()
        max_model_len = a.engine_max_model_len or min(int(model.config.hf_config.get("max_position_embeddings") or 4096), 4096)
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
