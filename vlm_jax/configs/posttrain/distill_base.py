"""Settings shared by the distillation configs (`distill_offpolicy.py`, `distill_onpolicy.py`); not a config
file itself. Keys: `base.py`; the phases and metrics: `vlm_jax.posttrain.distill`.

Tiny: the zoo student (`init_from`) learns from the zoo's upcycled teacher (`distill.teacher_from`), exports of
`configs/zoo.py`. Released sizes: the recipe's last SFT stage learns from Qwen3-VL-235B-A22B (the
flagship, which the report distils its smaller models from; set `distill.teacher_from` to its params dir,
e.g. converted with `python -m vlm_jax.convert hf-to-jax`); validated here, not run.

`tasks` mixes the world's text task with verifiable visual tasks; `distill.text_only` (the default, as
Qwen3-VL sec 5.3) keeps the text task and trains the LLM backbone only; `--config.distill.text_only=False`
distils on every task, images included. Learning rates at tiny scale and the step counts are ours
(untuned); group size 4 follows the Tinker on-policy distillation recipe (POSTTRAIN notes).
"""

from __future__ import annotations

import ml_collections as mlc

from vlm_jax.configs.posttrain import base

DISTILL_TASKS = {"text": 2.0, "count": 1.0, "ground_box": 1.0, "ocr": 1.0, "chart_value": 1.0}
DISTILL_EVAL_FAMILIES = ("text", "counting", "grounding", "ocr", "chart")
RELEASED_TEACHER = "235b-a22b"


def distill_config(size: str, name: str, offpolicy_steps: int, onpolicy_steps: int) -> mlc.ConfigDict:
    """The base config with method "distill", `offpolicy_steps` then `onpolicy_steps` iterations at `size`."""
    c = base.base_config(size)
    tiny = c.size == "tiny"
    c.method = "distill"
    c.name = name + ("" if tiny else f"_{c.size}")
    c.tasks = dict(DISTILL_TASKS)
    c.eval.tasks = DISTILL_EVAL_FAMILIES
    c.log.kl_to_start = False  # an RL metric
    c.rollout.group_size = 4
    ds = c.distill
    ds.offpolicy_steps, ds.onpolicy_steps = offpolicy_steps, onpolicy_steps
    # A reference, so that --config.distill.*_steps overrides also set the run length.
    c.iterations = ds.get_ref("offpolicy_steps") + ds.get_ref("onpolicy_steps")
    if tiny:
        c.train.optimizer.update(llm_lr=1e-4, merger_lr=1e-4, vision_lr=1e-5)
    else:
        ds.teacher_size = RELEASED_TEACHER
    return c
