"""Preference rows (ms-swift's and the hub's shapes) -> a chosen and a rejected conversation.

    messages + rejected_response          the rejected answer replaces the last assistant message
    messages + rejected_messages          two whole conversations
    prompt + chosen + rejected            strings, or message lists (TRL's conversational shape; without
                                          `prompt`, `chosen`/`rejected` are whole conversations)
    messages + label (KTO)                one conversation, desirable (true) or not
    margin (RM, optional)                 the Bradley-Terry margin of the pair

Each conversation goes through `swift_jax.data.normalize`, so sharegpt spellings, `system` and `tools` work
as in SFT. A row missing what its `rlhf_type` needs raises a DataError naming the field.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from swift_jax.data.errors import DROPPED, DataError
from swift_jax.data.formats import MESSAGE_KEYS, normalize

PAIRED = ("dpo", "orpo", "cpo", "simpo", "rm")
PAIR_HINT = ("expected 'messages' with 'rejected_response' or 'rejected_messages', or 'prompt' + 'chosen' + "
             "'rejected' (strings or message lists)")


class Preference(NamedTuple):
    """One normalised preference example: conversations as `{"messages", "tools"}` samples."""

    chosen: dict
    rejected: dict | None  # None for KTO (its second sequence is built from another row)
    margin: float = 0.0
    label: bool = True  # KTO: desirable


def with_last_answer(sample: dict, answer: Any, field: str) -> dict:
    """`sample` with its final assistant message replaced by `answer` (a string)."""
    if not isinstance(answer, str):
        raise DataError(f"'{field}' must be a string, got {type(answer).__name__}")
    messages = sample["messages"]
    if messages[-1]["role"] != "assistant":
        raise DataError(f"'{field}' needs 'messages' to end with the assistant answer it replaces; the last "
                        f"message has role {messages[-1]['role']!r}")
    return {**sample, "messages": messages[:-1] + [{"role": "assistant", "content": answer}]}


def _conversation(row: dict, messages: Any, field: str) -> dict:
    """A message list (or a JSON string of one) as a normalised sample carrying the row's system/tools."""
    try:
        sample = normalize({"messages": messages, "system": row.get("system"), "tools": row.get("tools")})
    except DataError as e:
        raise DataError(f"'{field}': {e}") from None
    if sample["messages"][-1]["role"] != "assistant":
        raise DataError(f"'{field}' must end with an assistant message, found role {sample['messages'][-1]['role']!r}")
    return sample


def _prompt_messages(prompt: Any) -> list:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return list(prompt)
    raise DataError(f"'prompt' must be a string or a list of messages, got {type(prompt).__name__}")


def _answer_messages(answer: Any, field: str) -> list:
    if isinstance(answer, str):
        return [{"role": "assistant", "content": answer}]
    if isinstance(answer, list):
        return list(answer)
    raise DataError(f"'{field}' must be a string or a list of messages, got {type(answer).__name__}")


def _from_prompt_chosen_rejected(row: dict) -> tuple[dict, dict]:
    prompt = _prompt_messages(row["prompt"]) if row.get("prompt") is not None else []
    chosen = _conversation(row, prompt + _answer_messages(row["chosen"], "chosen"), "chosen")
    rejected = _conversation(row, prompt + _answer_messages(row["rejected"], "rejected"), "rejected")
    return chosen, rejected


def _has_messages(row: dict) -> bool:
    return any(row.get(k) is not None for k in MESSAGE_KEYS)


def preference_of(row: Any, rlhf_type: str, columns: dict[str, str] | None = None) -> Preference:
    """The chosen/rejected conversations (and margin or KTO label) of one row for `rlhf_type`."""
    if not isinstance(row, dict):
        raise DataError(f"a row must be a JSON object, got {type(row).__name__}")
    if DROPPED in row:
        raise DataError(row[DROPPED])
    if columns:
        row = {columns.get(k, k): v for k, v in row.items()}
    margin = row.get("margin")
    if margin is not None and not isinstance(margin, (int, float)):
        raise DataError(f"'margin' must be a number, got {margin!r:.40}")
    if rlhf_type == "kto":
        if row.get("label") is None:
            raise DataError("KTO rows need a boolean 'label' (true = desirable answer) next to 'messages'")
        if not isinstance(row["label"], (bool, int)):
            raise DataError(f"'label' must be true or false, got {row['label']!r:.40}")
        if _has_messages(row):
            chosen = normalize(row)
        elif row.get("completion") is not None:  # TRL's unpaired shape: prompt + completion + label
            messages = _prompt_messages(row.get("prompt") or []) + _answer_messages(row["completion"], "completion")
            chosen = _conversation(row, messages, "completion")
        else:
            raise DataError("KTO rows need 'messages' (ending with the answer) or 'prompt' + 'completion', plus 'label'")
        if "messages" not in chosen or chosen["messages"][-1]["role"] != "assistant":
            raise DataError("KTO rows need a conversation that ends with the assistant answer being labelled")
        return Preference(chosen, None, label=bool(row["label"]))
    if rlhf_type not in PAIRED:
        raise DataError(f"--rlhf_type {rlhf_type!r}: expected one of {PAIRED + ('kto',)}")
    if row.get("chosen") is not None or row.get("rejected") is not None:
        missing = [k for k in ("chosen", "rejected") if row.get(k) is None]
        if missing:
            raise DataError(f"missing field {missing[0]!r}; {PAIR_HINT}")
        chosen, rejected = _from_prompt_chosen_rejected(row)
    elif _has_messages(row):
        chosen = normalize(row)
        if "messages" not in chosen:
            raise DataError(f"'messages' is required for {rlhf_type}; {PAIR_HINT}")
        if row.get("rejected_response") is not None:
            rejected = with_last_answer(chosen, row["rejected_response"], "rejected_response")
        elif row.get("rejected_messages") is not None:
            rejected = _conversation(row, row["rejected_messages"], "rejected_messages")
        else:
            raise DataError(f"missing field 'rejected_response' (or 'rejected_messages') for --rlhf_type {rlhf_type}; "
                            f"{PAIR_HINT}")
        if chosen["messages"][-1]["role"] != "assistant":
            raise DataError("'messages' must end with the chosen assistant answer")
    else:
        keys = sorted(k for k, v in row.items() if v is not None)
        raise DataError(f"no preference pair in a row with keys {keys}; {PAIR_HINT}")
    return Preference(chosen, rejected, margin=float(margin or 0.0))
