"""Multimodal samples: a row's images / videos -> the model's pixel inputs, and its tokens with each vision
pad expanded to the image's (video's) number of vision tokens, as ms-swift's templates encode them.

    vision = VisionData.from_pretrained(model_dir, model.config.vision)      # processor from the folder
    sample = vision.encode(encoder, normalized_row, media, where="train.jsonl, line 3")
    # {"input_ids", "labels", ["loss_scale"], "pixel_values", "image_grid_thw", ...}: numpy

Tags are placed and rendered by `media` (ms-swift's rules), the conversation by the run's `ChatEncoder`
(ms-swift's template of the model, e.g. `qwen2_vl`), images by the checkpoint's PIL image processor
(`images`), videos by `videos`. Vision tokens are never trained (labels -100), as in ms-swift.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from swift_jax.data import images as image_io
from swift_jax.data import media as media_tags
from swift_jax.data.errors import DataError
from swift_jax.data.template_meta import MODEL_TYPE_TEMPLATES

IGNORE = -100
QWEN2_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")
TILE_TYPES = ("internvl", "gemma3")  # whole tiles / images per row (`models.vision.tiles`)


@dataclasses.dataclass
class VisionData:
    """How a vision-language checkpoint reads images and videos: its model type, vision config (the model's
    `config.vision`), PIL image processor, video settings and ms-swift template."""

    model_type: str
    config: Any
    processor: Any
    template: str
    video: Any = None  # videos.VideoSettings for the Qwen2-VL family, else None
    image_bounds: tuple[int, int] | None = None  # Gemma 3: (<start_of_image>, <end_of_image>) token ids

    @classmethod
    def from_pretrained(cls, model_dir: str, vision_config, *, template: str | None = None,
                        max_pixels: int | None = None) -> "VisionData":
        """The processor of `model_dir` (`preprocessor_config.json`, else transformers' defaults at the vision
        config's sizes); `template` defaults to ms-swift's template of the model type."""
        with open(os.path.join(model_dir, "config.json")) as f:
            hf = json.load(f)
        model_type = hf.get("model_type")
        template = template or MODEL_TYPE_TEMPLATES.get(model_type)
        if template not in media_tags.TAG_TEXT:
            raise DataError(f"--template {template!r} does not render images for model_type {model_type!r}; "
                            f"use one of {sorted(media_tags.TAG_TEXT)}")
        processor = image_io.image_processor(model_dir, max_pixels=max_pixels)
        bounds = None
        if model_type == "gemma3":
            bounds = (hf.get("boi_token_index", hf.get("boi_token_id")), hf.get("eoi_token_index", hf.get("eoi_token_id")))
        video = None
        if model_type in QWEN2_VL_TYPES:
            from swift_jax.data.videos import VideoSettings

            video = VideoSettings.from_pretrained(model_dir, processor)
        return cls(model_type, vision_config, processor, template, video, bounds)

    @property
    def is_qwen2_vl(self) -> bool:
        return self.model_type in QWEN2_VL_TYPES

    @property
    def batching(self):
        """`(module, argument)` that batches this model's samples: `vision_batching` with the merge unit
        (Qwen2-VL family, patches), else `tile_batching` with the `Tile` (shape, tokens)."""
        if self.is_qwen2_vl:
            from swift_jax.data import vision_batching

            return vision_batching, self.config.merge_unit
        from swift_jax.data import tile_batching
        from swift_jax.models.vision.tiles import tile_shape, tile_tokens

        return tile_batching, tile_batching.Tile(tile_shape(self.config), tile_tokens(self.config))

    def empty_sample(self, weighted: bool) -> dict[str, np.ndarray]:
        """A sample of nothing in this model's batch layout (fills validation batches)."""
        module, unit = self.batching
        return module.empty_sample(self.config.patch_dim if self.is_qwen2_vl else unit, weighted)

    # -- messages ----------------------------------------------------------------------------------------
    def messages(self, messages: list[dict], media: dict[str, list], where: str) -> list[dict]:
        """`messages` with ms-swift's default tags added and each tag rendered as the template's text."""
        if media["video"] and self.video is None:
            raise DataError(f"{where}: model_type {self.model_type!r} takes no videos here (Qwen2-VL / Qwen2.5-VL do)")
        return media_tags.render_tags(media_tags.add_default_tags(messages, media, where), self.template, media, where)

    # -- pixels --------------------------------------------------------------------------------------------
    def pixels(self, media: dict[str, list], where: str) -> dict[str, np.ndarray]:
        """The processor outputs of a row's images (`pixel_values`, `image_grid_thw` / InternVL `num_patches`)
        and videos (`pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts`)."""
        out: dict[str, np.ndarray] = {}
        if media["image"]:
            images = [image_io.read_image(x, where=f"{where}: images[{i}]") for i, x in enumerate(media["image"])]
            out.update(image_io.preprocess_images(self.processor, images))
        if media["video"]:
            from swift_jax.data.videos import preprocess_videos, read_video

            videos = [read_video(v, self.video.sizing, where=f"{where}: videos[{i}]") for i, v in enumerate(media["video"])]
            out.update(preprocess_videos(self.video, videos))
            if self.model_type != "qwen2_5_vl":
                out.pop("second_per_grid_ts")
        return out

    def token_counts(self, pixels: dict[str, np.ndarray]) -> dict[int, list[int]]:
        """Pad token id -> vision tokens of each image (video) in order."""
        counts = {}
        if "pixel_values" in pixels:
            counts[self.config.image_token_id] = image_io.vision_token_counts(self.config, pixels)
        if "video_grid_thw" in pixels:
            counts[self.config.video_token_id] = [int(n) for n in np.prod(pixels["video_grid_thw"], -1) // self.config.merge_unit]
        return counts

    # -- encoding ----------------------------------------------------------------------------------------
    def encode(self, encoder, sample: dict, media: dict[str, list], where: str) -> dict[str, np.ndarray]:
        """A training sample: `input_ids`, `labels` (and `loss_scale` when weighted) with the vision pads
        expanded, plus the pixel arrays of `pixels`."""
        encoded = encoder.encode({**sample, "messages": self.messages(sample["messages"], media, where)})
        pixels = self.pixels(media, where)
        aligned = [encoded.labels] + ([encoded.loss_scale] if encoded.loss_scale is not None else [])
        aligned = self.untrain_tags(encoder.tokenizer, np.asarray(encoded.input_ids), *aligned)
        ids, *aligned = self.splice_images(encoder.tokenizer, encoded.input_ids, *aligned)
        ids, labels, *scale = expand_pads(ids, self.token_counts(pixels), *aligned, where=where)
        out = {"input_ids": ids.astype(np.int32), "labels": labels.astype(np.int32), **pixels}
        if scale:
            out["loss_scale"] = scale[0].astype(np.float32)
        return out

    def untrain_tags(self, tokenizer, input_ids: np.ndarray, labels, *weights) -> list[np.ndarray]:
        """`[labels, *weights]` with every media tag's replacement text (`media.TAG_TEXT`, e.g.
        `<|vision_start|><|image_pad|><|vision_end|>`) untrained: ms-swift gives a tag's replacement loss_scale 0,
        so even `--loss_scale all`, which trains the user turns, leaves it -100."""
        labels = np.array(labels, copy=True)
        weights = [np.array(w, copy=True) for w in weights]
        for text in media_tags.TAG_TEXT[self.template].values():
            tag = np.asarray(tokenizer.encode(text, add_special_tokens=False))
            n = len(tag)
            if n == 0 or len(input_ids) < n:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(input_ids, n)  # [len - n + 1, n]
            for start in np.flatnonzero((windows == tag).all(axis=1)):
                labels[start : start + n] = IGNORE
                for w in weights:
                    w[start : start + n] = 0
        return [labels, *weights]

    def splice_images(self, tokenizer, input_ids, *aligned: np.ndarray) -> list[np.ndarray]:
        """Gemma 3 (ms-swift's `gemma3_vision`): each `<start_of_image>` becomes the processor's full image
        sequence `\\n\\n<start_of_image><image_soft_token><end_of_image>\\n\\n` (the soft token is then
        expanded by `expand_pads`), the aligned arrays (labels first, then loss_scale) IGNORE / 0 there.
        Other models: the arrays unchanged."""
        if self.image_bounds is None:
            return [np.asarray(input_ids), *aligned]
        (start, end), newlines = self.image_bounds, tokenizer.encode("\n\n", add_special_tokens=False)
        sequence = np.asarray(newlines + [start, self.config.image_token_id, end] + newlines)
        ids = np.asarray(input_ids)
        at = np.flatnonzero(ids == start)
        repeat = np.ones(len(ids), np.int64)
        repeat[at] = len(sequence)
        out = [np.repeat(a, repeat) for a in (ids, *aligned)]
        for k, i in enumerate(at):  # the k-th sequence starts after k earlier ones grew by len - 1
            s = i + k * (len(sequence) - 1)
            out[0][s : s + len(sequence)] = sequence
            for a, fill in zip(out[1:], (IGNORE, 0)):
                a[s : s + len(sequence)] = fill
        return out

    def layout(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The per-sample arrays a training batch row takes: Qwen2-VL family (`models.vision.rows`) patches in
        layout order and M-RoPE positions `mrope` `[seq, 3]`; InternVL / Gemma 3 (`models.vision.tiles`) the
        tiles `pixel_values` `[tiles, C, H, W]`."""
        if not self.is_qwen2_vl:
            from swift_jax.models.vision.tiles import tile_shape

            empty = np.zeros((0, *tile_shape(self.config)), np.float32)
            return {"pixel_values": np.asarray(encoded.get("pixel_values", empty), np.float32)}
        from swift_jax.models.vision.rows import sample_layout

        keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
        return sample_layout(self.config, encoded["input_ids"], **{k: encoded.get(k) for k in keys})

    def prompt(self, encoder, messages: list[dict], media: dict[str, list], tools=None, where: str = "request",
               chat_template_kwargs: dict | None = None):
        """A generation prompt: `(input_ids [n], pixel arrays)` with the vision pads expanded."""
        ids = np.asarray(encoder.prompt_ids(self.messages(messages, media, where), tools, chat_template_kwargs), np.int64)
        pixels = self.pixels(media, where)
        (ids,) = self.splice_images(encoder.tokenizer, ids)
        (ids,) = expand_pads(ids, self.token_counts(pixels), where=where)
        return ids.astype(np.int32), pixels


@dataclasses.dataclass
class VisionPrompt:
    """A generation prompt of a vision-language model: its token ids (vision pads expanded) and its vision
    layout (`models.vision.rows.sample_layout`), what `Generator.generate_ids` takes in place of plain ids."""

    ids: list[int]
    layout: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


def prompt_inputs(vision: VisionData | None, encoder, messages: list[dict], tools=None, media=None,
                  where: str = "request", chat_template_kwargs: dict | None = None):
    """The generation prompt of `messages` (and a row's `media`, `media.row_media`, and its
    `chat_template_kwargs`): plain token ids for a text model (media is then an error), a `VisionPrompt` for a
    vision-language one."""
    media = media or {"image": [], "video": []}
    if vision is None:
        if media["image"] or media["video"]:
            raise DataError(f"{where}: images / videos given, but the model is text-only")
        return encoder.prompt_ids(messages, tools, chat_template_kwargs)
    ids, pixels = vision.prompt(encoder, messages, media, tools, where, chat_template_kwargs)
    return VisionPrompt(ids.tolist(), vision.layout({"input_ids": ids, **pixels}))


def vision_data_for(model_dir: str, model_config, data_args=None) -> VisionData | None:
    """The `VisionData` of a vision-language checkpoint (Qwen2-VL family, InternVL, Gemma 3 with its vision
    tower), with the run's --template and --max_pixels; None for text models."""
    vision = getattr(model_config, "vision", None)
    if vision is None or model_config.model_type not in QWEN2_VL_TYPES + TILE_TYPES:
        return None
    return VisionData.from_pretrained(model_dir, vision, template=getattr(data_args, "template", None),
                                      max_pixels=getattr(data_args, "max_pixels", None))


def vision_for_inference(args, model_config):
    """`(VisionData or None, args)` for infer / deploy / eval: the checkpoint folder is `args.model` (else the
    adapters' base model); a vision model's `args.template` defaults to ms-swift's template of the model type."""
    if getattr(model_config, "vision", None) is None or model_config.model_type not in QWEN2_VL_TYPES + TILE_TYPES:
        return None, args
    from swift_jax.tuners import base_model_of

    folder = args.model or base_model_of(args.adapter_paths()[0])
    vision = vision_data_for(folder, model_config, args)
    if getattr(args, "template", None) is None:
        args = dataclasses.replace(args, template=vision.template)
    return vision, args


def expand_pads(input_ids: np.ndarray, counts: dict[int, list[int]], *aligned: np.ndarray, where: str = "row"):
    """`input_ids` with the k-th occurrence of each pad id repeated `counts[pad][k]` times, and the `aligned`
    arrays (labels, loss_scale) repeated alike; the first aligned array (labels) is IGNORE on vision tokens.
    Each pad id must occur once per image (video)."""
    ids = np.asarray(input_ids)
    repeat = np.ones(len(ids), np.int64)
    for pad, n in counts.items():
        at = np.flatnonzero(ids == pad)
        if len(at) != len(n):
            raise DataError(f"{where}: {len(at)} vision placeholders (token {pad}) for {len(n)} images/videos")
        repeat[at] = n
    out = [np.repeat(a, repeat) for a in (ids, *aligned)]
    if aligned:
        out[1] = np.where(np.isin(out[0], list(counts)), IGNORE, out[1])
    return out
