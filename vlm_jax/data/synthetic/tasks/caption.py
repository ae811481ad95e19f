"""Captions: every object of a scene, in reading order, optionally with its position."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.synthetic.tasks.common import (
    Parts,
    Plan,
    article,
    at_position,
    box_center,
    capitalize,
    join_and,
    label,
    make_parts,
    pick,
    position_name,
    ri,
)
from vlm_jax.data.synthetic.tasks.scenes import draw_scene, plan_scene, reading_order


def plan_caption(rng: np.random.Generator, w: Any) -> Plan | None:
    return plan_scene(rng, w, ri(rng, 1, w.max_objects))


CAPTION_Q = (
    "Describe the image.",
    "Describe this image briefly.",
    "What is in the image?",
    "Write a short caption for the image.",
    "What do you see?",
)


def build_caption(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    img, boxes, _ = draw_scene(objs, plan["bg"], rng, w)
    order = reading_order(boxes)
    detailed = bool(rng.random() < 0.5)
    phrases = []
    for i in order:
        p = article(label(objs[i]))
        if detailed:
            p += " " + at_position(position_name(*box_center(boxes[i]), w.width, w.height))
        phrases.append(p)
    text = capitalize(join_and(phrases)) + f" on a {plan['bg']} background."
    return make_parts(
        images=[img],
        media=["image"],
        question=pick(rng, CAPTION_Q),
        answer_text=text,
        answer={"text": text},
        meta={"boxes": [list(b) for b in boxes]},
    )
