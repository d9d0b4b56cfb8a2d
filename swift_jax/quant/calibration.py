"""Calibration token rows for GPTQ, read and encoded by the data front end as ms-swift's export does.

Rows in any format training reads (`swift_jax.data.frontend`) are encoded whole, prompt and response, by the
run's chat encoder (`--template`, else the template the checkpoint was trained with; `text` rows are their
tokens plus eos), as ms-swift encodes calibration rows with the model's template; the encodings are joined and
the stream is cut into `[n_samples, seq_len]` rows, the usual GPTQ calibration layout (no padding).
"""

from __future__ import annotations

import random

import numpy as np

from swift_jax.data.errors import DataError
from swift_jax.data.formats import normalize
from swift_jax.data.frontend import read_rows
from swift_jax.data.resolve import LoadOptions


def calibration_rows(encoder, paths: list[str], *, n_samples: int, seq_len: int, seed: int = 42,
                     columns: dict[str, str] | None = None, options: LoadOptions | None = None) -> np.ndarray:
    """Token ids `[rows, seq_len]` (int32), `rows <= n_samples`, from the datasets' rows in shuffled order;
    `paths` are --dataset entries (`#N`, hub ids, registered names), read with `options`; `encoder` is the
    run's `ChatEncoder`. A row that cannot be encoded is an error naming file and row."""
    rows = [(f"{path} row {i}", row) for path in paths for i, row in enumerate(read_rows(path, options=options, seed=seed))]
    random.Random(seed).shuffle(rows)
    stream: list[int] = []
    for where, row in rows:
        try:
            stream += encoder.encode(normalize(row, columns)).input_ids.tolist()
        except DataError as err:
            raise DataError(f"--dataset {where}: {err}") from None
        if len(stream) >= n_samples * seq_len:
            break
    count = min(n_samples, len(stream) // seq_len)
    if count == 0:
        raise ValueError(f"--dataset {paths}: {len(stream)} tokens, fewer than one row of --max_length {seq_len}")
    return np.asarray(stream[: count * seq_len], np.int32).reshape(count, seq_len)
