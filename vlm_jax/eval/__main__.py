"""python -m vlm_jax.eval: score a checkpoint on held-out synthetic tasks or a JSONL file with answers.

  python -m vlm_jax.eval --checkpoint=runs/synthetic_tiny --tasks=grounding,counting [--split=eval] [--num=100]
      [--jsonl=FILE] [--batch_size=8] [--max_new_tokens=64] [--preset=greedy] [--thinking] [--out=DIR]
      [--processor='{"min_pixels": 4096, "max_pixels": 4096}'] [--world='{...}']

--checkpoint: a params dir (`model_config.json` + `params/`, optionally `tokenizer.json` and
`processor_config.json`) or a training workdir holding one in `final/`. Images are processed with
--processor (JSON), else the checkpoint's `processor_config.json`, else the processor defaults: use the
settings the model was trained with. Prints a table with trivial
baselines (fitted on the train split, synthetic tasks only); with --out writes results.json and PNGs.
Errors (missing checkpoint, unknown task or preset, bad JSONL) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vlm_jax.eval import tasks as tasks_lib


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m vlm_jax.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="params dir or training workdir")
    ap.add_argument("--tasks", default=None,
                    help=f"comma-separated, from: {', '.join(tasks_lib.FAMILIES)} "
                         "(default: grounding,counting; with --jsonl every task in the file)")
    ap.add_argument("--split", default="eval", help="held-out synthetic split (eval | test)")
    ap.add_argument("--num", type=int, default=100, help="items per task")
    ap.add_argument("--jsonl", default=None, help="a JSONL file with reference answers instead of the synthetic world")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--preset", default="greedy", help="sampling preset: greedy | instruct | thinking")
    ap.add_argument("--thinking", action="store_true", help="use the Thinking chat template (implied by "
                    "--preset=thinking)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n_train", type=int, default=200, help="train samples per task for the baselines (0: none)")
    ap.add_argument("--out", default=None, help="output dir for results.json and PNG visualisations")
    ap.add_argument("--num_visualizations", type=int, default=16)
    ap.add_argument("--progress", action="store_true", help="print a line per batch to stderr")
    ap.add_argument("--processor", default=None,
                    help='processor settings as JSON, e.g. \'{"min_pixels": 4096, "max_pixels": 4096}\' '
                         "(default: the checkpoint's processor_config.json)")
    ap.add_argument("--world", default=None,
                    help="synthetic world overrides as JSON, e.g. '{\"image_size\": [96, 96]}'")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from vlm_jax.data.synthetic import SyntheticWorld
    from vlm_jax.eval import harness
    from vlm_jax.inference.loading import load_model, parse_json_object, processor_config_for
    from vlm_jax.inference.sampling import get_preset

    # Cheap checks first, so a typo fails before the checkpoint is read.
    families = tasks_lib.check_task_names(args.tasks.split(",")) if args.tasks else None
    get_preset(args.preset)
    for name in ("num", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.jsonl is None:
        families = families or ["grounding", "counting"]
    try:
        world = SyntheticWorld(parse_json_object(args.world, "--world") if args.world is not None else {})
    except KeyError as e:
        raise ValueError(f"--world: {e.args[0]}") from e
    processor = processor_config_for(args.checkpoint, args.processor)
    items = tasks_lib.load_items(families, split=args.split, num_per_task=args.num, world=world, jsonl=args.jsonl)
    if not items:
        raise ValueError("no items to evaluate (does the JSONL file hold the requested tasks?)")
    model_config, params, tokenizer = load_model(args.checkpoint)
    report = harness.evaluate(model_config, params, tokenizer, items, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, preset=args.preset,
                              thinking=args.thinking or args.preset == "thinking",
                              processor=processor, progress=args.progress, seed=args.seed)
    baselines = {}
    if args.n_train > 0 and args.jsonl is None:
        baselines = harness.trivial_baselines(report.families(), world, n_train=args.n_train)
    print(report.table(baselines or None))
    if args.out:
        from vlm_jax.eval import visualize

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result = report.to_json(baselines or None)
        result["settings"].update(checkpoint=str(args.checkpoint), split=args.split, jsonl=args.jsonl,
                                  processor=dataclasses.asdict(processor) if processor else None)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        pngs = visualize.write_visualizations(report, items, out, n=args.num_visualizations)
        print(f"wrote {out / 'results.json'} and {len(pngs)} PNGs", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (2 with a one-line message on bad inputs)."""
    from vlm_jax.inference.loading import run_cli

    return run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
