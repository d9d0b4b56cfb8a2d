"""`--reward_model`: a trained reward model (`swift-jax rlhf --rlhf_type rm`) as a GRPO reward function.

As ms-swift's GRPO reward models: the prompt's messages plus the completion as the assistant turn are encoded
with the reward model's own tokenizer and template (the one it was trained with, from its args.json), and
its value head's output at the last token is the reward. Rows are right-padded to a multiple of 64 tokens
(left-truncated beyond `max_length`), so scoring compiles once per width.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PAD_MULTIPLE = 64


@functools.partial(jax.jit, static_argnums=(0,))
def _last_token_scores(graphdef, state, ids, lengths):
    """`[rows]` value-head outputs at each row's last real token. ids: `[rows, width]` right-padded."""
    model = nnx.merge(graphdef, state)
    model.eval()
    width = ids.shape[1]
    mask = (jnp.arange(width)[None] < lengths[:, None]).astype(jnp.int32)  # [rows, width]
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), ids.shape)
    hidden = model.hidden_states(ids, positions=positions, segment_ids=mask)  # [rows, width, embed]
    values = model.score(hidden)  # [rows, width]
    return jnp.take_along_axis(values, (lengths - 1)[:, None], axis=1)[:, 0]


class ModelReward:
    """A reward function scoring (prompt messages, completion) with a value-head checkpoint; logs under the
    checkpoint folder's name (`rewards/{name}/mean`), as ms-swift names a reward model by its path."""

    def __init__(self, path: str, *, max_length: int | None = None, dtype: str | None = None, batch_size: int = 64):
        import swift_jax
        from swift_jax.data.frontend import chat_encoder, trained_template_args
        from swift_jax.tuners.value_head import has_value_head

        self.model = swift_jax.load_model(path, dtype=dtype)
        if not has_value_head(self.model):
            raise ValueError(
                f"--reward_model {path}: the checkpoint has no value head (score.weight); train one with "
                "`swift-jax rlhf --rlhf_type rm --tuner_type full` (or export a LoRA one merged) and pass that folder"
            )
        self.encoder = chat_encoder(swift_jax.load_tokenizer(path), **trained_template_args(path))
        self.name = os.path.basename(os.path.normpath(path))
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, messages: list[dict], completion: str) -> list[int]:
        """Token ids of the conversation with `completion` as the last assistant turn (left-truncated)."""
        ids = self.encoder.encode({"messages": [*messages, {"role": "assistant", "content": completion}]}).input_ids.tolist()
        return ids[-self.max_length :] if self.max_length else ids

    def __call__(self, completions: list[str], messages: list[list[dict]], **kwargs) -> list[float]:
        return last_token_scores(self.model, [self.encode(list(m), c) for m, c in zip(messages, completions)], self.batch_size)


def last_token_scores(model: nnx.Module, encoded: list[list[int]], batch_size: int = 64) -> list[float]:
    """The value head's output at the last token of each token-id sequence: a reward model's scores (GRPO's
    `--reward_model`, and infer / deploy of a reward model, as ms-swift's seq_cls inference returns them)."""
    width = max(PAD_MULTIPLE, -(-max(map(len, encoded)) // PAD_MULTIPLE) * PAD_MULTIPLE)
    graphdef, state = nnx.split(model)
    scores = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        ids = np.zeros((batch_size, width), np.int32)  # a fixed row count: one program per width
        lengths = np.ones(batch_size, np.int32)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)], lengths[row] = seq, len(seq)
        scores += np.asarray(_last_token_scores(graphdef, state, ids, lengths))[: len(chunk)].tolist()
    return scores
