"""One `--dataset` entry, parsed as ms-swift 4.6 parses it (`swift/dataset/dataset_syntax.py`):

    [hf::|ms::]ID_OR_PATH[:SUBSET1/SUBSET2][#N]

An existing local path is taken whole (a file named `a#1.jsonl` stays itself); otherwise `hf::` / `ms::` picks
the hub, `#N` (split at the last `#`) samples N rows, and `:` (split at the first `:`) names subsets of a hub
dataset or a dataset folder (`all`: every registered subset). Every command reads its datasets through this.
"""

from __future__ import annotations

import dataclasses
import os

from swift_jax.data.errors import DataError

HUBS = {"hf": True, "ms": False}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A parsed `--dataset` entry: `path` (local path, hub id or registered name), `subsets`, `num_samples` (`#N`),
    `use_hf` (True: `hf::`, False: `ms::`, None: not given)."""

    path: str
    num_samples: int | None = None
    subsets: tuple[str, ...] = ()
    use_hf: bool | None = None

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """'hf::org/name:sub1/sub2#500' -> DatasetSpec('org/name', 500, ('sub1', 'sub2'), True)."""
        rest, use_hf = text, None
        if not os.path.exists(rest) and "::" in rest:
            hub, rest = rest.split("::", 1)
            if hub.lower() not in HUBS:
                raise DataError(f"dataset {text!r}: unknown hub prefix {hub + '::'!r}; expected hf:: or ms::")
            use_hf = HUBS[hub.lower()]
        count = None
        if not os.path.exists(rest) and "#" in rest:
            rest, count = rest.rsplit("#", 1)
            if not count.isdigit() or int(count) <= 0:
                raise DataError(f"dataset {text!r}: the part after '#' must be a positive sample count, e.g. {rest or text}#1000")
            count = int(count)
        subsets: tuple[str, ...] = ()
        if not os.path.exists(rest) and ":" in rest:
            rest, names = rest.split(":", 1)
            subsets = tuple(s.strip() for s in names.split("/"))
        return cls(rest.strip(), count, subsets, use_hf)

    def __str__(self) -> str:
        hub = {True: "hf::", False: "ms::", None: ""}[self.use_hf]
        subsets = ":" + "/".join(self.subsets) if self.subsets else ""
        count = f"#{self.num_samples}" if self.num_samples is not None else ""
        return f"{hub}{self.path}{subsets}{count}"
