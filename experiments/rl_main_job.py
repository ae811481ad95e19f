"""SAPO from a main-job export on the main job's own world (counting, box and point grounding).

    python experiments/rl_main_job.py --init=runs/synthetic_tiny/final --workdir=runs/rl_main_job \
        [--iterations=150] [--eval_n=1000] [--eval_every=50]

A first end-to-end use of the RL loop on a model that already earns reward; the zoo student is the
issue's intended start. The held-out scores are printed every `eval_every` iterations; compare them with
the main job's own scores of the same export (same split, same items).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_collections as mlc  # noqa: E402
from absl import flags  # noqa: E402

from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import synthetic_tiny  # noqa: E402
from vlm_jax.configs.posttrain import rl_sapo  # noqa: E402
from vlm_jax.posttrain import rl  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("init", None, "the main job's export (`<workdir>/final`)", flag_values=FLAGS)
flags.DEFINE_string("workdir", "runs/rl_main_job", "where the RL run writes", flag_values=FLAGS)
flags.DEFINE_integer("iterations", 150, "RL iterations", flag_values=FLAGS)
flags.DEFINE_integer("eval_n", 1000, "held-out items per task (1000: the whole split)", flag_values=FLAGS)
flags.DEFINE_integer("eval_every", 50, "iterations between held-out evaluations", flag_values=FLAGS)


def config(args: flags.FlagValues) -> mlc.ConfigDict:
    """rl_sapo at tiny scale with the main job's model and world instead of the zoo student's."""
    c = rl_sapo.get_config("")
    main = synthetic_tiny.get_config()
    c.init_from = args.init
    c.model = mlc.ConfigDict(main.model.to_dict())
    c.data.world = {k: v for k, v in dict(main.data.sources.synthetic.world).items() if k != "tasks"}
    c.tasks = {"count": 1.0, "ground_box": 1.0, "ground_point": 1.0}
    c.iterations = args.iterations
    c.eval.update(tasks=("counting", "grounding", "pointing"), num_per_task=args.eval_n, every=args.eval_every)
    return c


def run(args: flags.FlagValues) -> None:
    if not args.init:
        raise ValueError("--init is required (a main-job export, e.g. runs/synthetic_tiny/final)")
    summary = rl.run(config(args), args.workdir)
    print(json.dumps(summary, default=str, indent=1), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the experiment on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
