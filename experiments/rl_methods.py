"""Does RL lift held-out scores, and does SAPO beat GRPO and GSPO? Three losses x three seeds from one export.

    python -m vlm_jax.experiments.sweep --config=experiments/rl_methods.py --workdir=runs/sweeps/rl_methods
    python -m vlm_jax.experiments.sweep --config=experiments/rl_methods.py:init=runs/synthetic_tiny/final,world=main
    python -m vlm_jax.experiments.sweep --config=experiments/rl_methods.py --smoke     # 2 runs, random init

Arms: loss=sapo (Qwen3-VL's), grpo (the reference: clipped ratio, k3 KL at beta 0.04) and gspo (sequence
ratio), each the tiny post-training config of that name (`vlm_jax/configs/posttrain/rl_<loss>.py`). Every
run starts from the same export (`init`: the zoo student by default) and trains `iterations` RL iterations
of 8 prompts x 8 samples on the counting, box and point tasks of the export's world. A seed fixes the
prompts drawn and the sampling, so the three losses see the same prompts under one seed and pair.

Measures, all on the whole held-out split of the run's world (1,000 items a task; `eval_n` to cap):
  heldout/<family>   the final score (counting exact match, grounding acc@IoU 0.5, pointing accuracy);
  start/<family>     the export's score before RL (`eval.at_start`: the same items, greedy), and
  gain/<family>      heldout - start: the lift, whose spread over seeds says whether it is real;
  rl/collapsed       1 when a run's training reward over its last tenth fell below half its first tenth's;
  rl/kl_final, rl/entropy_final, rl/reward_first, rl/reward_last: the last (first) tenth's means.
The sweep also draws each family's held-out curve against the iteration (`plots/curve_*.png`), evaluated
every `iterations / 3` iterations and at the start.

`world`: `zoo` (the default world with questions before images, as the zoo student trained) or `main`
(the main job's world and model: `init` must then be a main-job export, e.g. runs/synthetic_tiny/final).

Budget (2-core CPU): about 1 s of rollout and 1 s of update an iteration at 8 x 8 (`benchmarks/rollout.py`),
so 150 iterations are ~5 min, plus 4 held-out evaluations of 3,000 items; 9 runs ~1 h.
"""

import statistics

import ml_collections as mlc

from vlm_jax.configs import synthetic_tiny, zoo
from vlm_jax.configs.posttrain import rl_grpo, rl_gspo, rl_sapo
from vlm_jax.experiments import common
from vlm_jax.experiments import measure as measure_lib

CLAIM = ("RL with SAPO (DIGEST: reasoning RL) raises held-out scores on verifiable tasks, and SAPO's soft "
         "sigmoid gate trains more stably than the hard clips of GRPO and GSPO (POSTTRAIN.md: SAPO).")
ARM = "loss"
REFERENCE = "grpo"
EXPECTED = {"sapo": {"heldout/*": +1, "gain/*": +1, "rl/collapsed": +1}}  # +1: better (fewer collapses)
FAMILIES = ("counting", "grounding", "pointing")
TASKS = {"count": 1.0, "ground_box": 1.0, "ground_point": 1.0}
LOSSES = {"sapo": rl_sapo, "grpo": rl_grpo, "gspo": rl_gspo}
SMOKE_ITERATIONS = 2


def _arg(arg):
    return common.parse(arg, loss="sapo", init=zoo.export_dir("student"), world="zoo", iterations=150,
                        eval_n=0)


def get_config(arg=None):
    a = _arg(arg)
    if a["loss"] not in LOSSES or a["world"] not in ("zoo", "main"):
        raise ValueError(f"rl_methods arg {arg!r}: loss must be one of {', '.join(LOSSES)}, world zoo or main")
    c = LOSSES[a["loss"]].get_config()
    c.name = f"rl_methods_{a['loss']}"
    c.init_from = "" if a["smoke"] else a["init"]  # a smoke run starts from a random init
    if a["world"] == "main":
        main = synthetic_tiny.get_config()
        c.model = mlc.ConfigDict(main.model.to_dict())
        c.data.world = {k: v for k, v in main.data.sources.synthetic.world.items() if k != "tasks"}
    c.tasks = dict(TASKS)
    c.train.seed = a["seed"]
    c.iterations = SMOKE_ITERATIONS if a["smoke"] else a["iterations"]
    c.train.num_train_steps = c.iterations * c.ppo_epochs * c.minibatches
    n = common.eval_items(a, a["eval_n"])
    c.eval.update(tasks=FAMILIES, num_per_task=n, every=max(1, c.iterations // 3), at_start=True)
    if a["smoke"]:
        c.rollout.update(prompts_per_iteration=2, group_size=2)
        c.minibatches = 1
        c.train.num_train_steps = c.iterations
    return c


def sweep(add, arg=None):
    a = _arg(arg)
    for seed in common.seeds(a):
        for loss in (("grpo", "sapo") if a["smoke"] else ("grpo", "gspo", "sapo")):
            add(loss=loss, seed=seed)


def metrics(arg=None):
    return [f"{p}/{f}" for p in ("heldout", "gain") for f in FAMILIES] + ["rl/collapsed", "rl/kl_final"]


def measure(arg, config, run_dir):
    """Training stability from the run's metric log: first and last tenth of the iterations."""
    rows = [r for r in measure_lib.metric_rows(run_dir) if r.get("step", 0) >= 1 and "reward/mean" in r]
    if not rows:
        return {}
    tenth = max(1, len(rows) // 10)
    first, last = rows[:tenth], rows[-tenth:]

    def mean(rs, key):
        xs = [r[key] for r in rs if r.get(key) is not None]
        return statistics.fmean(xs) if xs else float("nan")

    reward_first, reward_last = mean(first, "reward/mean"), mean(last, "reward/mean")
    return {"rl/reward_first": reward_first, "rl/reward_last": reward_last,
            "rl/collapsed": float(reward_last < 0.5 * reward_first),
            "rl/kl_final": mean(last, "policy/kl_to_start"), "rl/entropy_final": mean(last, "policy/entropy")}
