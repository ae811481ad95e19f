"""How much of the teacher-student gap does distillation close? SFT on data alone vs off-policy distillation
vs off-policy then on-policy, on one budget, three seeds, from the zoo's student and teacher.

    python -m vlm_jax.experiments.sweep --config=experiments/distill_methods.py --workdir=runs/sweeps/distill_methods
    python -m vlm_jax.experiments.sweep --config=experiments/distill_methods.py:text_only=True    # text, as the report
    python -m vlm_jax.experiments.sweep --config=experiments/distill_methods.py --smoke   # random inits

Arms (`method`), each `iterations` iterations of the tiny distillation config (`vlm_jax/configs/posttrain/`):
  sft        next-token CE on the world's reference replies (the data pipeline's batches), no teacher: the
             reference arm, what the same budget buys without distillation;
  offpolicy  forward KL to the teacher's logits on the same batches (`distill_offpolicy`);
  off_on     the first half off-policy as above, the second half on-policy: the student samples and the
             teacher's per-token log-probs give the reverse KL (`distill_onpolicy`; Qwen3-VL's order).
`text_only=True` (the report distils the LLM backbone on text) trains the text task with the vision tower
and merger frozen and scores the text family. The default is False: counting, grounding, OCR and charts
with images as well, everything trained. At tiny scale no zoo model has learned the text task (student
0.014, teacher 0.017, against a 0.365 majority baseline: `runs/zoo/*/eval`), so text alone has no gap to
close; the teacher leads on boxes (0.382 vs 0.286) and charts (0.372 vs 0.344).

Measures, on the held-out split (`eval_n` items a family, 0 = the whole split):
  heldout/<family>     the student after distillation; start/<family> before (`eval.at_start`);
  gain/<family>        heldout - start;
  teacher/<family>     the teacher on the same items (evaluated once per sweep, cached beside the runs);
  gap_closed/<family>  gain / (teacher - start): the share of the gap closed (undefined when the teacher is
                       not better than the start).

Budget (2-core CPU): ~100 iterations of 2 updates a run, with 4 held-out evaluations; 9 runs.
"""

import json
import os

import ml_collections as mlc

from vlm_jax.configs.posttrain import base, distill_offpolicy, distill_onpolicy
from vlm_jax.experiments import common

CLAIM = ("Strong-to-weak distillation (DIGEST: post-training; POSTTRAIN.md: distillation): a student distilled "
         "from the teacher, off-policy then on-policy, beats the same budget of SFT on data, and on-policy "
         "distillation closes more of the gap than off-policy alone.")
ARM = "method"
REFERENCE = "sft"
EXPECTED = {"offpolicy": +1, "off_on": +1}
METHODS = ("sft", "offpolicy", "off_on")
TEXT_FAMILIES = ("text",)
IMAGE_FAMILIES = ("text", "counting", "grounding", "ocr", "chart")
TEACHER_FILE = "teacher_eval.json"  # beside the run directories
SMOKE_ITERATIONS = 2


def _arg(arg):
    return common.parse(arg, method="off_on", iterations=100, text_only=False, eval_n=0)


def _families(a):
    return TEXT_FAMILIES if a["text_only"] else IMAGE_FAMILIES


def get_config(arg=None):
    a = _arg(arg)
    if a["method"] not in METHODS:
        raise ValueError(f"distill_methods arg {arg!r}: method must be one of {', '.join(METHODS)}")
    n = SMOKE_ITERATIONS if a["smoke"] else a["iterations"]
    if a["method"] == "off_on":
        c = distill_onpolicy.get_config()
        c.distill.update(offpolicy_steps=n // 2, onpolicy_steps=n - n // 2)
    else:
        c = distill_offpolicy.get_config()
        c.distill.update(offpolicy_steps=n, onpolicy_steps=0)
        if a["method"] == "sft":
            c.distill.offpolicy_loss = "ce"
    c.name = f"distill_methods_{a['method']}"
    c.distill.offpolicy = "logits"
    c.distill.text_only = a["text_only"]
    c.train.seed = a["seed"]
    c.train.num_train_steps = base.num_updates(c)
    c.eval.update(tasks=_families(a), num_per_task=common.eval_items(a, a["eval_n"]), every=max(1, n // 3),
                  at_start=True)
    if a["smoke"]:  # random inits of the student's and the teacher's shapes, built by `prepare_smoke`
        c.init_from, c.distill.teacher_from = _smoke_exports()
        c.rollout.update(prompts_per_iteration=2, group_size=2, max_new_tokens=8)
        c.minibatches = 1
        c.train.num_train_steps = base.num_updates(c)
    return c


def _smoke_exports() -> tuple[str, str]:
    """Random-init exports of the zoo student and teacher shapes (made once, in a temporary directory)."""
    import tempfile

    import flax.linen as nn
    import jax

    from vlm_jax.configs import experiment, zoo
    from vlm_jax.model.vlm import init_params
    from vlm_jax.params.store import save_params

    root = os.path.join(tempfile.gettempdir(), "vlm_jax_distill_methods_smoke")
    paths = tuple(os.path.join(root, m) for m in ("student", "teacher"))
    for seed, (model, path) in enumerate(zip(("student", "teacher_upcycled"), paths)):
        if not os.path.exists(os.path.join(path, "model_config.json")):
            mc = experiment.model_config(zoo.get_config(model))
            save_params(jax.device_get(nn.unbox(init_params(mc, jax.random.key(seed)))), mc, path)
    return paths


def sweep(add, arg=None):
    a = _arg(arg)
    for seed in common.seeds(a):
        for method in (("sft", "off_on") if a["smoke"] else METHODS):
            add(method=method, seed=seed)


def metrics(arg=None):
    fams = _families(_arg(arg))
    return [f"{p}/{f}" for p in ("heldout", "gain", "gap_closed") for f in fams]


def measure(arg, config, run_dir):
    """The teacher's held-out scores (cached for the sweep) and the share of the gap each run closed."""
    from vlm_jax.experiments import measure as measure_lib

    teacher = _teacher_scores(config, os.path.dirname(run_dir))
    scores = measure_lib.run_scores(run_dir)
    out = {}
    for family, value in teacher.items():
        out[f"teacher/{family}"] = value
        start, gain = scores.get(f"start/{family}"), scores.get(f"gain/{family}")
        if start is not None and gain is not None and value > start:
            out[f"gap_closed/{family}"] = gain / (value - start)
    return out


def _teacher_scores(config: mlc.ConfigDict, sweep_dir: str) -> dict[str, float]:
    path = os.path.join(sweep_dir, TEACHER_FILE)
    key = {"teacher": config.distill.teacher_from, "families": list(config.eval.tasks),
           "num_per_task": config.eval.num_per_task}
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached["key"] == key:
            return cached["scores"]
    from vlm_jax.eval import harness
    from vlm_jax.eval import tasks as tasks_lib
    from vlm_jax.inference.loading import load_model

    e = config.eval
    items = tasks_lib.load_items(list(e.tasks), split=e.split, num_per_task=e.num_per_task,
                                 world_config=base.world_config(config))
    model_config, params, tokenizer = load_model(config.distill.teacher_from)
    report = harness.evaluate(model_config, params, tokenizer, items, batch_size=e.batch_size,
                              max_new_tokens=e.max_new_tokens, processor=base.processor_config(config))
    scores = {fam: float(est.value) for fam, est in report.estimates().items()}
    with open(path, "w") as f:
        json.dump({"key": key, "scores": scores}, f, indent=1)
    return scores
