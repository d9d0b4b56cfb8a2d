"""ms-swift's multimodal rows: the `images` / `videos` fields and the `<image>` / `<video>` tags in message content.

    {"messages": [{"role": "user", "content": "<image>What is this?"}, {"role": "assistant", "content": "A cat."}],
     "images": ["cat.png"]}

As ms-swift's `Template._add_default_tags`: when the conversation (system prompt included) holds fewer tags than
the row has images (videos), the missing tags are prepended to the first message; more tags than media is an
error naming the row (ms-swift warns and leaves the extra tags as text). Each tag becomes the text its template
puts there (`TAG_TEXT`: Qwen2-VL `<|vision_start|><|image_pad|><|vision_end|>`, InternVL
`<img><IMG_CONTEXT></img>\\n`, Gemma 3 `<start_of_image>`); the pad token is expanded to the image's vision tokens after tokenisation.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

from swift_jax.data.errors import DataError

KINDS = ("image", "video")
FIELDS = {"image": "images", "video": "videos"}
TAG = {kind: f"<{kind}>" for kind in KINDS}

QWEN2_VL = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}
INTERNVL = {"image": "<img><IMG_CONTEXT></img>\n"}
TAG_TEXT: dict[str, dict[str, str]] = {
    "qwen2_vl": QWEN2_VL,
    "qwen2_5_vl": QWEN2_VL,
    "internvl2_5": INTERNVL,
    "internvl3_5": INTERNVL,
    "internvl_hf": INTERNVL,
    "gemma3_vision": {"image": "<start_of_image>"},  # then spliced to Gemma 3's full image sequence (data.vision)
}
"""ms-swift template name -> the text each media tag becomes (its `replace_tag`)."""


def _item(value: Any, where: str, base: str | None) -> Any:
    """One image / video entry: a path or base64 string, a list of frames (video), or an HF datasets image
    `{"path": ..., "bytes": ...}`; relative paths that exist next to the dataset file (`base`) resolve there."""
    if isinstance(value, list):
        return [_item(v, f"{where}[{i}]", base) for i, v in enumerate(value)]
    if isinstance(value, dict):
        value = value.get("path") or value.get("bytes") or value.get("url")
    if isinstance(value, (bytes, bytearray)):
        value = base64.b64encode(value).decode()
    if isinstance(value, str) and base and not os.path.isabs(value) and os.path.exists(os.path.join(base, value)):
        return os.path.join(base, value)
    if not (isinstance(value, str) and value) and not hasattr(value, "convert"):
        raise DataError(f"{where}: expected a path, base64 string or list of frames, got {type(value).__name__}")
    return value


def row_media(row: dict, where: str = "row", base: str | None = None) -> dict[str, list]:
    """`{"image": [...], "video": [...]}` from a row's `images` / `videos` fields (a single value counts as a
    list of one; relative paths resolve against `base`, the dataset's folder, when the file is there);
    `audios` is an error, no model here reads audio."""
    if row.get("audios") not in (None, [], ""):
        raise DataError(f"{where}: field 'audios' holds audio, which no supported model reads; drop the field")
    media = {}
    for kind, key in FIELDS.items():
        value = row.get(key)
        value = [] if value in (None, "") else value if isinstance(value, list) else [value]
        media[kind] = [_item(v, f"{where}: {key}[{i}]", base) for i, v in enumerate(value)]
    return media


def add_default_tags(messages: list[dict], media: dict[str, list], where: str = "row") -> list[dict]:
    """`messages` (system first, if any) with the missing `<image>` / `<video>` tags prepended to the first
    non-system message, as ms-swift does; more tags than media raises a DataError naming `where`."""
    messages = [dict(m) for m in messages]
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    for kind in KINDS:
        found, have = sum(len(re.findall(re.escape(TAG[kind]), t)) for t in texts), len(media.get(kind, []))
        if found > have:
            raise DataError(f"{where}: {found} {TAG[kind]} tags in the messages but {have} {FIELDS[kind]}; "
                            f"give one entry in '{FIELDS[kind]}' per tag")
        if found < have:
            if first is None:
                raise DataError(f"{where}: {have} {FIELDS[kind]} but no message to put their tags in")
            messages[first]["content"] = TAG[kind] * (have - found) + (messages[first]["content"] or "")
    return messages


def render_tags(messages: list[dict], template: str, media: dict[str, list], where: str = "row") -> list[dict]:
    """`messages` with each `<image>` / `<video>` tag replaced by the text template `template` puts there."""
    texts = TAG_TEXT.get(template)
    if texts is None:
        raise DataError(f"{where}: template {template!r} renders no images or videos; vision templates: "
                        f"{sorted(TAG_TEXT)} (--template)")
    for kind in KINDS:
        if media.get(kind) and kind not in texts:
            raise DataError(f"{where}: template {template!r} does not take {FIELDS[kind]}")
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            for kind, text in texts.items():
                content = content.replace(TAG[kind], text)
            message = {**message, "content": content}
        out.append(message)
    return out


def has_media(row: dict) -> bool:
    """Whether a row carries images or videos."""
    return any(row.get(key) not in (None, [], "") for key in FIELDS.values())


PART_KINDS = {"image_url": "image", "image": "image", "video_url": "video", "video": "video"}
"""OpenAI (and ms-swift) content-part types -> media kind."""


def content_parts(messages: list[dict], where: str = "request") -> tuple[list[dict], dict[str, list]]:
    """OpenAI messages whose `content` may be a list of parts (`text`, `image_url` {url}, `video_url`, ms-swift's
    `image` / `video`) -> string contents with a `<image>` / `<video>` tag where each part was, and the media."""
    media: dict[str, list] = {"image": [], "video": []}
    flat = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            flat.append(message)
            continue
        text = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text.append(part.get("text", ""))
            elif kind in PART_KINDS:
                value = part.get(kind)
                value = value.get("url") if isinstance(value, dict) else value
                if not value:
                    raise DataError(f"{where}: messages[{i}].content[{j}] ({kind}) has no url")
                media[PART_KINDS[kind]].append(value)
                text.append(TAG[PART_KINDS[kind]])
            else:
                raise DataError(f"{where}: messages[{i}].content[{j}] has type {kind!r}; expected text, "
                                f"{', '.join(PART_KINDS)}")
        flat.append({**message, "content": "".join(text)})
    return flat, media
