"""Train and export a zoo model on the full default synthetic world, then score every held-out family.

    python experiments/zoo.py --model=student      # about an hour on a 2-core CPU
    python experiments/zoo.py --model=teacher [--workdir=runs/zoo/teacher] [--steps=N]

The config is `vlm_jax/configs/zoo.py:<model>`; the export lands in `runs/zoo/<model>/final`
(`vlm_jax.configs.zoo.ZOO_DIR`), where distillation, RL and the sweeps look by default. Rerunning
resumes from the last checkpoint. Prints the held-out table (score with its 95% interval, the
constant-answer baseline and the vision-off control per family) and a per-task breakdown.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_jax.configs import zoo  # noqa: E402


def per_task_table(results: dict) -> str:
    """Mean score per (family, source task) of the held-out predictions."""
    groups: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for p in results.get("predictions", []):
        groups[(p.get("family", "?"), p.get("task", "?"))].append(float(p.get("score", 0.0)))
    lines = [f"{'family':<16} {'task':<16} {'n':>5}  score"]
    for (fam, task), xs in sorted(groups.items()):
        lines.append(f"{fam:<16} {task:<16} {len(xs):>5}  {sum(xs) / len(xs):.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=zoo.MODELS, default="student")
    ap.add_argument("--workdir", default=None, help=f"default: {zoo.ZOO_DIR}/<model>")
    ap.add_argument("--steps", type=int, default=None, help="override the config's train steps")
    ap.add_argument("--eval_num", type=int, default=0, help="held-out items per family (0: the whole split)")
    args = ap.parse_args(argv)

    from vlm_jax.train.loop import train_and_evaluate

    c = zoo.get_config(args.model)
    if args.steps:
        c.train.num_train_steps = args.steps
        c.train.checkpoint.every_steps = max(1, min(c.train.checkpoint.every_steps, args.steps))
    c.eval.num_per_task = args.eval_num
    workdir = os.path.abspath(args.workdir or os.path.join(zoo.ZOO_DIR, args.model))
    summary = train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        results = json.load(f)
    print("\nper task:\n" + per_task_table(results), flush=True)
    print(json.dumps({"model": args.model, "workdir": workdir, "steps": summary["steps"],
                      "train_seconds": summary["train_seconds"], "final_params": summary.get("final_params")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
