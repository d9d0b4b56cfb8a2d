"""DAPO's dynamic sampling: replace prompt groups whose rewards are all equal (zero advantage, no signal).

A *round* is one rollout's rows: a dict of arrays with a leading row axis (`num_generations` consecutive
rows per prompt), holding at least `rewards` (the weighted total per row). The logic follows ms-swift 4.6
`GRPOTrainer._dynamic_sampling`: keep the rows of groups with a non-zero reward std, roll out new
prompts until `generation_batch_size` rows are kept, and after `max_resample_times` tries without
enough give up and train on the first round unchanged.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from .advantages import group_std

logger = logging.getLogger(__name__)

Round = dict[str, np.ndarray]


def take_rows(round_: Round, index) -> Round:
    """The rows `index` (a mask, slice or index array) of every array in the round."""
    return {k: np.asarray(v)[index] for k, v in round_.items()}


def concat_rounds(rounds: list[Round]) -> Round:
    """The rounds' rows one after another."""
    return {k: np.concatenate([np.asarray(r[k]) for r in rounds]) for k in rounds[0]}


def dynamic_sample(
    first: Round,
    resample: Callable[[], Round],
    *,
    num_generations: int,
    generation_batch_size: int,
    max_resample_times: int,
) -> tuple[Round, int]:
    """`(rows to train on, rollouts made beyond the first)`.

    Rounds are inspected while fewer than `max_resample_times` resamples have been made. ms-swift also
    rolls out one last round after the final inspection that nothing looks at; that rollout is skipped
    here (same rows selected, one rollout cheaper).
    """
    kept: list[Round] = []
    n_kept, resamples, current = 0, 0, first
    for attempt in range(max_resample_times):
        keep = group_std(current["rewards"], num_generations) > 0
        kept.append(take_rows(current, keep))
        n_kept += int(keep.sum())
        if n_kept >= generation_batch_size:
            return take_rows(concat_rounds(kept), slice(0, generation_batch_size)), resamples
        if attempt + 1 < max_resample_times:
            current = resample()
            resamples += 1
    if max_resample_times > 0:
        logger.warning("There are still std=0 groups present after %d retries; training on the first rollout.", max_resample_times)
    return first, resamples
