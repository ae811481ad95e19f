"""python -m vlm_jax.eval: score a checkpoint on held-out synthetic tasks, a JSONL file with answers, or a
public benchmark in its own file layout.

  python -m vlm_jax.eval --checkpoint=runs/synthetic_tiny --tasks=grounding,counting [--split=eval] [--num=0]
      [--jsonl=FILE] [--batch_size=8] [--max_new_tokens=64] [--preset=greedy] [--thinking] [--vision_off]
      [--out=DIR] [--processor='{"min_pixels": 4096, "max_pixels": 4096}'] [--world='{...}']
  python -m vlm_jax.eval --benchmark=docvqa --data=DIR --ckpt=CKPT [--num=0] [--batch_size=8]
      [--max_new_tokens=N] [--out=DIR] [--video_fps=2]

Benchmark mode (`vlm_jax.eval.benchmarks` lists the names and the layouts read): --data is the folder the
dataset unpacks to (or one of its files); --ckpt (= --checkpoint) is our params dir or a Hugging Face
Qwen3-VL checkpoint dir (config.json + safetensors). Prints a progress bar and a summary table; writes
predictions.json and summary.json to --out (default eval_results/<benchmark>). --max_new_tokens defaults
to the benchmark's; --num caps the questions; --video_fps is the rate of videos given as frame folders
or .npy arrays.

--checkpoint: a params dir (`model_config.json` + `params/`, optionally `tokenizer.json` and
`processor_config.json`) or a training workdir holding one in `final/`. Images are processed with
--processor (JSON), else the checkpoint's `processor_config.json`, else the processor defaults: use the
settings the model was trained with. Scores the whole held-out split unless --num caps the items
per task. Prints a table (n, score with its 95% interval) with trivial baselines (fitted on the train
split, synthetic tasks only) and, with --vision_off, the vision-off control (each item's image swapped
for another item's); with --out writes results.json and PNGs.
Errors (missing checkpoint, unknown task or preset, bad JSONL) print one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import flags

from vlm_jax import cli
from vlm_jax.eval import tasks as tasks_lib

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "params dir or training workdir", flag_values=FLAGS)
flags.DEFINE_string("tasks", None, f"comma-separated, from: {', '.join(tasks_lib.FAMILIES)} "
                    "(default: grounding,counting; with --jsonl every task in the file)", flag_values=FLAGS)
flags.DEFINE_string("split", "eval", "held-out synthetic split (eval | test)", flag_values=FLAGS)
flags.DEFINE_integer("num", 0, "items per task (0: all, the whole split or file)", flag_values=FLAGS)
flags.DEFINE_string("jsonl", None, "a JSONL file with reference answers instead of the synthetic world",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 8, "prompts per generate call", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate at most per item", flag_values=FLAGS)
flags.DEFINE_string("preset", "greedy", "sampling preset: greedy | instruct | thinking", flag_values=FLAGS)
flags.DEFINE_bool("thinking", False, "use the Thinking chat template (implied by --preset=thinking)",
                  flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=FLAGS)
flags.DEFINE_bool("vision_off", False,
                  "also score the vision-off control (each item with another item's image of its task)",
                  flag_values=FLAGS)
flags.DEFINE_integer("n_train", 200, "train samples per task for the baselines (0: none)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output dir for results.json and PNG visualisations", flag_values=FLAGS)
flags.DEFINE_integer("num_visualizations", 16, "PNGs to write with --out", flag_values=FLAGS)
flags.DEFINE_bool("progress", False, "print a line per batch to stderr", flag_values=FLAGS)
flags.DEFINE_string("processor", None, 'processor settings as JSON, e.g. \'{"min_pixels": 4096, "max_pixels": 4096}\' '
                    "(default: the checkpoint's processor_config.json)", flag_values=FLAGS)
flags.DEFINE_string("world", None, "synthetic world overrides as JSON, e.g. '{\"image_size\": [96, 96]}'",
                    flag_values=FLAGS)
flags.DEFINE_alias("ckpt", "checkpoint", flag_values=FLAGS)
flags.DEFINE_string("benchmark", None, "a public benchmark (vlm_jax.eval.benchmarks), read from --data",
                    flag_values=FLAGS)
flags.DEFINE_string("data", None, "--benchmark: the folder its dataset unpacks to, or one of its files",
                    flag_values=FLAGS)
flags.DEFINE_float("video_fps", 2.0, "--benchmark: frame rate of videos given as frame folders or .npy arrays",
                   flag_values=FLAGS)
flags.mark_flag_as_required("checkpoint", flag_values=FLAGS)


def run(args: flags.FlagValues) -> int:
    """Evaluates with the parsed flags `args` (`FLAGS`); returns the exit status."""
    from vlm_jax.data.synthetic import SyntheticWorld
    from vlm_jax.eval import harness
    from vlm_jax.inference.loading import load_model

    if args.benchmark is not None or args.data is not None:
        return run_benchmark(args)
    # Cheap checks first, so a typo fails before the checkpoint is read.
    families = tasks_lib.check_task_names(args.tasks.split(",")) if args.tasks else None
    _check_generation_flags(args)
    if args.num < 0:
        raise ValueError(f"--num must be >= 0 (0: the whole split), got {args.num}")
    if args.jsonl is None:
        families = families or ["grounding", "counting"]
    try:
        world = SyntheticWorld(cli.parse_json_object(args.world, "--world") if args.world is not None else {})
    except KeyError as e:
        raise ValueError(f"--world: {e.args[0]}") from e
    processor = _processor(args)
    items = tasks_lib.load_items(families, split=args.split, num_per_task=args.num, world=world, jsonl=args.jsonl)
    if not items:
        raise ValueError("no items to evaluate (does the JSONL file hold the requested tasks?)")
    model_config, params, tokenizer = load_model(args.checkpoint)
    report = harness.evaluate(model_config, params, tokenizer, items, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, preset=args.preset,
                              thinking=args.thinking or args.preset == "thinking",
                              processor=processor, progress=args.progress, seed=args.seed,
                              vision_off_control=args.vision_off)
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
                                  processor=processor.to_dict() if processor else None)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        pngs = visualize.write_visualizations(report, items, out, n=args.num_visualizations)
        print(f"wrote {out / 'results.json'} and {len(pngs)} PNGs", file=sys.stderr)
    return 0


def run_benchmark(args: flags.FlagValues) -> int:
    """--benchmark mode (see the module docstring); returns the exit status."""
    from vlm_jax.eval import benchmarks
    from vlm_jax.eval.benchmarks import run as bench_run
    from vlm_jax.inference.loading import load_model

    if args.benchmark is None or args.data is None:
        raise ValueError("benchmark mode needs both --benchmark and --data")
    stray = [f"--{f}" for f in ("tasks", "jsonl", "split", "vision_off", "world", "n_train", "num_visualizations")
             if args[f].present]
    if stray:
        raise ValueError(f"--benchmark does not take {', '.join(stray)}")
    bench = benchmarks.get(args.benchmark)
    _check_generation_flags(args)
    if not args.video_fps > 0:
        raise ValueError(f"--video_fps must be positive, got {args.video_fps}")
    items = bench_run.load_items(bench, args.data, num=args.num,
                                 options=benchmarks.ReadOptions(video_fps=args.video_fps))
    processor = _processor(args)
    model_config, params, tokenizer = load_model(args.checkpoint)
    report = bench_run.evaluate(bench, items, model_config, params, tokenizer, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens if args["max_new_tokens"].present else None,
                                preset=args.preset, thinking=args.thinking or args.preset == "thinking",
                                processor=processor, seed=args.seed)
    report.settings.update(checkpoint=str(args.checkpoint), data=str(args.data), num=args.num,
                           processor=processor.to_dict() if processor else None)
    print(report.table())
    pred, summary = report.write(args.out or Path("eval_results") / bench.name)
    print(f"wrote {pred} and {summary}", file=sys.stderr)
    return 0


def _check_generation_flags(args: flags.FlagValues) -> None:
    """The sampling preset and generation sizes both modes take (cheap: before any file is read)."""
    from vlm_jax.inference.sampling import get_preset

    get_preset(args.preset)
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")


def _processor(args: flags.FlagValues):
    """--processor (JSON) over the checkpoint's processor_config.json, over the defaults."""
    from vlm_jax.inference.loading import processor_config_for

    override = None if args.processor is None else cli.parse_json_object(args.processor, "processor settings")
    return processor_config_for(args.checkpoint, override)


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI on `argv` (without the program name); returns the exit status (2 with a one-line
    message on bad inputs)."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
