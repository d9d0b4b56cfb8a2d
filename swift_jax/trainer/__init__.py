"""Training: train state and steps, chunked loss, optimizer and schedules, checkpoints, logs."""

from .step import TrainState, make_eval_step, make_train_step, split_model

__all__ = ["TrainState", "make_eval_step", "make_train_step", "split_model"]
