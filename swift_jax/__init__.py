"""swift_jax: SWIFT (Scalable lightWeight Infrastructure for Fine-Tuning) in JAX.

Fine-tune, evaluate, quantize and export Hugging Face LLMs with Flax NNX on TPUs, GPUs and CPUs.
"""

import importlib

__all__ = ["load_model", "init_model", "save_pretrained", "load_tokenizer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The public API, imported on first use: a command imports only the modules its run needs."""
    if name in __all__:
        return getattr(importlib.import_module(".modeling", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
