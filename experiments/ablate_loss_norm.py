"""Token vs sample vs square-root loss normalisation, on text-only and vision-language held-out scores.

    python -m vlm_jax.experiments.sweep --config=experiments/ablate_loss_norm.py --workdir=runs/sweeps/ablate_loss_norm
    python -m vlm_jax.experiments.sweep --config=experiments/ablate_loss_norm.py --smoke     # 2 runs of 3 steps

Arms (`data.pipeline.loss_normalization`; `vlm_jax/data/packing.py`): "sqrt" (the reference, Qwen3-VL
and the main job: sample i's tokens weigh 1 / sqrt(n_i), so the sample weighs sqrt(n_i)), "token" (every
supervised token weighs the same: long answers dominate) and "sample" (every sample weighs the same:
short answers dominate).

Model and world: the main job (`synthetic_tiny`: tiny model from scratch, its curriculum scaled to 800
steps) with text-only
samples added to its world (`text`: arithmetic, comparisons, sorting, reversal, JSON; weight 1.5 of 10),
so a batch mixes text-only and VL samples whose supervised lengths differ: counting answers are 1-2
tokens, points ~12, box JSON ~34, text 1-30.

Measure: held-out text accuracy (text-only) and counting, grounding, pointing (VL), 500 items per family
with the vision-off control.

Budget (2-core CPU; the main job runs ~0.6 s a step at seq 512 x batch 8, 22.5 GFLOP by the train
loop's count): the text samples make a step 24.0 GFLOP, ~0.64 s by the FLOP ratio. A run is ~1 min
compile + 800 steps x 0.64 s = 8.5 min + ~1.5 min evaluation (2,000 items, twice) = ~11 min; 3 arms x 3
seeds = 9 runs = ~99 min (<= 2 h).
"""

from vlm_jax.experiments import common

CLAIM = ("Square-root reweighting (DIGEST 3, Pre-training): the loss is normalised per sample by the square root "
         "of its token count instead of per token (or per sample), to balance long text-only samples against "
         "short multimodal ones.")
ARM = "loss_normalization"
REFERENCE = "sqrt"
# Per token, the shortest answers (counts) lose weight; per sample, the longest (box JSON) do.
EXPECTED = {"token": {"heldout/counting": -1}, "sample": {"heldout/grounding": -1}}
ARMS = ("sqrt", "token", "sample")
FAMILIES = ("text", "counting", "grounding", "pointing")


def _arg(arg):
    a = common.parse(arg, loss_normalization="sqrt")
    if a["loss_normalization"] not in ARMS:
        raise ValueError(f"experiment arg loss_normalization={a['loss_normalization']!r}: expected one of "
                         f"{', '.join(ARMS)}")
    return a


def get_config(arg=None):
    a = _arg(arg)
    c = common.main_job()
    c.stage = "ablate_loss_norm"
    c.data.pipeline.loss_normalization = a["loss_normalization"]
    world = dict(c.data.sources.synthetic.world)
    world["tasks"] = {**world["tasks"], "text": 1.5}
    c.data.sources.synthetic.world = world
    common.set_steps(c, 800)  # the main job's curriculum and warm-up, scaled to 800 of 900 steps
    c.eval.update(tasks=FAMILIES, num_per_task=common.eval_items(a, 500))
    return common.finish(c, a)


def sweep(add, arg=None):
    a = _arg(arg)
    arms = ARMS[:2] if a["smoke"] else ARMS
    for seed in common.seeds(a):
        for norm in arms:
            add(loss_normalization=norm, seed=seed)


def metrics(arg=None):
    return [f"heldout/{f}" for f in FAMILIES]
