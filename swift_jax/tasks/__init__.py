"""Task types beyond causal language modelling (`--task_type`): sequence classification, embeddings, rerankers."""


def task_method(task, model_config):
    """The training method of `task` (`TaskArgs`, validated), or None for causal_lm (SFT / pre-training)."""
    if task.task_type == "seq_cls":
        from swift_jax.tasks.seq_cls import make_method

        return make_method(task, model_config)
    if task.task_type == "embedding":
        from swift_jax.tasks.embedding import Embedding

        return Embedding(task.task_loss_type)
    if task.task_type == "reranker":
        from swift_jax.tasks.reranker import Reranker

        return Reranker(task.task_loss_type)
    return None
