"""Resolve a local directory or a Hugging Face hub id to a local folder."""

from __future__ import annotations

import os
import re
import shutil

_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_model_dir(path_or_hub_id: str | os.PathLike) -> str:
    """A local directory as is; otherwise download the hub repo's config, weights and tokenizer files.

    Raises FileNotFoundError naming the argument when neither a directory nor a reachable hub repo.
    """
    path = os.fspath(path_or_hub_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path}: expected a model directory (with config.json), got a file")
    if not _HUB_ID.fullmatch(path) or path.startswith("."):
        raise FileNotFoundError(f"{path}: no such model directory (and it is not a hub id like 'Qwen/Qwen2.5-0.5B')")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=MODEL_FILE_PATTERNS)
    except Exception as err:  # network, auth, missing repo: all end here with the id named
        raise FileNotFoundError(
            f"{path}: not a local directory, and downloading it from the Hugging Face hub failed "
            f"({type(err).__name__}: {err}). Pass a local model folder when offline."
        ) from err


# Tokenizer, processor (vision-language models) and generation files copied beside exported or checkpointed weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
)


def copy_tokenizer_files(src: str, dst: str) -> None:
    """Copy the tokenizer, processor and generation config files a model folder has (hub ids: downloaded first)."""
    src = resolve_model_dir(src)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
