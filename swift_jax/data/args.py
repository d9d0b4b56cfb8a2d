"""DataArgs: the data pipeline's arguments, named and defaulted as in ms-swift (DataArguments, TemplateArguments)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from swift_jax.arguments import TemplateArgs


@dataclasses.dataclass
class DataArgs(TemplateArgs):
    """Which datasets to read, how to render them with a template (TemplateArgs, shared with inference) and how
    to cut them into batches."""

    dataset: list[str] = dataclasses.field(default_factory=list)
    """Training datasets: local files (.jsonl/.json/.csv/.parquet), folders of them, hub ids or ms-swift's
    registered names, as `[hf::|ms::]ID_OR_PATH[:SUBSET1/SUBSET2][#N]`; `#N` takes N samples (the whole set
    N // size times when N exceeds its size, plus a sample of the rest)."""
    val_dataset: list[str] = dataclasses.field(default_factory=list)
    """Validation datasets (same syntax as --dataset). When empty, split_dataset_ratio carves one."""
    interleave_prob: list[float] | None = None
    """Mix the --dataset entries by these probabilities (one per entry; `datasets.interleave_datasets`) instead
    of concatenating them."""
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"
    """With --interleave_prob: stop when the first dataset runs out, or when every one has been read through."""
    cached_dataset: list[str] = dataclasses.field(default_factory=list)
    """Training rows cached by `export --to_cached_dataset true` (its DIR/train folder; ms-swift's load too),
    `PATH#N` sampling N; with --dataset, both are trained on (cached rows first)."""
    cached_val_dataset: list[str] = dataclasses.field(default_factory=list)
    """Validation rows cached by `export --to_cached_dataset true` (its DIR/val folder); added to --val_dataset's."""
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
    loss_scale: str = "default"
    """Which tokens are trained and with what weight: [default|last_round|all+]NAME[+NAME...] with NAME in
    ignore_empty_think, ignore_think_prefix, react, hermes, qwen, agentflan, alpha_umi (ms-swift's
    --loss_scale). Hybrid-thinking templates (qwen3) add +ignore_empty_think unless
    --disable_ignore_empty_think."""
    is_binary_loss_scale: bool | None = None
    """Force (true) or refuse (false) 0/1 token weights; None: decided by --loss_scale, as in ms-swift."""
    disable_ignore_empty_think: bool = False
    """Do not add +ignore_empty_think to --loss_scale for hybrid-thinking templates."""
    max_length: int = 2048
    """Tokens per sample (and per packed row); longer samples follow --truncation_strategy."""
    truncation_strategy: Literal["delete", "left", "right", "split"] = "delete"
    """Samples longer than max_length: delete (drop and count), left (keep the end), right (keep the start), split
    (consecutive max_length pieces, each a sample; ms-swift: for pre-training)."""
    padding_side: Literal["left", "right"] = "right"
    """Where padding goes in unpacked training and eval rows (positions and segment ids keep the result the same)."""
    packing: bool = False
    """Pack several samples into each max_length row (segment_ids keep them apart)."""
    packing_length: int | None = None
    """Tokens per packed row (default: --max_length); samples are still cut at --max_length."""
    padding_free: bool = False
    """ms-swift's flattened, padding-free batches: here the same as --packing true (static shapes), one line says so."""
    packing_num_bins: int = 64
    """Rows filled together by the best-fit packer; more bins, less padding."""
    use_chat_template: bool = True
    """Render `messages` with the chat template (SFT). false (`swift pt`'s default): the last round's query and
    response as plain text plus eos, every token trained; the system prompt is dropped."""
    loss_on_prompt: bool = False
    """Also train on system/user/tool tokens (the same as --loss_scale all)."""
    max_pixels: int | None = None
    """Vision-language models: the most pixels an image is resized to (ms-swift's --max_pixels; default
    $MAX_PIXELS, else the checkpoint's image processor's own)."""
    model_name: list[str] | None = None
    """Self-cognition: fills {{NAME}} in swift/self-cognition rows; zh and en names (one value serves both)."""
    model_author: list[str] | None = None
    """Self-cognition: fills {{AUTHOR}} in swift/self-cognition rows; zh and en authors (one value serves both)."""

    def row_length(self) -> int:
        """Tokens per training row: --packing_length when packing (default --max_length), else --max_length."""
        return self.packing_length if self.packing and self.packing_length else self.max_length

    def chat_encoder(self, tokenizer):
        """The ChatEncoder for these arguments (template, system, agent template, loss_scale, thinking)."""
        from swift_jax.data.templates import ChatEncoder

        return ChatEncoder(tokenizer, self.template, self.system, self.loss_on_prompt, agent_template=self.agent_template,
                           loss_scale=self.loss_scale, is_binary_loss_scale=self.is_binary_loss_scale,
                           thinking=self.thinking(), disable_ignore_empty_think=self.disable_ignore_empty_think)
