"""ms-swift's `--loss_scale`: which template pieces are trained, and with what weight.

`--loss_scale` is `[BASE+]NAME[+NAME...]`:

- BASE (default `default`): `default` trains every assistant response (and its end-of-turn suffix),
  `last_round` only the responses after the last user/tool message, `all` every token (`swift pt`).
- NAME: a weighting of the trained text, applied in order with the weights multiplied:
  `ignore_empty_think` (weight 0 on an empty `<think>\\n\\n</think>\\n\\n` at the start of a response),
  `ignore_think_prefix` (weight 0 on a leading `<think>\\n`), and the agent weightings `react`, `qwen`,
  `hermes`, `agentflan`, `alpha_umi` (weight 2 on the tool-call parts, 0 on `Observation:` text).

A message's own `loss` (true/false) overrides the base strategy for that response and its `loss_scale`
(a float) replaces the computed weight. Tokens of weight 0 get label -100. When the strategy can give weights
other than 0 and 1 (ms-swift's `is_binary_loss_scale` false: react, qwen, hermes, agentflan, alpha_umi) every
token also carries its weight, and the loss is `sum(weight * token loss) / (tokens with label != -100)`.

The rules are ms-swift 4.6's `swift/loss_scale/` (configs copied verbatim).
"""

from __future__ import annotations

import re

from swift_jax.data.errors import DataError

BASE_STRATEGIES = ("default", "last_round", "all")
RESPONSE, SUFFIX, OTHER = "response", "suffix", "other"
"""Context types of the pieces of a rendered conversation (ms-swift's ContextType)."""

# name -> {delimiter: [weight of the delimiter, weight of the text after it]} or {regex: [weight]}
CONFIGS: dict[str, dict[str, list[float]] | None] = {
    "base": None,
    "ignore_empty_think": {
        r"^<think>\s*</think>\s*": [0.0],
        r"^<seed:think><seed:cot_budget_reflect>The current thinking budget is 0, so I will directly start answering "
        r"the question.</seed:cot_budget_reflect>\n</seed:think>\s*": [0.0],
        r"^</think>\s*": [0.0],
        r"^<\|channel>thought\n<channel\|>": [0.0],
        r"^</mm:think>\s*": [0.0],
    },
    "ignore_think_prefix": {r"^<think>\n?": [0.0]},
    "react": {"Action:": [2.0, 2.0], "Action Input:": [2.0, 2.0], "Thought:": [1.0, 1.0], "Final Answer:": [1.0, 1.0],
              "Observation:": [2.0, 0.0]},
    "qwen": {"✿FUNCTION✿:": [2.0, 2.0], "✿ARGS✿:": [2.0, 2.0], "✿RETURN✿:": [1.0, 1.0], "✿RESULT✿:": [2.0, 0.0]},
    "hermes": {r"<tool_call>.+?</tool_call>": [2.0]},
    "alpha_umi": {"Action:": [2.0, 2.0], "Action Input:": [2.0, 2.0], "Thought:": [1.0, 1.0], "Final Answer:": [1.0, 1.0],
                  "Observation:": [2.0, 0.0], "Next:": [2.0, 2.0]},
    "agentflan": {"Name:": [1.0, 3.0], "Action:": [1.0, 3.0], "ACTION:": [1.0, 3.0], "Tool:": [1.0, 3.0],
                  "Command": [1.0, 3.0], "Arguments:": [1.0, 3.0], "action input": [1.0, 3.0],
                  "ACTION_INPUT:": [1.0, 3.0], "Action Input:": [1.0, 3.0], "Thought:": [1.0, 1.0],
                  "Final Answer:": [1.0, 1.0], "Observation:": [2.0, 0.0]},
}
AGENTFLAN_QUERY = {"What is the tool you want to use": 3.0, "What are the required parameter names": 3.0,
                   "What is the value of": 3.0, "What are the required parameter names for this tool": 3.0}


def split_by(text: str, delimiters: list[str], regex: bool = False) -> list[tuple[str, str]]:
    """`text` cut at the delimiters into (delimiter, following text) pairs (ms-swift's split_str_parts_by)."""
    patterns = delimiters if regex else [re.escape(d) for d in delimiters]
    if patterns:
        parts = [p for p in re.split("|".join(f"({p})" for p in patterns), text, flags=re.DOTALL) if p is not None]
        parts = parts[1:] if parts[0] == "" else [""] + parts
    else:
        parts = ["", text]
    if not regex:
        return list(zip(parts[::2], parts[1::2]))
    out = []
    for part in (p for p in parts if p):
        key = next((d for d, p in zip(delimiters, patterns) if re.match(p, part, re.DOTALL)), "")
        out.append((key, part))
    return out


def weigh_text(text: str, config: dict[str, list[float]]) -> tuple[list[str], list[float]]:
    """Pieces of one response and their weights under one config (ms-swift's calculate_loss_scale)."""
    pairs = [k for k, v in config.items() if len(v) == 2]
    regex = not pairs
    pieces, weights = [], []
    for key, content in split_by(text, pairs or [k for k, v in config.items() if len(v) == 1], regex=regex):
        scale = config.get(key)
        if scale is None:
            pieces.append(content)
            weights.append(1.0)
        elif len(scale) == 1:
            pieces.append(content)
            weights.append(scale[0])
        else:
            pieces += [key, content]
            weights += scale
    return pieces, weights


class LossScale:
    """A parsed `--loss_scale`: `base` strategy and the chain of weightings `names`."""

    def __init__(self, spec: str):
        parts = spec.split("+")
        self.spec = spec
        self.base = parts[0] if parts[0] in BASE_STRATEGIES else "default"
        self.names = (parts[1:] if parts[0] in BASE_STRATEGIES else parts) or ["base"]
        unknown = [n for n in self.names if n not in CONFIGS]
        if unknown:
            raise DataError(f"--loss_scale {spec!r}: unknown part(s) {unknown}; a loss_scale is "
                            f"[{'|'.join(BASE_STRATEGIES)}+]NAME[+NAME...] with NAME in {sorted(CONFIGS)}")

    @property
    def is_binary(self) -> bool:
        """Whether every weight is 0 or 1 (then labels alone carry the loss mask, as in ms-swift)."""
        if "agentflan" in self.names:
            return False
        return all(w in (0.0, 1.0) for n in self.names if CONFIGS[n] for ws in CONFIGS[n].values() for w in ws)

    def weigh(self, context, query: str | None) -> tuple[list, list[float]]:
        """Pieces and weights of one trained response piece, through the chain of weightings."""
        pieces, weights = [context], [1.0]
        for name in self.names:
            config = CONFIGS[name]
            next_pieces, next_weights = [], []
            for piece, weight in zip(pieces, weights):
                if not isinstance(piece, str) or config is None:
                    sub, sub_w = [piece], [1.0]
                elif name == "agentflan" and query is not None and any(k in query for k in AGENTFLAN_QUERY):
                    sub, sub_w = [piece], [next(v for k, v in AGENTFLAN_QUERY.items() if k in query)]
                else:
                    sub, sub_w = weigh_text(piece, config)
                next_pieces += sub
                next_weights += [weight * w for w in sub_w]
            pieces, weights = next_pieces, next_weights
        return pieces, weights

    def __call__(self, contexts: list, types: list[str], messages: list[dict]) -> tuple[list, list[float]]:
        """Weights of the pieces of a rendered conversation (pieces may be split further); `messages` are the
        query/response pairs the pieces came from (ms-swift's LossScale.__call__)."""
        out, out_w = [], []
        last_user = _last_user_round(messages)
        i = 0
        for context, kind in zip(contexts, types):
            is_last_round = 2 * i >= last_user
            query = loss = scale = None
            if kind == RESPONSE:
                query = messages[2 * i]["content"]
                loss, scale = messages[2 * i + 1].get("loss"), messages[2 * i + 1].get("loss_scale")
                i += 1
            segments = context if isinstance(context, list) and context and not isinstance(context[0], int) else [context]
            for j, segment in enumerate(segments):
                seg_loss = loss[j] if isinstance(loss, list) else loss
                seg_scale = scale[j] if isinstance(scale, list) else scale
                is_assistant = kind in (RESPONSE, SUFFIX)
                trained = seg_loss or seg_loss is None and (
                    self.base == "all" or is_assistant and (self.base == "default" or is_last_round))
                if not trained:
                    pieces, weights = [segment], [0.0]
                elif seg_scale is not None:
                    pieces, weights = [segment], [float(seg_scale)]
                else:
                    pieces, weights = self.weigh(segment, query)
                out += pieces
                out_w += weights
        return out, out_w


def _last_user_round(messages: list[dict]) -> int:
    """Index of the last user or tool message (-1 when none)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] in ("user", "tool"):
            return i
    return -1
