"""The order in which ms-swift 4.6 feeds preference rows to its trainers, so curves compare step by step.

ms-swift's DPO trainer draws batches with its own sampler (file order with `--train_dataloader_shuffle false`).
Its CPO/SimPO, ORPO and reward-model trainers (TRL's, without that sampler) draw rows with the HF Trainer's
random sampler whatever `--train_dataloader_shuffle` says: accelerate's `SeedableRandomSampler`, which in epoch
e yields `torch.randperm(n, generator=torch.Generator().manual_seed(data_seed + e))`. KTO's (TRL's sequential
sampler) reads its table in order, but with loss type `kto` ms-swift first shuffles that table with
`datasets.Dataset.shuffle(seed=data_seed)` (numpy's `default_rng(data_seed).permutation`) and only then lends
each row's answer to its neighbour's KL example.

`torch_randperm` is torch's CPU algorithm (one Fisher-Yates pass over mt19937 draws, the path torch takes for
n < 2**32 / 20) in numpy, so no torch is needed at run time; tests check it against torch.
"""

from __future__ import annotations

import grain
import numpy as np

RANDOM_SAMPLER_TYPES = ("cpo", "orpo", "rm")
"""rlhf_types (after simpo -> cpo) whose ms-swift trainer draws rows in a seeded random order."""


def torch_randperm(n: int, seed: int) -> np.ndarray:
    """`torch.randperm(n, generator=torch.Generator().manual_seed(seed))` `[n]`, in numpy."""
    draws = np.random.RandomState(seed).randint(0, 2**32, size=max(n - 1, 0), dtype=np.uint64)  # mt19937 outputs
    order = np.arange(n)
    for i in range(n - 1):
        j = i + int(draws[i]) % (n - i)
        order[i], order[j] = order[j], order[i]
    return order


class EpochPermutation(grain.MapDataset):
    """`parent` (one epoch of a table, repeated after this) read in epoch e in `torch_randperm(len, seed + e)`'s
    order: the HF Trainer's sampler as ms-swift's CPO/ORPO/RM trainers use it."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = int(seed)
        self._epoch_order: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))  # the last epoch's permutation

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"EpochPermutation(seed={self._seed})"

    def _order(self, epoch: int) -> np.ndarray:
        cached_epoch, order = self._epoch_order  # one read: reader threads may replace it meanwhile
        if cached_epoch != epoch:
            order = torch_randperm(len(self._parent), self._seed + epoch)
            self._epoch_order = (epoch, order)
        return order

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, i = divmod(int(index), len(self._parent))
        return self._parent[epoch * len(self._parent) + int(self._order(epoch)[i])]


class PermutedTable:
    """A row table read in a fixed order `order[i]` (KTO's table after ms-swift's `dataset.shuffle(data_seed)`)."""

    def __init__(self, table, order: np.ndarray):
        self.table, self.order = table, order

    @classmethod
    def datasets_shuffle(cls, table, seed: int) -> "PermutedTable":
        """`table` as `datasets.Dataset.shuffle(seed=seed)` orders it."""
        return cls(table, np.random.default_rng(seed).permutation(len(table)))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        return self.table[int(self.order[int(i)])]
