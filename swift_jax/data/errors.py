"""Data errors that name the file, the row and what was expected, and the `--strict false` skip counter."""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger("swift_jax.data")

DROPPED = "__swift_jax_dropped__"
"""Key of the row that stands for one a dataset's preprocessor dropped or failed on (`sources.FileRows`);
`formats.normalize` raises its message, so the usual bad-row handling (--strict) applies."""


class DataError(ValueError):
    """A dataset problem a user must fix: the message names the file, the row/line and what was expected."""


@dataclasses.dataclass(frozen=True)
class RowRef:
    """Where a row came from, for error messages: `file` and a 1-based `line` (jsonl) or 0-based `row`."""

    file: str
    row: int
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}" if self.line is not None else f"{self.file}, row {self.row}"


def row_error(ref: RowRef | str, problem: str, hint: str = "") -> DataError:
    """A DataError for one row: '<file>, line N: <problem>. <hint>'."""
    return DataError(f"{ref}: {problem}" + (f". {hint}" if hint else ""))


class BadRows:
    """Counts rows skipped under `--strict false`; re-raises their error under `--strict true`."""

    def __init__(self, strict: bool, max_logged: int = 5):
        self.strict = strict
        self.count = 0
        self.max_logged = max_logged

    def handle(self, error: DataError) -> None:
        """Raise `error` when strict, else count it (logging the first few)."""
        if self.strict:
            raise error
        self.count += 1
        if self.count <= self.max_logged:
            log.warning("skipping bad row (--strict false): %s", error)
