"""Two-image questions: what changed, and which image has more objects of a category."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.synthetic.tasks.common import Parts, Plan, article, capitalize, join_and, label, make_parts, pick, ri
from vlm_jax.data.synthetic.tasks.counting import category_phrase, plan_count_scene
from vlm_jax.data.synthetic.tasks.scenes import draw_scene, place_objects, plan_scene


def plan_multi_image(rng: np.random.Generator, w: Any) -> Plan | None:
    kind = pick(rng, ("more", "total", "difference"))
    if kind in ("more", "total"):
        lo = max(w.min_count, 1 if kind == "more" else w.min_count)
        k1, k2 = ri(rng, lo, w.max_count), ri(rng, lo, w.max_count)
        if kind == "more" and k1 == k2:
            return None
        s1 = plan_count_scene(rng, w, k1, ri(rng, 0, w.max_distractors))
        if s1 is None:
            return None
        s2 = plan_count_scene(rng, w, k2, ri(rng, 0, w.max_distractors), cat=s1["category"])
        if s2 is None:
            return None
        return {"kind": kind, "scenes": [s1, s2]}
    n = ri(rng, 2, max(2, w.max_objects))
    s1 = plan_scene(rng, w, n)
    if s1 is None:
        return None
    objs = s1["objects"]
    change = pick(rng, ("removed", "added", "recolored"))
    objs2 = [dict(o) for o in objs]
    info: dict = {"change": change}
    if change == "removed":
        i = ri(rng, 0, n - 1)
        info["object"] = label(objs[i])
        del objs2[i]
    elif change == "added":
        used = {(o["shape"], o["color"]) for o in objs}
        free = [(s, c) for c in w.colors for s in w.shapes if (s, c) not in used]
        pos = place_objects(rng, w, 1, occupied=[(o["x"], o["y"], o["s"]) for o in objs])
        if not free or pos is None:
            return None
        sh, c = pick(rng, free)
        objs2.append({"shape": sh, "color": c, "x": pos[0][0], "y": pos[0][1], "s": pos[0][2]})
        info["object"] = f"{c} {sh}"
    else:
        i = ri(rng, 0, n - 1)
        used = {(o["shape"], o["color"]) for o in objs}
        new = [c for c in w.colors if (objs[i]["shape"], c) not in used]
        if not new:
            return None
        c = pick(rng, new)
        info.update(object=label(objs[i]), new_color=c)
        objs2[i]["color"] = c
    return {"kind": kind, "scenes": [s1, {"bg": s1["bg"], "objects": objs2}], **info}


def build_multi_image(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    s1, s2 = plan["scenes"]
    img1, b1, _ = draw_scene(s1["objects"], s1["bg"], rng, w)
    img2, b2, _ = draw_scene(s2["objects"], s2["bg"], rng, w)
    kind = plan["kind"]
    if kind in ("more", "total"):
        k1, k2 = s1["count"], s2["count"]
        c = category_phrase(s1["category"])
        if kind == "more":
            which = "first" if k1 > k2 else "second"
            question = pick(
                rng,
                (f"Which image has more {c}, the first or the second?", f"Which image contains more {c}?"),
            )
            answer_text = f"The {which} image."
            answer = {"text": which}
            reasoning = f"The first image has {k1} {c} and the second has {k2}, so the {which} has more."
        else:
            question = pick(
                rng, (f"How many {c} are there in the two images in total?", f"Count the {c} in both images.")
            )
            answer_text = str(k1 + k2)
            answer = {"count": k1 + k2}
            reasoning = f"The first image has {k1} {c} and the second has {k2}. {k1} + {k2} = {k1 + k2}."
    else:
        question = pick(
            rng,
            (
                "What changed between the first and the second image?",
                "What is different in the second image?",
            ),
        )
        obj = plan["object"]
        if plan["change"] == "removed":
            answer_text = f"The {obj} was removed."
        elif plan["change"] == "added":
            answer_text = f"{capitalize(article(obj))} was added."
        else:
            answer_text = f"The {obj} turned {plan['new_color']}."
        answer = {"text": answer_text, "change": plan["change"], "object": obj}
        first = join_and([article(label(o)) for o in s1["objects"]])
        second = join_and([article(label(o)) for o in s2["objects"]])
        reasoning = f"The first image shows {first}. The second image shows {second}. {answer_text}"
    return make_parts(
        images=[img1, img2],
        media=["image", "image"],
        question=question,
        answer_text=answer_text,
        answer=answer,
        reasoning=reasoning,
        meta={"boxes": [[list(b) for b in b1], [list(b) for b in b2]]},
    )
