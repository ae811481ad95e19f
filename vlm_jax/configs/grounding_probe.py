"""Short grounding runs for diagnosing localisation (experiments/probe_grounding.py reads their exports).

    python -m vlm_jax.train --config=vlm_jax/configs/grounding_probe.py:objs=1,center=0 --workdir=runs/g_one

The main job's model and recipe (`synthetic_tiny.py`, without its warm-up stage) on a grounding-heavy
mix (count 1, box 3, point 1), 400 steps, scored on 300 held-out items a task, no checkpoints or vision
probe. Options, as comma-separated `key=value` after the colon:

  steps=N        train steps (default 400)          eval=N     held-out items per task (default 300)
  objs=N         at most N objects (and N counted); no distractors unless distr=M
  tasks=a+b      world tasks, weight 1 each (default count 1, ground_box 3, ground_point 1)
  pos=S          sine-cosine init of the ViT position grid at scale S (`vision.pos_embed_init`)
  mz=S           merger output init scale (0: zeros; `merger_out_init_scale`)
  hd=N           decoder head_dim (MRoPE sections in the published 24:20:20 proportion); with QK-norm the
                 attention logits are bounded by about sqrt(head_dim), so a narrow head attends less sharply
  center=0|1     visual tokens centred per frame (`merger_center`; default: the main job's, on)
  vision=LR, merger=LR, llm=LR   peak learning rates of the three groups
"""

from __future__ import annotations

import ml_collections as mlc

from vlm_jax.configs import synthetic_tiny

OPTIONS = ("steps", "eval", "objs", "distr", "tasks", "pos", "mz", "hd", "center", "vision", "merger", "llm")


def mrope_sections(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) frequency pairs for `head_dim` in the published 24:20:20 proportion (sum head_dim // 2)."""
    pairs = head_dim // 2
    h = round(pairs * 20 / 64)
    return (pairs - 2 * h, h, h)


def get_config(arg: str = "") -> mlc.ConfigDict:
    kv = dict(item.split("=", 1) for item in arg.split(",") if item)
    unknown = sorted(set(kv) - set(OPTIONS))
    if unknown:
        raise ValueError(f"grounding_probe: unknown options {unknown}; choose from {', '.join(OPTIONS)}")
    c = synthetic_tiny.get_config()
    c.stage = "grounding_probe"
    c.data.curriculum = ()  # the probe's world is the stage under study
    world = dict(c.data.sources.synthetic.world)
    world["tasks"] = {"count": 1.0, "ground_box": 3.0, "ground_point": 1.0}
    if "tasks" in kv:
        world["tasks"] = {t: 1.0 for t in kv["tasks"].split("+")}
    if "objs" in kv:
        world["max_objects"] = int(kv["objs"])
        world["max_count"] = min(world["max_count"], int(kv["objs"]))
        world["max_distractors"] = int(kv.get("distr", 0))
    c.data.sources.synthetic.world = world
    c.train.num_train_steps = int(kv.get("steps", 400))
    c.train.checkpoint.every_steps = c.train.num_train_steps  # one checkpoint, at the end
    c.eval.num_per_task = int(kv.get("eval", 300))
    c.eval.vision_off_control = False
    c.log.vision_probe_every = 0
    if "pos" in kv:
        c.model.vision.pos_embed_init = "sincos"
        c.model.vision.pos_embed_init_scale = float(kv["pos"])
    if "hd" in kv:
        c.model.text.head_dim = int(kv["hd"])
        c.model.text.mrope_section = mrope_sections(int(kv["hd"]))
    if "center" in kv:
        c.model.merger_center = bool(int(kv["center"]))
    if "mz" in kv:
        c.model.merger_out_init_scale = float(kv["mz"])
    for group in ("vision", "merger", "llm"):
        if group in kv:
            c.train.optimizer[f"{group}_lr"] = float(kv[group])
    return c
