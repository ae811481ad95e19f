"""One PNG per metric of a sweep: each arm's mean over seeds with a +- std error bar, every seed as a dot,
and the constant-answer baseline (when the runs recorded one) as a dashed line. Runs that evaluated
during training (post-training runs: `eval.every`, `eval.at_start`) also get one curve per family: the
held-out score against the iteration, a thin line per seed and the arm's mean over seeds."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402


def file_name(metric: str) -> str:
    """A file name for a metric: `heldout/counting` -> `heldout_counting.png`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", metric).strip("_") + ".png"


def plot_metric(metric_summary: Mapping[str, Any], arms: Sequence[str], *, metric: str, arm_key: str,
                reference: str, path: str | Path, baseline: float | None = None) -> Path:
    """Writes the metric's PNG to `path` (see the module docstring) and returns the path."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(arms) + 2), 3.6))
    try:
        for i, a in enumerate(arms):
            s = metric_summary["arms"][a]
            values = list(s["seeds"].values())
            ax.scatter([i + 0.12] * len(values), values, s=14, color="0.35", zorder=3,
                       label="seeds" if i == 0 else None)
            if s["n"]:
                std = s["std"] if math.isfinite(s["std"]) else 0.0
                ax.errorbar([i], [s["mean"]], yerr=[std], fmt="o", color="C0" if a != reference else "C1",
                            capsize=4, markersize=7, zorder=4)
        if baseline is not None and math.isfinite(baseline):
            ax.axhline(baseline, color="0.5", linestyle="--", linewidth=1, label=f"baseline {baseline:.3f}")
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([f"{a}\n(reference)" if a == reference else a for a in arms])
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_xlabel(arm_key)
        better = "higher" if metric_summary.get("higher_is_better", True) else "lower"
        ax.set_title(f"{metric} (mean +- std over seeds; {better} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)


def plot_curves(curves: Mapping[str, Mapping[int, Sequence[tuple[int, float]]]], *, metric: str, arm_key: str,
                path: str | Path) -> Path:
    """Writes the held-out curves of one metric, {arm: {seed: [(step, value), ...]}}, to `path`: each seed
    a thin line, each arm's mean over the seeds that reached a step a thick one."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    try:
        for i, (arm, seeds) in enumerate(curves.items()):
            color = f"C{i % 10}"
            by_step: dict[int, list[float]] = {}
            for points in seeds.values():
                steps, values = zip(*sorted(points)) if points else ((), ())
                ax.plot(steps, values, color=color, alpha=0.35, linewidth=0.8)
                for step, value in points:
                    by_step.setdefault(step, []).append(value)
            steps = sorted(by_step)
            ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], color=color, linewidth=2.2,
                    marker="o", markersize=3, label=f"{arm_key}={arm} (n={len(seeds)})")
        ax.set_xlabel("iteration")
        ax.set_title(f"{metric} during training (thin: seeds; thick: mean)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    """Lays out, writes and closes `fig`."""
    try:
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
