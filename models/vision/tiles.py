"""InternVL / Gemma 3 vision inputs laid out per batch row, for training batches (padded or packed) and
generation prompts.

These models encode whole images (InternVL: dynamically tiled 448x448-style tiles; Gemma 3: one square image)
into a fixed number of tokens each, so a row only carries its samples' pixels, image after image:

    pixel_values  [rows, T, C, H, W]   the row's tiles / images in reading order, zero-padded to T (a bucket)

The k-th image token of a row takes the k-th feature of the row's tiles (padding tiles are encoded too but
never picked); positions are the plain 1-D ones of text rows (restarting in each packed segment). Gemma 3's
image tokens attend to their whole image (`gemma3.image_blocks`), which stays inside a packed segment since
the template puts `<start_of_image>` / `<end_of_image>` around each image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..decoder import KVCache
from .gemma3 import Gemma3ForConditionalGeneration, image_blocks


def row_embeds(model, input_ids: jax.Array, pixel_values: jax.Array) -> jax.Array:
    """Token embeddings `[rows, seq, embed]` with each row's image features in place of its image tokens;
    `pixel_values` `[rows, T, C, H, W]` (the row's k-th image token takes its k-th feature)."""
    rows, tiles = pixel_values.shape[:2]
    embeds = model.model.embed(input_ids)  # [rows, seq, embed]
    feats = model.image_features(pixel_values.reshape(rows * tiles, *pixel_values.shape[2:]))
    feats = feats.reshape(rows, -1, feats.shape[-1])  # [rows, T * tokens_per_tile, embed]
    is_pad = input_ids == model.config.vision.image_token_id  # [rows, seq]
    rank = jnp.where(is_pad, jnp.cumsum(is_pad, axis=-1) - 1, 0)
    picked = jnp.take_along_axis(feats, rank[..., None], axis=1, mode="clip").astype(embeds.dtype)
    return jnp.where(is_pad[..., None], picked, embeds)


def row_hidden_states(model, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                      pixel_values: jax.Array, cache: KVCache | None = None):
    """The decoder's hidden states `[rows, seq, embed]` (and the cache when given) for rows whose images are
    `pixel_values` `[rows, T, C, H, W]`; Gemma 3's image tokens attend bidirectionally within their image."""
    embeds = row_embeds(model, input_ids, pixel_values)
    kw = {}
    if isinstance(model, Gemma3ForConditionalGeneration):
        kw["bidirectional_ids"] = image_blocks(input_ids == model.config.vision.image_token_id)
    if cache is not None:
        return model.model(input_ids, positions, segment_ids, cache, embeds=embeds, **kw)
    return model.model(input_ids, positions, segment_ids, embeds=embeds, **kw)


def tile_bucket(n: int, minimum: int = 1) -> int:
    """The padded tile (image) count for rows holding at most `n`: a power of two, at least `minimum`."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def tile_shape(cfg) -> tuple[int, int, int]:
    """`(C, H, W)` of one tile (InternVL `image_size` pair) or image (Gemma 3 square `image_size`)."""
    size = cfg.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return cfg.num_channels, height, width


def tile_tokens(cfg) -> int:
    """Language-model tokens of one tile (InternVL `tokens_per_tile`) or image (Gemma 3 `mm_tokens_per_image`)."""
    return cfg.tokens_per_tile if hasattr(cfg, "tokens_per_tile") else cfg.mm_tokens_per_image
