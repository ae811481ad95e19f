"""The whole Qwen3-VL recipe at `tiny` scale on the synthetic world, stage after stage.

    python experiments/recipe_tiny.py [--workdir=runs/recipe_tiny] [--steps=40] [--stages=s0_align,...]
        [--size=tiny] [--thinking]

Runs S0 (merger only) -> S1 -> S2 -> S3 -> SFT 32K -> SFT 256K with the configs of
`vlm_jax/configs/recipe/` (scale=tiny), each stage initialised from the previous stage's
exported params, and prints one row per stage (first and last loss, what trained, tokens/s),
then the held-out evaluation of the last stage. Rerunning resumes: a finished stage (its
`final/` exists) is skipped, an interrupted one resumes from its checkpoint.
Stdout ends with one JSON line of the per-stage results.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import recipe  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", "runs/recipe_tiny", "one subdirectory per stage", flag_values=FLAGS)
flags.DEFINE_string("stages", ",".join(recipe.ORDER), "comma-separated, in recipe order", flag_values=FLAGS)
flags.DEFINE_integer("steps", None, "steps per stage (default: the tiny recipe's)", flag_values=FLAGS)
flags.DEFINE_string("size", "tiny", "model size (tiny, tiny-moe)", flag_values=FLAGS)
flags.DEFINE_bool("thinking", False, "SFT stages in the thinking format", flag_values=FLAGS)
flags.DEFINE_integer("eval_num", 100, "held-out items per task for the last stage", flag_values=FLAGS)


def run(args: flags.FlagValues) -> int:
    """Runs the recipe with the parsed flags `args` (`FLAGS`); returns the exit status."""
    from vlm_jax.train.loop import train_and_evaluate

    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in recipe.STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(recipe.ORDER)}")
    rows = []
    previous = None
    for i, name in enumerate(stages):
        c = recipe.stage_config(name, size=args.size, scale="tiny", thinking=args.thinking and recipe.STAGES[name].sft)
        workdir = os.path.join(args.workdir, name)
        c.init_from = previous or ""
        if args.steps:
            c.train.num_train_steps = args.steps
            c.train.checkpoint.every_steps = max(1, args.steps // 2)
        last = i == len(stages) - 1
        c.eval.tasks = ("counting", "grounding") if last else ()
        c.eval.num_per_task = args.eval_num
        c.log.progress = False
        print(f"\n=== {name}: {c.description} (init_from={c.init_from or 'random'}) ===", flush=True)
        if os.path.exists(os.path.join(workdir, "final", "model_config.json")) and not last:
            print(f"{workdir}/final exists: stage done, skipped", flush=True)
            with open(os.path.join(workdir, "summary.json")) as f:
                summary = json.load(f)
        else:
            summary = train_and_evaluate(c, workdir)
        o = c.train.optimizer
        trained = [p for p, frozen in (("vision", o.freeze_vision), ("merger", o.freeze_merger),
                                       ("llm", o.freeze_llm)) if not frozen]
        rows.append({"stage": name, "seq_len": c.data.pipeline.seq_len, "trained": "+".join(trained),
                     "steps": summary.get("steps"), "first_loss": summary.get("first_loss"),
                     "final_loss": summary.get("final_loss"), "tokens_per_second": summary.get("tokens_per_second"),
                     "eval": (summary.get("eval") or {}).get("tasks") if last else None})
        previous = workdir

    print("\n== recipe (tiny) ==")
    print(f"{'stage':<15} {'seq':>5} {'trained':<20} {'steps':>5} {'first':>7} {'final':>7} {'tok/s':>8}")
    for r in rows:
        print(f"{r['stage']:<15} {r['seq_len']:>5} {r['trained']:<20} {r['steps']:>5} "
              f"{r['first_loss']!s:>7} {r['final_loss']!s:>7} {r['tokens_per_second']!s:>8}")
    print(json.dumps(rows, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the recipe on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
