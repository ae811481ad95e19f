"""Train and export a zoo model on the full default synthetic world, then score every held-out family.

    python experiments/zoo.py --model=student      # about an hour on a 2-core CPU
    python experiments/zoo.py --model=teacher [--workdir=runs/zoo/teacher] [--steps=N]
    python experiments/zoo.py --model=teacher_upcycled   # after the student: upcycles its export first

The config is `vlm_jax/configs/zoo.py:<model>`; the export lands in `runs/zoo/<model>/final`
(`vlm_jax.configs.zoo.ZOO_DIR`), where distillation, RL and the sweeps look by default. Rerunning
resumes from the last checkpoint. Prints the held-out table (score with its 95% interval, the
constant-answer baseline and the vision-off control per family) and a per-task breakdown.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from vlm_jax import cli  # noqa: E402
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


FLAGS = flags.FlagValues()
flags.DEFINE_enum("model", "student", list(zoo.MODELS), "zoo model (a vlm_jax/configs/zoo.py config)",
                  flag_values=FLAGS)
flags.DEFINE_string("workdir", None, f"default: {zoo.ZOO_DIR}/<model>", flag_values=FLAGS)
flags.DEFINE_integer("steps", None, "override the config's train steps", flag_values=FLAGS)
flags.DEFINE_integer("eval_num", 0, "held-out items per family (0: the whole split)", flag_values=FLAGS)


def run(args: flags.FlagValues) -> int:
    """Trains, exports and scores the zoo model of the parsed flags `args` (`FLAGS`); returns the exit status."""
    from vlm_jax.train.loop import train_and_evaluate

    c = zoo.get_config(args.model)
    if args.model == "teacher_upcycled" and not os.path.isdir(c.init_from):
        from vlm_jax.params.upcycle import upcycle

        student = zoo.export_dir("student")
        if not os.path.isdir(student):
            raise FileNotFoundError(f"teacher_upcycled starts from the student's export {student!r}: "
                                    "run python experiments/zoo.py --model=student first")
        print(f"upcycling {student} -> {upcycle(student, c.init_from, **zoo.UPCYCLE)}", flush=True)
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


def main(argv: list[str] | None = None) -> int:
    """Runs the zoo training on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
