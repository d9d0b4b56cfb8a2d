"""DataArgs: the data pipeline's arguments, named and defaulted as in ms-swift (DataArguments, TemplateArguments)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class DataArgs:
    """Which datasets to read, how to render them with a template and how to cut them into batches."""

    dataset: list[str] = dataclasses.field(default_factory=list)
    """Training datasets: local files (.jsonl/.json/.csv/.parquet), folders of them, or hub ids.
    `path#N` takes N samples (with replacement when N exceeds the dataset size)."""
    val_dataset: list[str] = dataclasses.field(default_factory=list)
    """Validation datasets (same syntax as --dataset). When empty, split_dataset_ratio carves one."""
    split_dataset_ratio: float = 0.0
    """Fraction of the training rows held out for validation when no --val_dataset is given."""
    data_seed: int = 42
    """Seed of the dataset shuffle, the #N sampling and the validation split."""
    dataset_num_proc: int = 1
    """Worker threads that read and tokenise samples in the background."""
    dataset_shuffle: bool = True
    """Shuffle the training rows (a new order every epoch)."""
    val_dataset_shuffle: bool = False
    """Shuffle the validation rows."""
    streaming: bool = False
    """Read datasets as streams (never all in memory), shuffled within --shuffle_buffer_size rows."""
    shuffle_buffer_size: int = 1000
    """Rows in the streaming shuffle buffer."""
    strict: bool = True
    """Raise on a malformed row (naming file and line); false skips and counts it. (ms-swift's default is false.)"""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """Rename columns before format detection, e.g. {"prompt_text": "query"}."""

    template: str | None = None
    """Chat template: None uses the tokenizer's own; a built-in name (chatml, llama3) for base-model
    tokenizers without one; or a path to a .jinja file."""
    system: str | None = None
    """Default system prompt for rows that have none (otherwise the template's own default applies)."""
    max_length: int = 2048
    """Tokens per sample (and per packed row); longer samples follow --truncation_strategy."""
    truncation_strategy: Literal["delete", "left", "right"] = "delete"
    """Samples longer than max_length: delete (drop and count), left (keep the end), right (keep the start)."""
    packing: bool = False
    """Pack several samples into each max_length row (segment_ids keep them apart)."""
    packing_num_bins: int = 64
    """Rows filled together by the best-fit packer; more bins, less padding."""
    use_chat_template: bool = True
    """Render `messages` with the chat template (SFT). false (`swift pt`'s default): the last round's query and
    response as plain text plus eos, every token trained; the system prompt is dropped."""
    loss_on_prompt: bool = False
    """Also train on system/user/tool tokens (ms-swift's loss_scale=all)."""
    model_name: list[str] | None = None
    """Self-cognition: fills {{NAME}} in swift/self-cognition rows; zh and en names (one value serves both)."""
    model_author: list[str] | None = None
    """Self-cognition: fills {{AUTHOR}} in swift/self-cognition rows; zh and en authors (one value serves both)."""
