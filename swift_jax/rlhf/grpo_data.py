"""GRPO's prompt rows: chat prompts (the trailing assistant message dropped, as ms-swift) encoded once,
left-padded to the run's prompt width, each repeated `num_generations` times (ms-swift's RepeatSampler)."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from swift_jax.data.errors import BadRows, DataError, row_error
from swift_jax.data.formats import MESSAGE_KEYS, normalize
from swift_jax.data.resolve import LoadOptions
from swift_jax.data.sources import load_table
from swift_jax.infer import encode_chat

from .dynamic_sampling import Round, concat_rounds, take_rows
from .rollout import pad_prompts, prompt_length


def prompt_messages(row: dict, where: str) -> list[dict]:
    """The row's messages without a trailing assistant message (its answer is what GRPO samples)."""
    messages = row.get("messages")
    if not messages:
        raise row_error(where, "has no 'messages'", "GRPO rows are chats: {'messages': [{'role': 'user', 'content': ...}], 'solution': ...}")
    if messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    if not messages:
        raise row_error(where, "has only an assistant message", "give the prompt as a user message")
    return list(messages)


def load_prompt_rows(specs: list[str], *, seed: int = 42, strict: bool = True, options: LoadOptions = LoadOptions()) -> list[dict]:
    """`--dataset` rows as `{"messages": [...], **extra columns}` (any format ms-swift reads; columns such as
    `solution` stay, for the reward functions), read with `options`. A bad row raises naming its file and line."""
    table, bad = load_table(specs, seed, BadRows(strict), options), BadRows(strict)
    rows = []
    for i in range(len(table)):
        raw, ref = table[i]
        try:
            chat = normalize(raw)
            if "messages" not in chat:
                raise DataError("is plain text; GRPO needs a prompt (messages, or query/prompt/problem columns)")
        except DataError as e:
            bad.handle(row_error(ref, str(e)))
            continue
        rows.append({**{k: v for k, v in raw.items() if k not in MESSAGE_KEYS}, "messages": chat["messages"]})
    return rows


def encode_prompts(rows: Sequence[dict], tokenizer, *, max_length: int | None = None, name: str = "dataset") -> tuple[list[list[int]], int]:
    """`(token ids per prompt, prompt width)`: the chat template with the generation prompt appended; the
    width is the longest prompt (at most `max_length`) rounded up to 64, so the rollout compiles once."""
    encoded = []
    for i, row in enumerate(rows):
        messages = prompt_messages(row, f"{name} row {i}")
        encoded.append(encode_chat(tokenizer, messages))  # as inference and the held-out prediction encode it
    return encoded, prompt_length(max(map(len, encoded)), max_length)


def prompt_round(rows: Sequence[dict], encoded: Sequence[Sequence[int]], width: int, num_generations: int, max_length: int | None = None) -> Round:
    """The rows as one round: `prompt_ids`/`prompt_mask` `[rows x G, width]` plus each extra column (e.g.
    `solution`) and the prompt's `messages` (for `--reward_model`) as object arrays, every prompt repeated
    `num_generations` times in a row."""
    ids, mask = pad_prompts(encoded, width, max_length)
    out: Round = {"prompt_ids": np.repeat(ids, num_generations, 0), "prompt_mask": np.repeat(mask, num_generations, 0)}
    columns = {key: [r.get(key) for r in rows] for key in sorted({k for r in rows for k in r if k != "messages"})}
    columns["messages"] = [prompt_messages(r, f"row {i}") for i, r in enumerate(rows)]
    for key, values in columns.items():
        column = np.empty(len(rows), dtype=object)
        for i, v in enumerate(values):  # element-wise: a list value stays one object
            column[i] = v
        out[key] = np.repeat(column, num_generations, 0)
    return out


class PromptBatches:
    """Micro-batches of `batch_size` completion rows (prompts x `num_generations`) over shuffled epochs."""

    def __init__(
        self,
        rows: Sequence[dict],
        tokenizer,
        *,
        num_generations: int,
        batch_size: int,
        max_length: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if process_count > 1 and batch_size % num_generations:
            raise ValueError(
                f"with {process_count} processes, per_device_train_batch_size ({batch_size}) must be a multiple of "
                f"num_generations ({num_generations}) so that each process scores whole prompt groups"
            )
        self.process_index, self.process_count = process_index, process_count
        encoded, self.width = encode_prompts(rows, tokenizer, max_length=max_length)
        self.round = prompt_round(rows, encoded, self.width, num_generations, max_length)
        self.num_generations, self.batch_size, self.seed, self.shuffle = num_generations, batch_size, seed, shuffle
        self.num_prompts = len(rows)
        self.steps_per_epoch = self.num_prompts * num_generations // (batch_size * process_count)
        self.stats = {"prompts": self.num_prompts, "prompt_width": self.width}

    def batches(self, num_epochs: int | None = None) -> Iterator[dict]:
        """Host batches in order; a prompt's repeats never split across epochs (whole prompts are shuffled)."""
        epoch, pending = 0, []
        while num_epochs is None or epoch < num_epochs:
            order = np.arange(self.num_prompts)
            if self.shuffle:
                order = np.random.default_rng(self.seed + epoch).permutation(self.num_prompts)
            rows = (order[:, None] * self.num_generations + np.arange(self.num_generations)).reshape(-1)
            pending.append(take_rows(self.round, rows))
            stream = concat_rounds(pending)
            chunk = self.batch_size * self.process_count  # one micro-batch of every process
            usable = len(stream["prompt_ids"]) // chunk * chunk
            for i in range(0, usable, chunk):
                start = i + self.process_index * self.batch_size
                yield take_rows(stream, slice(start, start + self.batch_size))
            pending = [take_rows(stream, slice(usable, None))]
            epoch += 1

    def train_iterator(self, num_epochs: int | None = None) -> "PromptIterator":
        """The trainer's view: a checkpointable iterator of host batches."""
        return PromptIterator(self, num_epochs)

    def val_batches(self) -> list[dict]:
        return []


class PromptIterator:
    """`PromptBatches.batches` with `get_state` / `set_state` (the batches taken so far), so a resumed run
    continues the prompt order exactly; the order is a pure function of the seed, so restoring replays it."""

    def __init__(self, source: PromptBatches, num_epochs: int | None):
        self.source, self.num_epochs = source, num_epochs
        self.set_state({"batches": 0})

    def __iter__(self) -> "PromptIterator":
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        self.taken += 1
        return batch

    def get_state(self) -> dict:
        return {"batches": self.taken}

    def set_state(self, state: dict) -> None:
        self._it, self.taken = self.source.batches(self.num_epochs), 0
        for _ in range(int(state.get("batches", 0))):
            next(self)
