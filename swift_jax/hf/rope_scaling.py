"""ms-swift's `--rope_scaling` and `--max_model_len`: rotary scaling written into the HF config before the model
is built (so checkpoints and exports carry it), with the factor derived from the length asked for."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

ROPE_TYPES = ("linear", "dynamic", "yarn")


def parse_rope_scaling(value: str | dict | None) -> dict | None:
    """`--rope_scaling`: a type name (linear | dynamic | yarn) or a JSON object of rope parameters."""
    if value is None or isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    if isinstance(parsed, str):
        if parsed not in ROPE_TYPES:
            raise ValueError(f"--rope_scaling {value!r}: expected one of {ROPE_TYPES} or a JSON object such as "
                             '\'{"rope_type": "yarn", "factor": 4.0}\'')
        return {"rope_type": parsed}
    if not isinstance(parsed, dict):
        raise ValueError(f"--rope_scaling {value!r}: expected a rope type name or a JSON object")
    return parsed


def scaled_config(hf: dict[str, Any], rope_scaling: str | dict | None, max_model_len: int | None) -> dict[str, Any]:
    """`hf` (a config dict) with ms-swift's rope scaling (`ModelArguments._init_rope_scaling`): the factor, when
    not given, is ceil(max_model_len / the original length); `max_position_embeddings` becomes `max_model_len`
    (default: original length x factor)."""
    current = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    current_type = current.get("rope_type", current.get("type", "default"))
    asked = parse_rope_scaling(rope_scaling)
    out = dict(hf)
    if asked is None and not (current_type != "default" and max_model_len is not None):
        if max_model_len is not None:
            out["max_position_embeddings"] = max_model_len
        return out
    scaling = dict(asked) if asked is not None else {k: v for k, v in current.items() if k != "factor"}
    if "type" in scaling:
        scaling["rope_type"] = scaling.pop("type")
    kind = scaling.get("rope_type", "default")
    if "factor" in scaling or max_model_len is not None or kind != "default":
        model_len = hf.get("max_position_embeddings")
        origin = scaling.get("original_max_position_embeddings") or current.get("original_max_position_embeddings")
        if origin is None and current_type != "default" and current.get("factor"):
            origin = int(model_len // current["factor"])
        origin = origin or model_len
        scaling["original_max_position_embeddings"] = origin
        if "factor" not in scaling:
            if max_model_len is None:
                raise ValueError(f"--rope_scaling {rope_scaling!r} has no factor: pass --max_model_len (the factor is "
                                 f"ceil(max_model_len / {origin})) or a factor in the JSON")
            scaling["factor"] = max(float(math.ceil(max_model_len / origin)), 1.0)
        rope_len = int(origin * scaling["factor"])
        if max_model_len is not None and max_model_len > rope_len:
            print(f"--max_model_len {max_model_len} exceeds what the rope scaling covers ({scaling['factor']} x {origin} = "
                  f"{rope_len})", file=sys.stderr)
        out["max_position_embeddings"] = max_model_len or rope_len
    for key in ("rope_theta", "partial_rotary_factor"):  # transformers 5 keeps them inside rope_parameters
        if key not in scaling and current.get(key) is not None:
            scaling[key] = current[key]
    out["rope_parameters"] = scaling
    out.pop("rope_scaling", None)
    return out
