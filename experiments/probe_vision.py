"""Diagnose the visual pathway: can the model fit a vision task at all, and does it read the pixels?

    python experiments/probe_vision.py --steps=300                     # overfit probe: count, 256 fixed images
    python experiments/probe_vision.py --tasks=count,ground_box --fixed=0   # a fresh-data run

Trains the main job's model (`vlm_jax/configs/synthetic_tiny.py`, any `--set key=value` on top)
on a small fixed set of samples (`--fixed`, default 256; 0 = fresh samples every step) and every
`--every` steps prints, on the fixed set: teacher-forced answer accuracy, the same with images
swapped between samples (vision-off control), the drop in answer log-probability when images
are swapped, and the median per-image gradient norm of the answer loss with respect to pixels
(`vlm_jax.train.vision_probe`). One JSON line per evaluation on stdout.

If the overfit probe cannot reach train accuracy near 1.0, something between the pixels and the
loss is broken; if it can, but the model trained on fresh data does not generalise, the design
(capacity, resolution, learning rate, data) is what limits it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import flags  # noqa: E402

from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import experiment as experiment_lib  # noqa: E402
from vlm_jax.configs.synthetic_tiny import get_config  # noqa: E402
from vlm_jax.configs.validate import merge, unflatten  # noqa: E402
from vlm_jax.parallel import make_mesh  # noqa: E402
from vlm_jax.train import data as data_lib  # noqa: E402
from vlm_jax.train import vision_probe  # noqa: E402
from vlm_jax.train.state import init_train_state  # noqa: E402
from vlm_jax.train.step import effective_model_config, global_batch_shapes, make_train_step, put_batch  # noqa: E402


def build_config(args) -> experiment_lib.mlc.ConfigDict:
    c = get_config()
    world = dict(c.data.sources.synthetic.world)
    world["tasks"] = {t: 1.0 for t in args.tasks.split(",")}
    c.data.sources.synthetic.world = world
    c.data.sources.synthetic.length = args.fixed or 10**7
    c.train.num_train_steps = args.steps
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare string
    merge(c, unflatten(overrides), "config")
    experiment_lib.validate(c)
    return c


FLAGS = flags.FlagValues()
flags.DEFINE_string("tasks", "count", "comma-separated world tasks to train on", flag_values=FLAGS)
flags.DEFINE_integer("fixed", 256, "train on this many fixed samples (0: fresh data)", flag_values=FLAGS)
flags.DEFINE_integer("probe_samples", 256, "fixed samples to measure on", flag_values=FLAGS)
flags.DEFINE_integer("steps", 300, "train steps", flag_values=FLAGS)
flags.DEFINE_integer("every", 25, "steps between evaluations", flag_values=FLAGS)
flags.DEFINE_multi_string("set", [], "config override key=value (JSON values)", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    """Trains and probes with the parsed flags `args` (`FLAGS`); JSON lines on stdout."""
    c = build_config(args)
    model_config = experiment_lib.model_config(c)
    train_config = experiment_lib.train_config(c)
    mc = effective_model_config(model_config, train_config)
    mesh = make_mesh(train_config.parallel)
    pipe, _, _ = data_lib.make_pipeline(c.data, seed=train_config.seed)
    it = iter(pipe)
    probe = data_lib.first_batches(c.data, args.probe_samples, train_config.seed)
    measure = vision_probe.PixelInfluence(mc, probe)
    state = init_train_state(mc, train_config, mesh)
    step_fn = None
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            out = {k: round(v, 5) for k, v in measure(state.params).items()}
            print(json.dumps({"step": step, "seconds": round(time.perf_counter() - t0, 1), **out}), flush=True)
        if step == args.steps:
            break
        batch = next(it)
        if step_fn is None:
            step_fn = make_train_step(mc, train_config, mesh, batch_shapes=global_batch_shapes(batch))
        state, metrics = step_fn(state, put_batch(batch, mesh))
        if step % args.every == 0:
            m = jax.device_get(metrics)
            print(json.dumps({"step": step + 1, "loss": round(float(m["loss"]), 4)}), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the probe on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
