"""What the experiment files (`experiments/ablate_*.py`) share: arg keys, seeds, step budgets, smoke size.

Each file parses its arg with `parse(arg, **its own keys)`, which adds
    seed   (0)      the run's train seed: init and data order (the world and the held-out items stay fixed,
                    so the runs of two arms with one seed are scored on the same items and pair)
    seeds  (3)      seeds per arm that `sweep` adds
    steps  (0)      train steps (0: the file's budget); the curriculum and warm-up scale with them
    smoke  (False)  `--smoke`: one seed of two arms, SMOKE_STEPS steps, SMOKE_EVAL_ITEMS items per family
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from vlm_jax.configs import synthetic_tiny
from vlm_jax.configs.args import parse_arg

SMOKE_STEPS = 3
SMOKE_EVAL_ITEMS = 2
# The ablations' budget: the main job at 900 steps (its curriculum unchanged), ~10 min a run on 2 cores, so a
# sweep of 2-5 arms x 3 seeds fits in 1-2.5 hours. The main job itself trains 1,800 steps.
ABLATION_STEPS = 900


def parse(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """The options of an experiment arg: `defaults` plus seed, seeds, steps and smoke (see the module docstring)."""
    a = parse_arg(arg, where="experiment arg", seed=0, seeds=3, steps=0, smoke=False, **defaults)
    if a["seeds"] < 1 or a["steps"] < 0:
        raise ValueError(f"experiment arg {arg!r}: seeds must be >= 1 and steps >= 0")
    return a


def seeds(a: dict[str, Any]) -> range:
    """The seeds `sweep` adds per arm: one in a smoke run, else `seeds`."""
    return range(1 if a["smoke"] else a["seeds"])


def set_steps(c: mlc.ConfigDict, steps: int) -> None:
    """`steps` train steps, with the curriculum stages and the warm-up scaled in proportion."""
    ratio = steps / c.train.num_train_steps
    c.data.curriculum = tuple({**dict(s), "steps": max(1, round(s["steps"] * ratio))} for s in c.data.curriculum)
    o = c.train.optimizer
    o.warmup_steps = min(max(1, round(o.warmup_steps * ratio)), steps - 1)
    o.decay_steps = 0  # = num_train_steps
    c.train.num_train_steps = steps
    c.train.checkpoint.every_steps = max(1, min(c.train.checkpoint.every_steps, steps))


def smoke(c: mlc.ConfigDict) -> None:
    """A few steps and a handful of held-out items: checks that a run goes through end to end."""
    set_steps(c, SMOKE_STEPS)
    c.train.checkpoint.keep = 1
    c.eval.update(num_per_task=SMOKE_EVAL_ITEMS, num_visualizations=1)
    c.log.update(every_steps=1, vision_probe_every=0)


def finish(c: mlc.ConfigDict, a: dict[str, Any]) -> mlc.ConfigDict:
    """Applies the shared options (seed, steps, smoke) of the parsed arg `a` to the config `c`."""
    c.train.seed = a["seed"]
    c.log.progress = False  # one line per logged step: sweeps run unattended
    if a["steps"]:
        set_steps(c, a["steps"])
    if a["smoke"]:
        smoke(c)
    return c


def eval_items(a: dict[str, Any], n: int) -> int:
    """Items per family of an extra evaluation: `n`, or SMOKE_EVAL_ITEMS in a smoke run."""
    return SMOKE_EVAL_ITEMS if a["smoke"] else n


def main_job() -> mlc.ConfigDict:
    """The main job's config (`synthetic_tiny`) at the ablations' budget, ABLATION_STEPS."""
    c = synthetic_tiny.get_config()
    c.train.num_train_steps = ABLATION_STEPS
    return c


def video_config(a: dict[str, Any], stage: str, frames: int, fps: float) -> mlc.ConfigDict:
    """The video experiments' base (`ablate_mrope.py`, `ablate_video_time.py`): the main job's model on its
    scenes as `frames`-frame videos at `fps` (video_temporal and video_count), no curriculum, 900 steps,
    scored on temporal grounding and counting (400 held-out items each)."""
    c = main_job()
    c.stage = stage
    world = dict(c.data.sources.synthetic.world)
    world.update(tasks={"video_temporal": 3.0, "video_count": 1.0}, video_frames=frames, video_fps=fps)
    c.data.sources.synthetic.world = world
    c.data.curriculum = ()
    c.data.pipeline.update(max_patches=6144, max_grids=32)
    c.train.checkpoint.every_steps = 300
    c.eval.update(tasks=("temporal", "counting"), num_per_task=eval_items(a, 400))
    c.log.vision_probe_every = 0  # the probe swaps images; these samples hold videos
    return c
