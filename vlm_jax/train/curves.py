"""curves.png: did the run learn? Loss per task over steps, and held-out scores next to their
trivial baseline and vision-off control.

    path = write_curves(workdir)   # reads metrics.jsonl and eval/results.json from the workdir

Left panel: the training loss of each task (`task_loss/<name>` lines of metrics.jsonl) and the
total. Middle panel (when the run logged them): the visual-pathway probe (`vision/...`), the drop
in answer log-probability when images are swapped between samples. Right panel: per task, the
held-out score with its 95% interval, the constant-answer baseline and the vision-off control.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on training hosts
import matplotlib.pyplot as plt  # noqa: E402

CURVES_FILE = "curves.png"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """Every line of `metrics.jsonl` (training windows, probe measurements, evaluation)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_eval(workdir: str) -> Mapping[str, Any]:
    path = os.path.join(workdir, "eval", "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _score_bars(ax, tasks: Mapping[str, Mapping[str, Any]]) -> None:
    names = sorted(tasks)
    width = 0.27
    from vlm_jax.eval.tasks import FAMILIES

    metrics = {n: FAMILIES[n].metric if n in FAMILIES else "score" for n in names}
    for i, name in enumerate(names):
        t = tasks[name]
        score = t.get(metrics[name])
        if score is None:
            continue
        low, high = t.get("ci95", [score, score])
        ax.bar(i - width, score, width, color="tab:blue", label="model" if i == 0 else None,
               yerr=[[score - low], [high - score]], capsize=3)
        if t.get("baseline") is not None:
            ax.bar(i, t["baseline"], width, color="tab:gray", label="baseline" if i == 0 else None)
        if t.get("vision_off") is not None:
            ax.bar(i + width, t["vision_off"], width, color="tab:orange", label="vision-off" if i == 0 else None)
    ax.set_xticks(range(len(names)), [f"{n}\n{metrics[n]}, n={tasks[n].get('n', '?')}" for n in names], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("held-out scores (95% CI)")
    ax.legend(fontsize=7)


def write_curves(workdir: str, out: str | None = None) -> str | None:
    """Writes the figure (default `<workdir>/curves.png`) and returns its path; None when there is
    nothing to plot yet (no logged step)."""
    lines = read_metrics(workdir)
    rows = [r for r in lines if "loss" in r]
    if not rows:
        return None
    results = read_eval(workdir)
    probe = [r for r in lines if "vision/logprob_drop_on_swap" in r]
    panels = 1 + bool(probe) + bool(results.get("tasks"))
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    axes = list(axes[0])

    ax = axes.pop(0)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], color="black", lw=2, label="total")
    tasks = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("task_loss/")})
    for t in tasks:
        pts = [(r["step"], r[f"task_loss/{t}"]) for r in rows if f"task_loss/{t}" in r]
        ax.plot(*zip(*pts), lw=1, label=t)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss per task")
    ax.legend(fontsize=7)

    if probe:
        ax = axes.pop(0)
        ax.plot([r["step"] for r in probe], [r["vision/logprob_drop_on_swap"] for r in probe], color="tab:green")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xlabel("step")
        ax.set_title("answer log-prob drop when images are swapped")
    if results.get("tasks"):
        _score_bars(axes.pop(0), results["tasks"])

    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    path = out or os.path.join(workdir, CURVES_FILE)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
