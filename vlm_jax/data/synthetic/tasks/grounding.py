"""Grounding: the box or the centre point of one named object, as Qwen3-VL JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.synthetic.tasks.common import Parts, Plan, dumps, label, make_parts, norm_box, object_point, pick, ri
from vlm_jax.data.synthetic.tasks.scenes import draw_scene, plan_scene


def plan_ground(rng: np.random.Generator, w: Any) -> Plan | None:
    n = ri(rng, 1, w.max_objects)
    # The draw only when the world asks for shared colours: worlds without them keep their scenes.
    shared = w.shared_color > 0 and n > 1 and rng.random() < w.shared_color
    p = plan_scene(rng, w, n, shared_color=shared)
    if p is None:
        return None
    p["target"] = ri(rng, 0, n - 1)
    return p


BOX_Q = (
    "Locate the {t} in the image, and output its bbox coordinates in JSON format.",
    "Where is the {t}? Output its bounding box as JSON.",
    "Find the {t} and give its bbox_2d in JSON.",
    "Output the bounding box of the {t} in JSON format.",
)
POINT_Q = (
    "Point to the {t} in the image, and output its coordinates in JSON format.",
    "Where is the {t}? Answer with a point in JSON.",
    "Give the point_2d of the {t} in JSON format.",
)


def _build_ground(plan: Plan, rng: np.random.Generator, w: Any, point: bool) -> Parts:
    objs = plan["objects"]
    img, boxes, rgbs = draw_scene(objs, plan["bg"], rng, w)
    t = plan["target"]
    lab = label(objs[t])
    nb = norm_box(boxes[t], w.width, w.height)
    loc = {"point_2d": object_point(boxes[t], w)} if point else {"bbox_2d": nb}
    return make_parts(
        images=[img],
        media=["image"],
        question=pick(rng, POINT_Q if point else BOX_Q).format(t=lab),
        answer_text=dumps([{**loc, "label": lab}]),
        answer={**loc, "bbox_2d": nb, "label": lab},  # the box too: a point is scored as inside it
        meta={"pixel_box": list(boxes[t]), "rgb": list(rgbs[t]), "boxes": [list(b) for b in boxes]},
    )


def build_ground_box(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    return _build_ground(plan, rng, w, point=False)


def build_ground_point(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    return _build_ground(plan, rng, w, point=True)
