"""swift_jax: SWIFT (Scalable lightWeight Infrastructure for Fine-Tuning) in JAX.

Fine-tune, evaluate, quantize and export Hugging Face LLMs with Flax NNX on TPUs, GPUs and CPUs.
"""

from .modeling import init_model, load_model, load_tokenizer, save_pretrained

__all__ = ["load_model", "init_model", "save_pretrained", "load_tokenizer"]
__version__ = "0.1.0"
