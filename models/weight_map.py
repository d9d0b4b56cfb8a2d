"""Bidirectional weight-map tables: HF tensor names <-> our parameter paths, plus the transform between.

A row is written once, as two name templates with the same placeholders, and is read by both import
and export, so the two directions cannot drift apart:

    Rule("model.layers.{i}.self_attn.{proj}.weight", "model.layers.{i}.self_attn.{proj}.kernel",
         transform="transpose", values={"proj": ("q_proj", "k_proj", "v_proj", "o_proj")})

`{i}` matches a layer number; other placeholders match one of the listed `values`.

A row with `stack="j"` maps many HF tensors onto one of ours: HF's per-expert tensors
`...experts.{j}.gate_proj.weight` `[out, in]` are the slices `[j]` of our stacked `[expert, in, out]`
array (the transform applies to each slice). `ours_to_hf` then returns the HF name with `{j}` left in.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

import numpy as np

TRANSFORMS = ("identity", "transpose")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One table row: an HF name template, our dotted path template and the HF->ours transform."""

    hf: str
    ours: str
    transform: str = "identity"
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    stack: str | None = None  # placeholder in `hf` that indexes axis 0 of our (stacked) array

    def __init__(
        self, hf: str, ours: str, transform: str = "identity", values: dict | None = None, stack: str | None = None
    ):
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")
        object.__setattr__(self, "stack", stack)
        object.__setattr__(self, "hf", hf)
        object.__setattr__(self, "ours", ours)
        object.__setattr__(self, "transform", transform)
        object.__setattr__(self, "values", tuple((k, tuple(v)) for k, v in (values or {}).items()))

    def _regex(self, template: str) -> re.Pattern:
        choices = dict(self.values)
        out, pos = [], 0
        for m in re.finditer(r"\{(\w+)\}", template):
            out.append(re.escape(template[pos : m.start()]))
            name = m.group(1)
            alt = r"\d+" if name not in choices else "|".join(map(re.escape, choices[name]))
            out.append(f"(?P<{name}>{alt})")
            pos = m.end()
        out.append(re.escape(template[pos:]))
        return re.compile("".join(out) + r"\Z")

    def match_hf(self, name: str) -> str | None:
        """Our path for an HF tensor name, or None if this row does not cover it."""
        m = self._regex(self.hf).match(name)
        return self.ours.format(**m.groupdict()) if m else None

    def stack_index(self, name: str) -> int | None:
        """For a stacking row, the slice of our array that HF tensor `name` holds (else None)."""
        m = self._regex(self.hf).match(name) if self.stack else None
        return int(m.group(self.stack)) if m else None

    def stacked_names(self, template: str, count: int) -> list[str]:
        """The `count` HF names of a stacking row's `ours_to_hf` result, slice 0 first."""
        return [template.replace("{" + self.stack + "}", str(j)) for j in range(count)]

    def match_ours(self, path: str) -> str | None:
        """The HF tensor name for one of our paths, or None if this row does not cover it."""
        m = self._regex(self.ours).match(path)
        if not m:
            return None
        keep = {self.stack: "{" + self.stack + "}"} if self.stack else {}
        return self.hf.format(**m.groupdict(), **keep)


def to_ours(array: np.ndarray, transform: str) -> np.ndarray:
    """Apply a row's HF->ours transform to a host array."""
    return array.T if transform == "transpose" else array


def to_hf(array: np.ndarray, transform: str) -> np.ndarray:
    """Apply the inverse (ours->HF) transform; both current transforms are their own inverse."""
    return np.ascontiguousarray(array.T) if transform == "transpose" else array


def hf_index_to_ours(index: tuple[slice, ...], transform: str) -> tuple[slice, ...]:
    """Map a slice of our array to the slice of the HF tensor that holds the same values."""
    return tuple(reversed(index)) if transform == "transpose" else index


class WeightMap:
    """An ordered table of `Rule`s for one architecture."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(rules)

    def hf_to_ours(self, name: str) -> tuple[str, Rule] | None:
        for rule in self.rules:
            path = rule.match_hf(name)
            if path is not None:
                return path, rule
        return None

    def ours_to_hf(self, path: str) -> tuple[str, Rule] | None:
        for rule in self.rules:
            name = rule.match_ours(path)
            if name is not None:
                return name, rule
        return None
