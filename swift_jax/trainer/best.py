"""Which evaluation is best and when to stop: transformers' `metric_for_best_model` / `greater_is_better`
(the best checkpoint that rotation spares, `best_model_checkpoint`, `load_best_model_at_end`) and ms-swift's
`EarlyStopCallback` (`--early_stop_interval`)."""

from __future__ import annotations

import dataclasses


def metric_key(name: str) -> str:
    """The logged key of `--metric_for_best_model` (transformers prefixes `eval_` when it is missing)."""
    return name if name.startswith("eval_") else f"eval_{name}"


@dataclasses.dataclass
class BestMetric:
    """The best value of one eval metric so far and the step it was reached at."""

    metric: str
    greater_is_better: bool
    value: float | None = None
    step: int | None = None

    def update(self, result: dict[str, float], step: int) -> bool:
        """Record the evaluation `result` of `step`; True when it is a new best (ties are not)."""
        key = metric_key(self.metric)
        if key not in result:
            raise ValueError(f"--metric_for_best_model {self.metric}: the evaluation reports no {key!r}; "
                             f"it reports {sorted(k for k in result if k.startswith('eval_'))}")
        value = float(result[key])
        better = self.value is None or (value > self.value if self.greater_is_better else value < self.value)
        if better:
            self.value, self.step = value, step
        return better


@dataclasses.dataclass
class EarlyStop:
    """ms-swift's EarlyStopCallback: at every checkpoint save, compare the best metric so far with the one seen at
    the previous saves; `interval` saves in a row without improvement stop training (after that save)."""

    interval: int
    greater_is_better: bool
    best: float | None = None
    stale: int = 0

    def on_save(self, best_value: float | None) -> bool:
        """Count this save; True when training should stop."""
        improved = best_value is not None and self.best is not None and (
            best_value > self.best if self.greater_is_better else best_value < self.best)
        if self.best is None or improved:
            self.best, self.stale = best_value, 0
        else:
            self.stale += 1
        return self.stale >= self.interval
