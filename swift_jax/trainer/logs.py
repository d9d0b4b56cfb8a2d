"""Run folder, metric logs (jsonl, tensorboard), PNG plots and the progress bar; process 0 only."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import jax
from tqdm.auto import tqdm


def format_time(seconds: float) -> str:
    """ms-swift's duration format: `1h 2m 3s`, `2m 3s`, `3s`."""
    total = round(seconds)
    days, hours, minutes, secs = total // 86400, total % 86400 // 3600, total % 3600 // 60, total % 60
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def peak_memory_gib() -> float:
    """Peak memory of this process's first device (its allocator's peak), or the process's peak RSS where the
    device reports none (CPU), in GiB."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("peak_bytes_in_use"):
        return stats["peak_bytes_in_use"] / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def progress_fields(step: int, max_steps: int, elapsed: float, steps_done: int) -> dict[str, Any]:
    """The keys ms-swift adds to every `logging.jsonl` line: `global_step/max_steps`, `percentage`,
    `elapsed_time`, `remaining_time`, `memory(GiB)`, `train_speed(s/it)` (over this run's steps so far)."""
    speed = elapsed / steps_done if steps_done > 0 else 0.0
    return {
        "global_step/max_steps": f"{step}/{max_steps}",
        "percentage": f"{100 * step / max(max_steps, 1):.2f}%",
        "elapsed_time": format_time(elapsed),
        "remaining_time": format_time((max_steps - step) * speed),
        "memory(GiB)": round(peak_memory_gib(), 2),
        "train_speed(s/it)": round(speed, 6),
    }


class RunLogger:
    """Writes `logging.jsonl`, tensorboard events and `images/*.png` in a run folder and drives a tqdm bar.

    As in ms-swift, the PNG plots come with `--report_to tensorboard` (matplotlib is not even imported
    otherwise); they are first drawn a minute into the run, then at most once a minute, and at the end."""

    PLOT_INTERVAL_S = 60.0  # redraw the PNGs at most this often (a redraw costs ~0.5 s of the training loop)
    PLOTS = {"train_loss": "loss", "eval_loss": "eval_loss", "learning_rate": "learning_rate", "eval_token_acc": "eval_token_acc"}

    def __init__(self, run_dir: str, *, total_steps: int, initial_step: int = 0, enabled: bool = True, tensorboard: bool = True,
                 trackers: Sequence = ()):
        """`trackers`: open `trainer.trackers.Tracker`s (wandb, swanlab) that receive the same scalars."""
        self.run_dir, self.enabled = run_dir, enabled
        self.trackers = list(trackers)
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for k in self.PLOTS}
        self.writer = None
        self.bar = None
        self._plotted_at = time.monotonic()
        self.plots = tensorboard
        if not enabled:
            return
        self._load_history()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(run_dir, "runs"))
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="Train", dynamic_ncols=True)

    def _load_history(self) -> None:
        path = os.path.join(self.run_dir, "logging.jsonl")
        if not os.path.exists(path):
            return
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "step" in record:  # not a summary line
                    self._remember(record)

    def _remember(self, record: dict[str, Any]) -> None:
        for plot, key in self.PLOTS.items():
            if key in record:
                self.history[plot].append((record["step"], record[key]))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold `step`) to logging.jsonl and tensorboard; redraw the plots when the
        last redraw is older than `PLOT_INTERVAL_S` (and always on `close`)."""
        if not self.enabled:
            return
        with open(os.path.join(self.run_dir, "logging.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {("eval/" if key.startswith("eval_") else "train/") + key: value for key, value in record.items()
                   if isinstance(value, (int, float)) and key != "step"}
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()
        for tracker in self.trackers:
            tracker.log(scalars, record["step"])
        self._remember(record)
        if self.plots and time.monotonic() - self._plotted_at >= self.PLOT_INTERVAL_S:
            self._plot()
        shown = {k: f"{record[k]:.4g}" for k in ("loss", "eval_loss", "tokens_per_sec") if k in record}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}))

    def summary(self, record: dict[str, Any]) -> None:
        """The last line of `logging.jsonl`, ms-swift's end-of-training summary (no `step` key)."""
        if self.enabled:
            with open(os.path.join(self.run_dir, "logging.jsonl"), "a") as f:
                f.write(json.dumps(record, default=str) + "\n")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def _plot(self) -> None:
        self._plotted_at = time.monotonic()
        os.makedirs(os.path.join(self.run_dir, "images"), exist_ok=True)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for name, points in self.history.items():
            if not points:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None)
            ax.set_xlabel("step")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(os.path.join(self.run_dir, "images", f"{name}.png"))
            plt.close(fig)

    def close(self) -> None:
        if self.enabled and self.plots and any(self.history.values()):
            self._plot()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.finish()
