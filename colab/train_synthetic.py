# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlm-jax/vlm_jax/blob/main/colab/train_synthetic.ipynb)
#
# # Train a tiny Qwen3-VL from scratch on the synthetic world
#
# The project's main job (`vlm_jax/configs/synthetic_tiny.py`): the `tiny` model trained from scratch for
# 900 steps on the built-in synthetic world, then scored on its whole held-out split (1,000 items a task)
# for counting, grounding and pointing, next to a constant-answer baseline and the vision-off control. On a
# 2-core CPU it takes about 10 minutes (10.4 measured on a fresh clone, see the README). From a shell:
#
#     python -m vlm_jax.train --config=vlm_jax/configs/synthetic_tiny.py --workdir=runs/colab/train_synthetic
#
# The config file explains its levers (smaller learning rates for the vision tower, centred merger
# outputs, questions before the image, a two-stage curriculum), each with the probe that found it.

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "vlm_jax @ git+https://github.com/vlm-jax/vlm_jax"],
                   check=True)

# %% tags=["parameters"]
SMOKE = False  # True: 3 steps and 2 held-out items a task (CI); the cells are the same
WORKDIR = "runs/colab/train_synthetic"  # a rerun resumes from its newest checkpoint

# %%
import concurrent.futures
import json
import os

from IPython.display import Image, clear_output, display

from vlm_jax.configs import synthetic_tiny
from vlm_jax.eval.tasks import FAMILIES
from vlm_jax.train import curves, loop

# %% [markdown]
# ## The config
#
# `get_config()` returns an `ml_collections.ConfigDict` holding every key of the run (model, train, data,
# eval, log). SMOKE shrinks the run to seconds: a few steps on short rows and two held-out items a task.
# Two keys change for a notebook: the loop trains in a background thread (below), where no SIGTERM handler
# can be installed, and the console progress bar gives way to the live plot.

# %%
config = synthetic_tiny.get_config()
config.train.checkpoint.save_on_sigterm = False
config.log.progress = False
if SMOKE:
    config.train.num_train_steps = 3
    config.train.optimizer.warmup_steps = 1
    config.data.curriculum = tuple({**dict(stage), "steps": 1} for stage in config.data.curriculum)
    config.data.pipeline.update(seq_len=128, batch_size=2, max_patches=128, max_grids=8)
    config.log.update(every_steps=1, vision_probe_every=0)
    config.eval.update(num_per_task=2, batch_size=6, max_new_tokens=8, num_visualizations=2)
print(config.description)
print(f"{config.train.num_train_steps} steps of {config.data.pipeline.batch_size} x {config.data.pipeline.seq_len} "
      f"tokens; eval on {config.eval.num_per_task or 'all'} held-out items of {', '.join(config.eval.tasks)}")

# %% [markdown]
# ## Train, with live curves
#
# `train_and_evaluate` runs the whole job: training (checkpoints every `train.checkpoint.every_steps`),
# the export to `WORKDIR/final`, the held-out evaluation and `curves.png`. It appends one JSON row per
# logged window to `WORKDIR/metrics.jsonl` (loss, per-task loss, learning rates, throughput, the vision
# probe). Here it runs in a background thread while this cell redraws the figure from that file with the
# loop's own plotting function (`curves.write_curves`), so the curves grow as it trains:
#
# * **left**, the training loss of each task (log scale). The first 500 steps are the curriculum's
#   single-object stages (box and point tasks only); the other tasks join after them.
# * **middle**, the vision probe: how much the answers' log-probability drops when the images of a fixed
#   batch are swapped between samples. It rises when the model starts to read its images; near 0 means
#   the answers come from the text alone.

# %%
live_png = os.path.join(WORKDIR, "live_curves.png")
os.makedirs(WORKDIR, exist_ok=True)


def last_step_logged() -> bool:
    return any("loss" in r and r["step"] == config.train.num_train_steps for r in curves.read_metrics(WORKDIR))


with concurrent.futures.ThreadPoolExecutor(1) as pool:
    run = pool.submit(loop.train_and_evaluate, config, WORKDIR)
    # Redraw until the last step is logged; then the loop evaluates and draws curves.png itself (pyplot is
    # not thread-safe, so the two must not draw at once).
    while not concurrent.futures.wait([run], timeout=2 if SMOKE else 20).done and not last_step_logged():
        if curves.write_curves(WORKDIR, out=live_png):
            clear_output(wait=True)
            display(Image(live_png))
summary = run.result()  # the loop printed its summary and the held-out table

# %% [markdown]
# ## Held-out scores
#
# Every item of the held-out split (SMOKE: two), scored as the harness scores it: counting by exact
# match, grounding by IoU >= 0.5 of the first box, pointing by the point falling inside the object's
# box, each with its 95% interval. Two columns tell whether a score was earned by looking:
#
# * **baseline**: one constant answer fitted on the training distribution (the majority count, the mean
#   box, the mean point), scored on the same items. A model that only learned the answer format and
#   the priors scores this much.
# * **vision-off**: the same model and questions, each image swapped for another item's of the same
#   task. A score that does not drop without the right image does not come from the image.
#
# The full run's scores (seed 0) are in the project README. A SMOKE run's model is untrained, so its
# scores are noise on two items.

# %%
with open(os.path.join(WORKDIR, "eval", "results.json")) as f:
    results = json.load(f)
for task, row in results["tasks"].items():
    metric = FAMILIES[task].metric
    print(f"{task:10s} {metric:11s} n={row['n']:<5d} model {row[metric]:.3f} "
          f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]  baseline {row['baseline']:.3f}  "
          f"vision-off {row['vision_off']:.3f}  malformed {row['malformed']}")

# %% [markdown]
# ## The run's figure
#
# `curves.png`, written by the loop after the evaluation: the training curves above, and on the right
# the held-out score of each task (blue, with its 95% interval) next to its baseline (grey) and the
# vision-off control (orange). The visual pathway works where blue stands above both.

# %%
display(Image(summary["curves"]))

# %% [markdown]
# A few predictions drawn on their images (green: the reference, red: the model), from `WORKDIR/eval`:

# %%
for name in sorted(os.listdir(os.path.join(WORKDIR, "eval")))[:4]:
    if name.endswith(".png"):
        display(Image(os.path.join(WORKDIR, "eval", name)))
