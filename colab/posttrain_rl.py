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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlm-jax/vlm_jax/blob/main/colab/posttrain_rl.ipynb)
#
# # RL post-training with verifiable rewards
#
# One short RL run with SAPO (Qwen3-VL's RL loss, `vlm_jax/configs/posttrain/rl_sapo.py`) on the synthetic
# world's tasks with machine-checkable answers: a count is right or wrong, a box earns its IoU with the
# reference, a point earns 1 inside the object. Each iteration samples G replies per prompt, scores them,
# keeps the groups whose rewards differ, and moves the policy toward the replies that beat their group's
# mean. From a shell:
#
#     python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_sapo.py --workdir=runs/colab/posttrain_rl
#
# (which starts from the model zoo's student, `runs/zoo/student/final`, trained by `experiments/zoo.py`).

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "vlm_jax @ git+https://github.com/vlm-jax/vlm_jax"],
                   check=True)

# %% tags=["parameters"]
SMOKE = False  # True: 2 iterations of 2 prompts x 2 replies of 8 tokens (CI); the cells are the same
WORKDIR = "runs/colab/posttrain_rl"  # a rerun resumes from its newest checkpoint
INIT_FROM = "runs/colab/train_synthetic/final"  # the train_synthetic notebook's model; "" or missing: random init

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from vlm_jax.configs import experiment, synthetic_tiny
from vlm_jax.configs.posttrain import base, rl_sapo
from vlm_jax.data.synthetic import SyntheticWorld
from vlm_jax.eval import harness, tasks, visualize
from vlm_jax.inference.loading import load_model
from vlm_jax.inference.sampling import SamplingConfig
from vlm_jax.posttrain import rl, rollout
from vlm_jax.train import curves

# %% [markdown]
# ## The config
#
# The tiny RL config with three changes: the policy starts from `INIT_FROM` (the main job's model, when the
# `train_synthetic` notebook has run in this runtime), the prompts come from the world that model trained
# on (`synthetic_tiny`: three shapes, three colours, up to three objects) and the tasks are its verifiable
# ones.
#
# **From a random init the curve stays at 0**: an untrained model never writes a right count or a box, so
# every group's rewards are equal (all 0), no group carries a signal and no update runs. RL sharpens what a
# model can already sometimes do; it does not teach it from nothing.

# %%
config = rl_sapo.get_config()
config.init_from = INIT_FROM if INIT_FROM and os.path.exists(INIT_FROM) else ""
config.data.world = experiment.eval_world_config(synthetic_tiny.get_config())
config.tasks = {"count": 1.0, "ground_box": 1.0, "ground_point": 1.0}
config.eval.tasks = ("counting", "grounding", "pointing")
config.iterations = 20
if SMOKE:
    config.iterations = 2
    config.rollout.update(prompts_per_iteration=2, group_size=2, max_new_tokens=8, seq_len=64, max_patches=128,
                          max_grids=4)
    config.filters.max_rounds = 1
    config.eval.update(tasks=("grounding",), num_per_task=1, batch_size=2, max_new_tokens=8)
print("start:", config.init_from or "random init")
print(f"{config.iterations} iterations of {config.rollout.prompts_per_iteration} prompts x "
      f"{config.rollout.group_size} replies, {config.minibatches} updates each; loss {config.loss.name}")

# %% [markdown]
# ## Run
#
# `rl.run` is what the command line runs: rollouts, rewards, group filtering, updates, a held-out
# evaluation after the last iteration, checkpoints and the export to `WORKDIR/final`. It prints one line
# per iteration and appends the iteration's metrics to `WORKDIR/metrics.jsonl`.

# %%
summary = rl.run(config, WORKDIR)
{k: summary[k] for k in ("iterations", "updates", "first_reward", "final_reward", "seconds") if k in summary}

# %% [markdown]
# ## The reward curve
#
# Per iteration: the mean reward of every sampled reply (and per task), and the pass rate (the share of
# replies at or above `filters.correct_threshold`). The dots are the held-out evaluation's mean reward
# (greedy replies on held-out items). `groups/kept` counts the prompts whose replies carried a signal.

# %%
rows = [r for r in curves.read_metrics(WORKDIR) if "reward/mean" in r]
steps = [r["step"] for r in rows]
fig, (ax, kept) = plt.subplots(1, 2, figsize=(11, 3.8))
ax.plot(steps, [r["reward/mean"] for r in rows], color="black", lw=2, marker="o", label="reward (all)")
for task in sorted(config.tasks):
    ax.plot(steps, [r.get(f"reward/{task}", np.nan) for r in rows], lw=1, label=task)
ax.plot(steps, [r["pass_rate/mean"] for r in rows], color="gray", ls="--", label="pass rate")
held_out = [(r["step"], r["eval/reward_mean"]) for r in curves.read_metrics(WORKDIR) if "eval/reward_mean" in r]
if held_out:
    ax.plot(*zip(*held_out), "s", color="tab:red", label="held-out reward")
ax.set(xlabel="iteration", ylabel="reward", ylim=(-0.05, 1.05), title="rewards of the sampled replies")
ax.legend(fontsize=7)
kept.bar(steps, [r["groups/kept"] for r in rows])
kept.set(xlabel="iteration", ylim=(0, config.rollout.prompts_per_iteration),
         title=f"groups kept (of {config.rollout.prompts_per_iteration})")
fig.tight_layout()
fig.savefig(os.path.join(WORKDIR, "reward_curve.png"), dpi=100)
plt.close(fig)  # vlm_jax draws with the file-only Agg backend: show the file
display(Image(os.path.join(WORKDIR, "reward_curve.png")))

# %% [markdown]
# ## One rollout, drawn
#
# The trained policy (`WORKDIR/final`) answers one held-out grounding question G times at the rollout
# temperature, as in training: `rollout.rollout` repeats the prompt G times and samples. Each reply gets
# its task reward (the box IoU); the best one is drawn, the reference box in green and the reply's box in
# red. A reply with no box in it draws the reference alone.

# %%
model_config, params, tokenizer = load_model(WORKDIR)
world = SyntheticWorld(base.world_config(config))
item = tasks.item_from_sample(world.sample(0, "eval", task="ground_box"))
prompt = rl.make_prompt(item, tokenizer, base.processor_config(config))
stop = (tokenizer.im_end_id, tokenizer.pad_id)
group = rollout.rollout(model_config, params, [prompt], group_size=config.rollout.group_size,
                        max_new_tokens=config.rollout.max_new_tokens,
                        sampling=SamplingConfig(temperature=config.rollout.temperature), stop_tokens=stop,
                        pad_token_id=tokenizer.pad_id, rng=0)
replies = [harness.decode_reply(tokenizer, c, stop) for c in group.completions]
rewards = [rl.task_reward(item.to_sample(), reply) for reply in replies]
print(*(c["text"] for c in item.messages[0]["content"] if c["type"] == "text"), "| reference:", item.reference)
for reward, reply in zip(rewards, replies):
    print(f"reward {reward:.2f}  {reply!r}")
best = int(np.argmax(rewards))
picture = visualize.render(item, harness.score_items([item], [replies[best]]).results[0])
picture.save(os.path.join(WORKDIR, "rollout.png"))
display(picture)
