"""`--report_to wandb swanlab`: the experiment trackers ms-swift reports to, beside tensorboard.

Each tracker gets the metric lines of `logging.jsonl` as scalars named as the tensorboard ones (`train/loss`,
`eval/eval_loss`) at their step, and the run's arguments as its config. Both are optional extras
(`pip install 'swift-jax[wandb]'`, `'swift-jax[swanlab]'`); asking for one that is not installed is an error
before training starts, never a silent no-op. Their own environment variables apply (WANDB_PROJECT,
WANDB_MODE=offline, WANDB_DIR, SWANLAB_API_KEY ...); swanlab reads ms-swift's `--swanlab_project`,
`--swanlab_exp_name`, `--swanlab_mode` (cloud | local | offline).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Sequence

REPORT_TO = ("tensorboard", "wandb", "swanlab", "none")


def check_report_to(report_to: Sequence[str]) -> list[str]:
    """The trackers of `--report_to` (ms-swift's `all` = every installed one); an unknown name, or a tracker whose
    package is missing, is an error naming the extra to install."""
    names = list(report_to)
    if "all" in names:
        names = ["tensorboard"] + [n for n in ("wandb", "swanlab") if _installed(n)]
    for name in names:
        if name not in REPORT_TO:
            raise ValueError(f"--report_to {name}: expected any of {', '.join(REPORT_TO)} (or all)")
        if name in ("wandb", "swanlab") and not _installed(name):
            raise ValueError(f"--report_to {name}: the {name} package is not installed; pip install 'swift-jax[{name}]' "
                             f"(or drop {name} from --report_to)")
    return [n for n in names if n != "none"]


def _installed(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


class Tracker:
    """One experiment tracker run: `log(scalars, step)`, `finish()`."""

    def __init__(self, name: str, run_dir: str, config: dict[str, Any], swanlab_args: dict[str, str | None]):
        self.name = name
        run_name = os.path.basename(os.path.normpath(run_dir))
        if name == "wandb":
            import wandb

            self.module = wandb
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "swift_jax"), name=run_name,
                                  dir=os.environ.get("WANDB_DIR", run_dir), config=config)
        else:
            import swanlab

            self.module = swanlab
            a = swanlab_args
            mode = {"cloud": "online"}.get(a.get("mode") or "cloud", a.get("mode"))  # ms-swift's cloud = swanlab's online
            self.run = swanlab.init(project=a.get("project") or "ms-swift", name=a.get("exp_name") or run_name, mode=mode,
                                    log_dir=os.path.join(run_dir, "swanlog"), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self) -> None:
        self.run.finish()


def open_trackers(names: Sequence[str], run_dir: str, config: dict[str, Any], swanlab_args: dict[str, str | None] | None = None) -> list[Tracker]:
    """A `Tracker` per wandb / swanlab name in `names` (tensorboard is the logger's own writer); `swanlab_args`:
    ms-swift's `project`, `exp_name`, `mode`."""
    return [Tracker(n, run_dir, config, swanlab_args or {}) for n in names if n in ("wandb", "swanlab")]
