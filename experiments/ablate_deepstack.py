"""Does DeepStack help? The main job with and without it (`model.deepstack`).

    python -m vlm_jax.experiments.sweep --config=experiments/ablate_deepstack.py --workdir=runs/sweeps/ablate_deepstack
    python -m vlm_jax.experiments.sweep --config=experiments/ablate_deepstack.py --smoke     # 2 runs of 3 steps
    python -m vlm_jax.train --config=experiments/ablate_deepstack.py:deepstack=False,seed=1  # one run by hand

Arms: deepstack=True (the main job: the outputs of ViT layers 1 and 2 go through their own mergers and
are added to the hidden states of decoder layers 1 and 2 at the visual tokens) and deepstack=False
(the reference: the final merger only). Everything else is the main job (`synthetic_tiny`: the tiny
model from scratch, its curriculum, 900 steps), so the arms differ in that one switch.

Measure: the held-out score per family, on the whole eval split (1,000 items each): counting exact
match, grounding acc@IoU 0.5, pointing accuracy, next to the constant-answer baseline and the
vision-off control the main job reports (in results.json).

Budget (2-core CPU; the main job runs ~0.6 s a step at seq 512 x batch 8): a run is ~1 min compile +
900 steps x 0.6 s = 9 min + ~1.5 min evaluation (3,000 items, twice with the vision-off control)
= ~11.5 min; 2 arms x 3 seeds = 6 runs = ~70 min (<= 2 h). Without DeepStack a step is a little cheaper.
"""

from vlm_jax.experiments import common

CLAIM = ("DeepStack (DIGEST 1, DeepStack): features of three intermediate ViT layers, each through its own "
         "merger, added to the first decoder layers' hidden states at the visual tokens, raise the report's "
         "average from 74.7 to 76.0 (InfoVQA 71.9 -> 74.2, DocVQA 89.5 -> 91.1, MMMU 52.9 -> 54.1, "
         "MMStar 55.5 -> 57.7).")
ARM = "deepstack"
REFERENCE = False
EXPECTED = {True: +1}
FAMILIES = ("counting", "grounding", "pointing")


def _arg(arg):
    return common.parse(arg, deepstack=True)


def get_config(arg=None):
    a = _arg(arg)
    c = common.main_job()
    c.stage = "ablate_deepstack"
    c.model.deepstack = a["deepstack"]
    return common.finish(c, a)


def sweep(add, arg=None):
    a = _arg(arg)
    for seed in common.seeds(a):
        for deepstack in (False, True):
            add(deepstack=deepstack, seed=seed)


def metrics(arg=None):
    return [f"heldout/{f}" for f in FAMILIES]
