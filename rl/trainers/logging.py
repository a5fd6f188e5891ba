"""Run logging: a TorchRL logger (CSV by default, TensorBoard optional) plus ``metrics.jsonl``.

``metrics.jsonl`` has one JSON object per logged iteration (env steps, wall time, every
scalar); ``plot_curves`` draws ``curve.png`` from it: return against env steps and
against wall-clock time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rl.trainers.checkpoint import atomic_write_text

LOGGER_KINDS = ("csv", "tensorboard", "none")


class RunLogger:
    """Logs scalars to ``<run_dir>/metrics.jsonl`` and a TorchRL logger under ``<run_dir>/logs``."""

    def __init__(self, run_dir: str | Path, kind: str = "csv", exp_name: str = "run"):
        if kind not in LOGGER_KINDS:
            raise ValueError(f"unknown logger {kind!r}; valid: {', '.join(LOGGER_KINDS)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.torchrl_logger = None
        if kind != "none":
            from torchrl.record.loggers import get_logger

            self.torchrl_logger = get_logger(kind, logger_name=str(self.run_dir / "logs"), experiment_name=exp_name)

    def log(self, step: int, **scalars: float) -> None:
        record = {"step": int(step)}
        for key, value in scalars.items():
            value = float(value)
            record[key] = value if math.isfinite(value) else str(value)
            if self.torchrl_logger is not None and math.isfinite(value):
                self.torchrl_logger.log_scalar(key, value, step=int(step))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a resumed run re-logs them)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if (record := parse_record(line)) and record["step"] <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))  # a kill here leaves the old file whole


def progress_postfix(scalars: dict, rate: float, last_eval: dict | None, warning: str | None = None) -> dict:
    """The progress bar's postfix: recent training return ("-" until an episode has finished), env-steps/s,
    the last evaluation return and, while the policy has stopped learning, ``warn`` (what the stall monitor saw)."""
    ret = scalars.get("train/episode_return", float("nan"))
    postfix = {"ret": "-" if ret != ret else f"{ret:.1f}", "steps/s": f"{rate:,.0f}"}
    if last_eval:
        postfix["eval"] = f"{last_eval['eval/return']:.1f}"
    if warning:
        postfix["warn"] = f"STALLED ({warning[:60]})"
    return postfix


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [record for line in path.read_text().splitlines() if (record := parse_record(line))]


def parse_record(line: str) -> dict | None:
    """One metrics.jsonl record; None for a blank line or the partial last line of a process killed while appending."""
    try:
        record = json.loads(line) if line.strip() else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def plot_curves(metrics_path: str | Path, out_path: str | Path, title: str = "",
                keys: tuple[str, ...] = ("eval/return", "train/episode_return")) -> Path | None:
    """``curve.png``: each of ``keys`` present in the metrics, against env steps and against wall time (s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    for key in keys:
        rows = [r for r in records if isinstance(r.get(key), float) and "time/wall" in r]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        wall = [r["time/wall"] for r in rows]
        vals = [r[key] for r in rows]
        ci_key = key + "_ci95"
        for ax, x in zip(axes, (steps, wall)):
            ax.plot(x, vals, label=key, marker="o" if key.startswith("eval") else None, ms=3)
            if all(isinstance(r.get(ci_key), float) for r in rows):
                ci = [r[ci_key] for r in rows]
                ax.fill_between(x, [v - c for v, c in zip(vals, ci)], [v + c for v, c in zip(vals, ci)], alpha=0.2)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall-clock time (s)")
    for ax in axes:
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
