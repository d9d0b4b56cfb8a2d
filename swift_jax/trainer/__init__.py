"""Training: the trainer (loop, checkpoints, logs), the method seam, train/eval steps, loss, optimizer.

    from swift_jax.trainer import Trainer, Method, LossOutput
    Trainer(args, method).train()       # method=None: SFT (or pre-training with --use_chat_template false)
"""

import importlib

_EXPORTS = {
    "Trainer": ".trainer",
    "Method": ".method",
    "LossOutput": ".method",
    "LanguageModeling": ".method",
    "mean_metric": ".method",
    "TrainState": ".step",
    "make_eval_step": ".step",
    "make_train_step": ".step",
    "split_model": ".step",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
