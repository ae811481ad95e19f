"""Counting objects of a category: the number, the boxes, or the points of the matching objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlm_jax.data.synthetic.tasks.common import (
    Parts,
    Plan,
    at_position,
    box_center,
    choose,
    dumps,
    join_and,
    label,
    make_parts,
    norm_box,
    object_point,
    pick,
    plural,
    position_name,
    ri,
)
from vlm_jax.data.synthetic.tasks.scenes import draw_scene, make_objects, place_objects, reading_order


def category_phrase(cat: dict, count: int | None = None) -> str:
    """'red circles' / 'circles' / 'red objects' (plural unless count == 1)."""
    one = count == 1
    if cat["shape"] and cat["color"]:
        return f"{cat['color']} {cat['shape'] if one else plural(cat['shape'])}"
    if cat["shape"]:
        return cat["shape"] if one else plural(cat["shape"])
    return f"{cat['color']} {'object' if one else 'objects'}"


def matches(o: dict, cat: dict) -> bool:
    return (not cat["shape"] or o["shape"] == cat["shape"]) and (
        not cat["color"] or o["color"] == cat["color"]
    )


def plan_count_scene(
    rng: np.random.Generator, w: Any, k: int, n_distract: int, cat: dict | None = None
) -> Plan | None:
    """A scene with exactly ``k`` objects of a category (random unless given) and ``n_distract`` others."""
    if cat is None:
        kind = pick(rng, ("shape", "color", "both"))
        cat = {
            "shape": pick(rng, w.shapes) if kind != "color" else "",
            "color": pick(rng, w.colors) if kind != "shape" else "",
        }
    attrs = []
    for _ in range(k):
        attrs.append((cat["shape"] or pick(rng, w.shapes), cat["color"] or pick(rng, w.colors)))
    for _ in range(n_distract):
        for _try in range(50):
            a = (pick(rng, w.shapes), pick(rng, w.colors))
            if not matches({"shape": a[0], "color": a[1]}, cat):
                attrs.append(a)
                break
        else:
            return None
    attrs = [attrs[i] for i in choose(rng, len(attrs), len(attrs))]
    pos = place_objects(rng, w, len(attrs))
    if pos is None:
        return None
    return {"bg": pick(rng, w.backgrounds), "objects": make_objects(attrs, pos), "category": cat, "count": k}


def plan_count(rng: np.random.Generator, w: Any) -> Plan | None:
    return plan_count_scene(rng, w, ri(rng, w.min_count, w.max_count), ri(rng, 0, w.max_distractors))


COUNT_Q = (
    "How many {c} are there?",
    "How many {c} are in the image?",
    "Count the {c}.",
    "How many {c} can you see? Answer with a number.",
)
COUNT_BOX_Q = (
    "Locate every {c1} in the image and output their bbox coordinates in JSON format, then count them.",
    "Find all {c} with bounding boxes in JSON, then say how many there are.",
)
COUNT_POINT_Q = (
    "Point to every {c1} in the image, output their coordinates in JSON format, then count them.",
    "Mark each of the {c} with a point in JSON, then give the total.",
)


def _count_common(plan: Plan, rng: np.random.Generator, w: Any) -> tuple:
    objs = plan["objects"]
    img, boxes, _ = draw_scene(objs, plan["bg"], rng, w)
    targets = [i for i in reading_order(boxes) if matches(objs[i], plan["category"])]
    k = plan["count"]
    assert len(targets) == k
    c = category_phrase(plan["category"])
    where = [at_position(position_name(*box_center(boxes[i]), w.width, w.height)) for i in targets]
    if k == 0:
        reasoning = f"I look for {c}. I do not see any, so there are 0."
    else:
        seen = join_and(["one " + p for p in where])
        reasoning = f"I look for {c}. I see {seen}. That makes {k}."
    meta = {"boxes": [list(b) for b in boxes], "targets": targets}
    return objs, img, boxes, targets, k, c, reasoning, meta


def build_count(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs, img, boxes, targets, k, c, reasoning, meta = _count_common(plan, rng, w)
    return make_parts(
        images=[img],
        media=["image"],
        question=pick(rng, COUNT_Q).format(c=c),
        answer_text=str(k),
        answer={"count": k},
        reasoning=reasoning,
        meta=meta,
    )


def _total_sentence(k: int, plan: Plan) -> str:
    if k == 0:
        return f"There are no {category_phrase(plan['category'])}."
    verb = "is" if k == 1 else "are"
    return f"There {verb} {k} {category_phrase(plan['category'], k)}."


# Counting that also locates every match, per answer kind: (questions, JSON key, pixel box -> [0, 1000] value).
_LOCATED: dict[str, tuple[tuple[str, ...], str, Callable[[Any, Any], list[int]]]] = {
    "boxes": (COUNT_BOX_Q, "bbox_2d", lambda box, w: norm_box(box, w.width, w.height)),
    "points": (COUNT_POINT_Q, "point_2d", object_point),
}


def _build_count_located(plan: Plan, rng: np.random.Generator, w: Any, kind: str) -> Parts:
    """A JSON list of ``{key: location, "label": ...}`` of the matches, then a sentence with the total."""
    questions, key, locate = _LOCATED[kind]
    objs, img, boxes, targets, k, c, reasoning, meta = _count_common(plan, rng, w)
    locs = [locate(boxes[i], w) for i in targets]
    js = dumps([{key: v, "label": label(objs[i])} for v, i in zip(locs, targets, strict=True)])
    c1 = category_phrase(plan["category"], 1)
    return make_parts(
        images=[img],
        media=["image"],
        question=pick(rng, questions).format(c=c, c1=c1),
        answer_text=js + "\n" + _total_sentence(k, plan),
        answer={"count": k, kind: locs},
        reasoning=reasoning,
        meta=meta,
    )


def build_count_boxes(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    return _build_count_located(plan, rng, w, "boxes")


def build_count_points(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    return _build_count_located(plan, rng, w, "points")
