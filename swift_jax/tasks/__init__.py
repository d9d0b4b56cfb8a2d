"""Task types beyond causal language modelling (`--task_type`): sequence classification and embeddings."""
