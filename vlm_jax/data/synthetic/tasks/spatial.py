"""Spatial relations between two objects: left of / right of / above / below."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.synthetic.tasks.common import (
    Parts,
    Plan,
    at_position,
    box_center,
    label,
    make_parts,
    pick,
    position_name,
    ri,
)
from vlm_jax.data.synthetic.tasks.scenes import draw_scene, plan_scene

RELATIONS = ("left of", "right of", "above", "below")


def relation(o: dict, a: dict, rel: str) -> bool | None:
    """True if ``o`` lies entirely in direction ``rel`` of ``a``; False if its centre is on the other
    side of ``a``'s centre (or level with it); None when ambiguous (overlapping range)."""
    ox1, oy1, os_ = o["x"], o["y"], o["s"]
    ax1, ay1, as_ = a["x"], a["y"], a["s"]
    ocx, ocy, acx, acy = ox1 + os_ / 2, oy1 + os_ / 2, ax1 + as_ / 2, ay1 + as_ / 2
    if rel == "left of":
        strict, other = ox1 + os_ <= ax1, ocx >= acx
    elif rel == "right of":
        strict, other = ox1 >= ax1 + as_, ocx <= acx
    elif rel == "above":
        strict, other = oy1 + os_ <= ay1, ocy >= acy
    else:
        strict, other = oy1 >= ay1 + as_, ocy <= acy
    return True if strict else (False if other else None)


def plan_spatial(rng: np.random.Generator, w: Any) -> Plan | None:
    n = ri(rng, 2, max(2, w.max_objects))
    p = plan_scene(rng, w, n)
    if p is None:
        return None
    objs = p["objects"]
    kind = pick(rng, ("what", "what", "yesno"))
    cands = []
    for ai in range(n):
        for rel in RELATIONS:
            rs = [relation(objs[j], objs[ai], rel) if j != ai else False for j in range(n)]
            if kind == "what":
                if rs.count(True) == 1 and None not in rs:
                    cands.append({"anchor": ai, "rel": rel, "target": rs.index(True)})
            else:
                for j in range(n):
                    if j != ai and rs[j] is not None:
                        cands.append({"anchor": ai, "rel": rel, "target": j, "truth": rs[j]})
    if not cands:
        return None
    if kind == "yesno":  # balance yes / no
        want = bool(rng.random() < 0.5)
        same = [c for c in cands if c["truth"] == want]
        cands = same or cands
    p.update(pick(rng, cands), kind=kind)
    return p


def build_spatial(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    img, boxes, _ = draw_scene(objs, plan["bg"], rng, w)
    a, t, rel = objs[plan["anchor"]], objs[plan["target"]], plan["rel"]
    la, lt = label(a), label(t)
    pa = position_name(*box_center(boxes[plan["anchor"]]), w.width, w.height)
    pt = position_name(*box_center(boxes[plan["target"]]), w.width, w.height)
    if plan["kind"] == "what":
        question = pick(rng, (f"What is {rel} the {la}?", f"Which object is {rel} the {la}?"))
        answer_text = f"The {lt}."
        answer = {"text": lt}
        reasoning = f"The {la} is {at_position(pa)}. The {lt} is {at_position(pt)}, so it is {rel} the {la}."
    else:
        question = f"Is the {lt} {rel} the {la}?"
        yes = plan["truth"]
        answer_text = "Yes" if yes else "No"
        answer = {"text": answer_text.lower()}
        reasoning = (
            f"The {la} is {at_position(pa)} and the {lt} is {at_position(pt)}, "
            f"so the {lt} is {'' if yes else 'not '}{rel} the {la}."
        )
    return make_parts(
        images=[img],
        media=["image"],
        question=question,
        answer_text=answer_text,
        answer=answer,
        reasoning=reasoning,
        meta={"boxes": [list(b) for b in boxes]},
    )
